"""Vector deduplication on the device (CUDA twin of cpu/dedup.py), numbering like the CPU.

The CPU numbers unique rows in first-occurrence order. A concurrent hash table (atomic
compare-and-swap) would number them in whatever order threads win, so here the table only
finds, for every row, the *first* row with the same code vector: rows of one content all
stop at the same slot (the first slot of their probe sequence that is empty or holds that
content; slots never empty again), and ``atomic.min`` leaves the smallest row index there.
Then ``is_new[r] = first[r] == r``, an exclusive prefix sum numbers the new rows in order,
and each repeated row refers to its first row's number: exactly the CPU's references, so
frames stay byte-identical. Rows holding an outlier never match (as on the CPU).
"""

from __future__ import annotations

from numba import cuda, int64, uint8, uint32, uint64

from ._launch import kernel

__all__ = ["row_hashes", "insert_rows", "first_rows", "assign_refs", "gather_rows", "zero_flags",
           "resolve_refs", "expand_rows"]

_MULTIPLIER = uint64(0x9E3779B1)
_LOW32 = uint64(0xFFFFFFFF)


@kernel
def row_hashes(codes, mask, cols, seed, hashes, has_outlier, table):
    """A 32-bit hash of each row of the flat ``codes`` (rows x cols), keyed by the 32-bit
    ``seed``, and its outlier flag; fills the hash ``table`` with -1 (empty) for insert_rows
    (here rather than in a launch of its own: a launch costs more than this kernel's work).

    (Any hash works: equal rows are confirmed by comparing codes; the key keeps crafted rows
    from piling into a few slots, see stages.dedup.HASH_SEED. Products stay below 2**64, so
    the simulator's numpy scalars never overflow.)
    """
    rows = hashes.shape[0]
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
        h = seed ^ uint64(cols)
        flag = uint8(0)
        for c in range(cols):
            h = ((h ^ uint64(codes[r * cols + c])) * _MULTIPLIER) & _LOW32
            h ^= h >> uint64(15)
            flag |= mask[r * cols + c]
        h = ((h ^ seed) * _MULTIPLIER) & _LOW32
        h ^= h >> uint64(15)
        hashes[r] = h
        has_outlier[r] = flag
    for i in range(cuda.grid(1), table.shape[0], cuda.gridsize(1)):
        table[i] = -1


@kernel
def insert_rows(codes, cols, hashes, has_outlier, table, slot_of):
    """Claim or join the slot of each row's content; ``table`` (power-of-two size >= 2 rows,
    filled with -1) ends holding the smallest row index of each content."""
    rows = hashes.shape[0]
    mask = int64(table.shape[0] - 1)
    for r in range(cuda.grid(1), rows, cuda.gridsize(1)):
        if has_outlier[r]:
            slot_of[r] = -1
            continue
        slot = int64(hashes[r]) & mask
        while True:
            other = table[slot]
            if other < 0:
                other = cuda.atomic.cas(table, slot, int64(-1), int64(r))
                if other < 0:
                    slot_of[r] = slot
                    break
            same = hashes[other] == hashes[r]
            if same:
                for c in range(cols):
                    if codes[other * cols + c] != codes[r * cols + c]:
                        same = False
                        break
            if same:
                cuda.atomic.min(table, slot, int64(r))
                slot_of[r] = slot
                break
            slot = (slot + 1) & mask


@kernel
def first_rows(table, slot_of, is_new, first):
    """``first[r]``: the first row with row r's content (r itself for outlier rows)."""
    for r in range(cuda.grid(1), slot_of.shape[0], cuda.gridsize(1)):
        slot = slot_of[r]
        f = table[slot] if slot >= 0 else int64(r)
        first[r] = f
        is_new[r] = 1 if f == r else 0


@kernel
def assign_refs(first, numbers, refs, unique_rows):
    """References as the CPU writes them; ``numbers`` is the exclusive prefix sum of is_new."""
    for r in range(cuda.grid(1), first.shape[0], cuda.gridsize(1)):
        f = first[r]
        if f == r:
            refs[r] = 0
            unique_rows[numbers[r]] = r
        else:
            refs[r] = uint32(numbers[f] + 1)


@kernel
def gather_rows(src, cols, rows, dst):
    """``dst[k, :] = src[rows[k], :]`` on flat arrays of ``cols``-wide rows."""
    total = rows.shape[0] * cols
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        k = i // cols
        dst[i] = src[rows[k] * cols + i % cols]


@kernel
def zero_flags(refs, flags):
    """``flags[r] = refs[r] == 0`` (a new unique row)."""
    for r in range(cuda.grid(1), refs.shape[0], cuda.gridsize(1)):
        flags[r] = 1 if refs[r] == 0 else 0


@kernel
def resolve_refs(refs, numbers, unique_count, row_ids, rows_left):
    """Row -> unique-row ids; ``rows_left[0]`` (starting at 0) = rows - the first row that
    breaks the rules (an atomic max: a zeroed counter slot needs no initial value).

    ``numbers`` is the exclusive prefix sum of the new-row flags: the count of new rows
    before each row, what the CPU's sequential ``next_new`` counter holds there.
    """
    for r in range(cuda.grid(1), refs.shape[0], cuda.gridsize(1)):
        ref = int64(refs[r])
        seen = numbers[r]
        if ref == 0:
            bad = seen >= unique_count
            row_ids[r] = seen
        else:
            bad = ref > seen  # may only point back at a unique row already seen
            row_ids[r] = ref - 1
        if bad:
            cuda.atomic.max(rows_left, 0, int64(refs.shape[0]) - r)


@kernel
def expand_rows(unique_values, cols, row_ids, out):
    """``out[r, :] = unique_values[row_ids[r], :]`` on flat arrays; ids were validated."""
    total = row_ids.shape[0] * cols
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        out[i] = unique_values[row_ids[i // cols] * cols + i % cols]
