"""Vector deduplication: a global hash table over the quantized rows.

Rows whose code vectors are identical decode to identical values, so each unique row is
stored once and every row gets a reference: 0 means "a new unique row, the next one in
order", ``k > 0`` means "the same as unique row ``k - 1``". Rows that contain an outlier are
never matched (their verbatim values may differ) and always count as new.
"""

from __future__ import annotations

import numpy as np

from .._jit import kernel, parallel_kernel, prange

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


@parallel_kernel
def row_hashes(codes, outlier_mask, seed, hashes, row_has_outlier):
    """64-bit hash of each row of ``codes`` (rows x cols, uint32), keyed by ``seed``, and its
    outlier flag."""
    # Four independent multiply chains, each taking two codes per multiply (one 64-bit word):
    # one chain of one code per step is latency-bound (~6 cycles a value); pairs halved the
    # time again (0.46 -> 0.26 ms for 13312 x 50 codes). The hash only places rows in the
    # table (equality is checked on the codes), so frames do not depend on it; the CUDA
    # backend uses its own. The key (stages.dedup.HASH_SEED, random per process) is why
    # crafted rows cannot pile into one run of slots: unkeyed, rows chosen to share a few
    # slots made the linear probing quadratic (a 1 MiB array took 46 s to compress).
    rows, cols = codes.shape
    body = cols - cols % 8  # columns taken as 4 chains x 2 codes
    for r in prange(rows):
        h0 = seed ^ np.uint64(cols)
        h1 = seed ^ np.uint64(1)
        h2 = seed ^ np.uint64(2)
        h3 = seed ^ np.uint64(3)
        for c in range(0, body, 8):
            h0 = (h0 ^ (np.uint64(codes[r, c]) | (np.uint64(codes[r, c + 1]) << np.uint64(32)))) * _MULTIPLIER
            h1 = (h1 ^ (np.uint64(codes[r, c + 2]) | (np.uint64(codes[r, c + 3]) << np.uint64(32)))) * _MULTIPLIER
            h2 = (h2 ^ (np.uint64(codes[r, c + 4]) | (np.uint64(codes[r, c + 5]) << np.uint64(32)))) * _MULTIPLIER
            h3 = (h3 ^ (np.uint64(codes[r, c + 6]) | (np.uint64(codes[r, c + 7]) << np.uint64(32)))) * _MULTIPLIER
            h0 ^= h0 >> np.uint64(29)
            h1 ^= h1 >> np.uint64(29)
            h2 ^= h2 >> np.uint64(29)
            h3 ^= h3 >> np.uint64(29)
        for c in range(body, cols):
            h0 = (h0 ^ np.uint64(codes[r, c])) * _MULTIPLIER
            h0 ^= h0 >> np.uint64(29)
        h = h0
        for part in (h1, h2, h3, seed):  # the key again last: no slot is a fixed function of the codes
            h = (h ^ part) * _MULTIPLIER
            h ^= h >> np.uint64(29)
        flag = np.uint8(0)
        for c in range(cols):
            flag |= outlier_mask[r, c]
        hashes[r] = h
        row_has_outlier[r] = flag


@kernel
def assign_unique(codes, hashes, row_has_outlier, table, refs, unique_rows):
    """Fill ``refs`` and ``unique_rows`` (source row of each unique row); return the count.

    ``table`` is an int64 array of power-of-two size >= 2 * rows, filled with -1.
    """
    rows, cols = codes.shape
    mask = np.uint64(table.size - 1)
    unique = 0
    for r in range(rows):
        if row_has_outlier[r]:
            refs[r] = 0
            unique_rows[unique] = r
            unique += 1
            continue
        slot = hashes[r] & mask
        while True:
            u = table[slot]
            if u < 0:  # empty slot: a new unique row
                table[slot] = unique
                refs[r] = 0
                unique_rows[unique] = r
                unique += 1
                break
            other = unique_rows[u]
            if hashes[other] == hashes[r]:
                same = True
                for c in range(cols):
                    if codes[other, c] != codes[r, c]:
                        same = False
                        break
                if same:
                    refs[r] = np.uint32(u + 1)
                    break
            slot = (slot + np.uint64(1)) & mask
    return unique


@kernel
def resolve_refs(refs, unique_count, row_ids):
    """Turn references into unique-row ids; return -1 on success or the first bad row."""
    next_new = 0
    for r in range(refs.size):
        ref = np.int64(refs[r])
        if ref == 0:
            if next_new >= unique_count:
                return r
            row_ids[r] = next_new
            next_new += 1
        else:
            if ref > next_new:  # may only point back at a unique row already seen
                return r
            row_ids[r] = ref - 1
    if next_new != unique_count:
        return refs.size
    return -1


@parallel_kernel
def expand_rows(unique_values, row_ids, out):
    """``out[r] = unique_values[row_ids[r]]`` for 2-D arrays; ids were validated."""
    rows, cols = out.shape
    for r in prange(rows):
        src = row_ids[r]
        for c in range(cols):
            out[r, c] = unique_values[src, c]
