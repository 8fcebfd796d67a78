"""Pooled lookups over packed rowwise tables (``embedding_bag_*_rowwise_offsets``, sum mode).

FBGEMM's generated kernels accumulate each bag row by row as ``out = fma(s, code, out + b)``
with ``s = scale * w`` and ``b = bias * w`` (``w`` = per-sample weight, 1 when absent); the
same order and roundings are used here, so results are bit-identical.
"""

from __future__ import annotations

import math

import numpy as np

from embzip._jit import kernel, parallel_kernel, prange
from embzip.lowprec._simd import bag8_rows, bag_block
from embzip.lowprec._validate import check_bits, count, flag, float_array, int_vector, uint8_matrix
from embzip.lowprec.rowwise import packed_dim

__all__ = ["embedding_bag_rowwise", "bag_bounds"]


@kernel
def _index_umax(idx):
    # the largest index read as unsigned: a negative one wraps above every row count, so one
    # unsigned max (a single vectorized pass) checks both bounds at once
    hi = np.uint64(0)
    for i in range(idx.size):
        hi = max(hi, np.uint64(idx[i]))
    return hi


def _index_error(idx, rows: int) -> ValueError:
    bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
    return ValueError(f"indices must be in [0, {rows}) for a table of {rows} rows, found {bad}")


@kernel
def _first_decrease(offs):
    # first i with offs[i] > offs[i + 1], or -1 (one pass; np.diff would allocate)
    for i in range(offs.size - 1):
        if offs[i + 1] < offs[i]:
            return i
    return -1


def _make_bag(bits):
    # Columns go in vector blocks (IR in _simd.py: accumulators stay in registers over the bag's
    # rows): full 128-wide blocks, then the rest in one block of 64/32/16/8 -- masked when the
    # rest is not exactly that wide. Every element gets the same out = fma(s, code, out + b)
    # sequence over the bag's rows in index order, whatever the block.
    full = {w: (bag_block(bits, w, False), bag_block(bits, w, True)) for w in (128, 64, 32, 16, 8)}
    part = {w: (bag_block(bits, w, False, True), bag_block(bits, w, True, True))
            for w in (128, 64, 32, 16, 8)}
    f128, f128w = full[128]
    f64, f64w = full[64]
    f32, f32w = full[32]
    f16, f16w = full[16]
    f8, f8w = full[8]
    m128, m128w = part[128]
    m64, m64w = part[64]
    m32, m32w = part[32]
    m16, m16w = part[16]
    m8, m8w = part[8]

    @parallel_kernel
    def bag(packed, indices, starts, ends, weights, has_w, out):
        # returns the largest index read as unsigned (rows are read clamped: see _simd)
        nb, d = out.shape
        meta = d if bits == 8 else packed.shape[1] - 4
        hi = np.uint64(0)
        for b in prange(nb):
            t0 = starts[b]
            t1 = ends[b]
            h = np.uint64(0)
            j0 = 0
            while j0 + 128 <= d:
                if has_w:
                    h = f128w(packed, indices, weights, out, b, t0, t1, j0, meta, j0 == 0, 128)
                else:
                    h = f128(packed, indices, weights, out, b, t0, t1, j0, meta, j0 == 0, 128)
                j0 += 128
            rem = d - j0
            pf = j0 == 0
            a = (packed, indices, weights, out, b, t0, t1, j0, meta, pf, rem)
            if rem == 0:
                pass
            elif rem == 64:
                h = f64w(*a) if has_w else f64(*a)
            elif rem == 32:
                h = f32w(*a) if has_w else f32(*a)
            elif rem == 16:
                h = f16w(*a) if has_w else f16(*a)
            elif rem == 8:
                h = f8w(*a) if has_w else f8(*a)
            elif rem > 64:
                h = m128w(*a) if has_w else m128(*a)
            elif rem > 32:
                h = m64w(*a) if has_w else m64(*a)
            elif rem > 16:
                h = m32w(*a) if has_w else m32(*a)
            elif rem > 8:
                h = m16w(*a) if has_w else m16(*a)
            else:
                h = m8w(*a) if has_w else m8(*a)
            # every block reads all of the bag's indices, so the last one's maximum is the bag's
            hi = max(hi, h)
        return hi

    return bag


_BAG = {b: _make_bag(b) for b in (8, 4, 2)}

#: 8-bit tables up to this dimension get a kernel compiled for their dimension (below).
MAX_SPECIALIZED_DIM = 1024
_BAG8 = {}


def _bag8_for(dim):
    """The 8-bit bag kernel specialized for ``dim`` (compiled on first use, then cached).

    FBGEMM JIT-compiles one lookup kernel per embedding dimension; this is the same idea: with
    the dimension a constant, the row stride, the column blocks (no masks, no dispatch) and the
    lines to prefetch are fixed, and a row costs little more than its vector arithmetic (see
    ``_simd.bag8_rows``). Results are identical to the generic kernel's.
    """
    k = _BAG8.get(dim)
    if k is not None:
        return k
    rows, rows_w = bag8_rows(dim, False), bag8_rows(dim, True)

    @parallel_kernel
    def bag8(packed, indices, starts, ends, weights, has_w, pf_last, out):
        # returns the largest index read as unsigned (rows are read clamped: see _simd)
        hi = np.uint64(0)
        for b in prange(out.shape[0]):
            if has_w:
                h = rows_w(packed, indices, weights, out, b, starts[b], ends[b], pf_last)
            else:
                h = rows(packed, indices, weights, out, b, starts[b], ends[b], pf_last)
            hi = max(hi, h)
        return hi

    _BAG8[dim] = bag8
    return bag8


def _ends_past_prefetch(packed) -> bool:
    """Whether a row of ``packed`` can end in a cache line that prefetching every 64 bytes from
    its start misses: rows start at ``base + i * row_bytes``, so their offsets within a line are
    ``base % 64`` plus multiples of ``gcd(row_bytes, 64)``."""
    row_bytes = packed.shape[1]
    g = math.gcd(row_bytes, 64)
    latest_start = 64 - g + packed.ctypes.data % g
    return latest_start + row_bytes - 1 >= 64 * -(-row_bytes // 64)


def bag_bounds(offsets, n_indices: int, include_last_offset: bool = False):
    """Start and end positions of every bag, with torch's offsets semantics checked.

    Without ``include_last_offset`` bag ``i`` is ``indices[offsets[i]:offsets[i+1]]`` and the
    last bag runs to the end; with it, ``offsets`` has one more entry than there are bags and
    must end at ``n_indices``. Offsets must start at 0 and be non-decreasing: torch's 8-bit op
    and its 4/2-bit ops read other offsets differently (the latter as bag lengths), so no
    answer would match both.

    Examples
    --------
    >>> bag_bounds([0, 2, 2], 5)
    (array([0, 2, 2]), array([2, 2, 5]))
    """
    offs = int_vector(offsets, "offsets")
    n_indices = count(n_indices, "n_indices")
    if offs.size:
        if offs[0] != 0:
            raise ValueError(f"offsets must start at 0, found offsets[0]={int(offs[0])}")
        i = _first_decrease(offs)
        if i >= 0:
            raise ValueError(
                "offsets must be non-decreasing, found "
                f"offsets[{i}]={int(offs[i])} > offsets[{i + 1}]={int(offs[i + 1])}"
            )
        if offs[-1] > n_indices:
            raise ValueError(
                f"offsets must not exceed len(indices)={n_indices}, found {int(offs[-1])}"
            )
    if include_last_offset:
        if offs.size == 0:
            raise ValueError("include_last_offset=True needs at least one offset, found none")
        if offs[-1] != n_indices:
            raise ValueError(
                "with include_last_offset=True the last offset must equal "
                f"len(indices)={n_indices}, found {int(offs[-1])}"
            )
        return offs[:-1].copy(), offs[1:].copy()
    ends = np.empty_like(offs)
    ends[:-1] = offs[1:]
    if offs.size:
        ends[-1] = n_indices
    return offs, ends


def embedding_bag_rowwise(
    packed,
    bits: int,
    indices,
    offsets,
    per_sample_weights=None,
    include_last_offset: bool = False,
    dim=None,
) -> np.ndarray:
    """Sum-pooled lookup of packed rows, bit-identical to ``embedding_bag_*_rowwise_offsets``.

    Parameters
    ----------
    packed : ndarray of uint8, shape (rows, row_bytes)
        Output of :func:`quantize_rowwise` (or of torch's prepack ops).
    bits : {8, 4, 2}
    indices : 1-D integer array
        Row ids, each in ``[0, rows)``.
    offsets : 1-D integer array
        Start of each bag in ``indices`` (torch semantics; see :func:`bag_bounds`).
    per_sample_weights : 1-D float32 array, optional
        One weight per index; each row is scaled before it is added.
    include_last_offset : bool
        Whether ``offsets`` ends with the end of the last bag.
    dim : int, optional
        Embedding dimension (4/2-bit rows may hold fewer values than their bytes allow).

    Returns
    -------
    ndarray of float32, shape (bags, dim); empty bags are zero.

    Examples
    --------
    >>> import numpy as np
    >>> from embzip.lowprec import quantize_rowwise
    >>> p = quantize_rowwise(np.eye(3, dtype=np.float32), bits=8)
    >>> embedding_bag_rowwise(p, 8, indices=[0, 1, 2, 2], offsets=[0, 1, 1])
    array([[1., 0., 0.],
           [0., 0., 0.],
           [0., 1., 2.]], dtype=float32)
    """
    bits = check_bits(bits)
    p = uint8_matrix(packed, "packed")
    d = packed_dim(p.shape[1], bits, dim)
    idx = int_vector(indices, "indices")
    include_last_offset = flag(include_last_offset, "include_last_offset")
    # Index bounds are checked *after* the lookup, from the largest index (read as unsigned) the
    # kernel saw: a separate pass over the ids before it cost ~0.1 ms per 327,680 ids, 6-13% of
    # a 2-thread 8-bit lookup at dims 64/128 (torch also checks inside its lookup loop). The
    # kernels still decide nothing: they read row min(uint64(i), rows - 1), which is inside the
    # table whatever i is, and this wrapper raises -- discarding the output -- when the maximum is
    # out of range. With valid offsets the bags cover every index, so every index is seen; where
    # the kernel would not see them all (no bags, zero-width rows) or could not clamp (a table
    # with no rows), the separate pass still runs.
    rows = p.shape[0]
    try:
        starts, ends = bag_bounds(offsets, idx.size, include_last_offset)
        if per_sample_weights is None:
            w = np.zeros(1, np.float32)  # never read; keeps one kernel signature
            has_w = False
        else:
            w = float_array(per_sample_weights, "per_sample_weights")
            if w.shape != idx.shape:
                raise ValueError(
                    f"per_sample_weights must have the shape of indices {idx.shape}, "
                    f"found {w.shape}"
                )
            has_w = True
    except (TypeError, ValueError):
        # out-of-range indices are reported before bad offsets/weights, as when they were
        # checked first
        if idx.size and _index_umax(idx) >= np.uint64(rows):
            raise _index_error(idx, rows) from None
        raise
    out = np.empty((starts.size, d), dtype=np.float32)
    if out.size == 0 or rows == 0:
        if idx.size and _index_umax(idx) >= np.uint64(rows):
            raise _index_error(idx, rows)
        if out.size == 0:
            return out
    if bits == 8 and 0 < d <= MAX_SPECIALIZED_DIM:
        hi = _bag8_for(d)(p, idx, starts, ends, w, has_w, _ends_past_prefetch(p), out)
    else:
        hi = _BAG[bits](p, idx, starts, ends, w, has_w, out)
    if idx.size and hi >= rows:  # (hi is 0 when there are no ids, whatever the table)
        raise _index_error(idx, rows)
    return out
