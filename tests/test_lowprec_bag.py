"""Pooled rowwise lookups: bit-identical to torch's embedding_bag_*_rowwise_offsets (sum)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embzip.lowprec import bag_bounds, embedding_bag_rowwise, quantize_rowwise

F32 = np.float32


def _torch():
    return pytest.importorskip("torch", reason="torch==2.13.0 is the oracle for bit-exactness")


def _ops(torch, bits):
    q = torch.ops.quantized
    return {
        8: (q.embedding_bag_byte_prepack, q.embedding_bag_byte_rowwise_offsets),
        4: (q.embedding_bag_4bit_prepack, q.embedding_bag_4bit_rowwise_offsets),
        2: (q.embedding_bag_2bit_prepack, q.embedding_bag_2bit_rowwise_offsets),
    }[bits]


def assert_same_floats(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype == F32
    na, nb = np.isnan(a), np.isnan(b)
    np.testing.assert_array_equal(na, nb)
    np.testing.assert_array_equal(a.view(np.uint32)[~na], b.view(np.uint32)[~nb])


@st.composite
def lookups(draw):
    bits = draw(st.sampled_from([8, 4, 2]))
    per = 1 if bits == 8 else 8 // bits
    n = draw(st.integers(1, 30))
    # every vector block width (128, 64, 32, 8) and the scalar tail get exercised
    d = draw(st.sampled_from([1, 4, 8, 12, 16, 24, 32, 36, 64, 72, 100, 128, 136, 200, 260]))
    d = max(d - d % per, per)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** draw(st.integers(-20, 20))
    w = (rng.standard_normal((n, d)) * scale).astype(F32)
    special = draw(st.sampled_from(["none", "inf", "nan", "constant", "subnormal"]))
    if special == "inf":
        w[rng.random((n, d)) < 0.05] = np.inf
    elif special == "nan":
        w[rng.random((n, d)) < 0.05] = np.nan
    elif special == "constant":
        w[:] = w[:, :1]
    elif special == "subnormal":
        w *= F32(1e-39)
    n_idx = draw(st.integers(0, 60))
    idx = rng.integers(0, n, n_idx)
    n_bags = draw(st.integers(1, 10))
    offsets = np.sort(rng.integers(0, n_idx + 1, n_bags))
    offsets[0] = 0
    include_last = draw(st.booleans())
    if include_last:
        offsets = np.append(offsets, n_idx)
    weights = None
    if draw(st.booleans()):
        weights = (rng.standard_normal(n_idx) * 10.0 ** draw(st.integers(-3, 3))).astype(F32)
        if n_idx and draw(st.booleans()):  # special weights: torch's results hold here too
            specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-45, 3.4e38], F32)
            hit = rng.random(n_idx) < 0.3
            weights[hit] = rng.choice(specials, int(hit.sum()))
    itype = draw(st.sampled_from([np.int64, np.int32]))
    return bits, w, idx.astype(itype), offsets.astype(itype), weights, include_last


@given(lookups())
def test_bag_matches_torch(case):
    torch = _torch()
    bits, w, idx, offsets, weights, include_last = case
    prepack, bag = _ops(torch, bits)
    packed = prepack(torch.from_numpy(w))
    want = bag(packed, torch.from_numpy(idx), torch.from_numpy(offsets),
               per_sample_weights=None if weights is None else torch.from_numpy(weights),
               include_last_offset=include_last).numpy()
    got = embedding_bag_rowwise(packed.numpy(), bits, idx, offsets, weights,
                                include_last_offset=include_last)
    assert_same_floats(got, want)


@given(st.sampled_from([8, 4, 2]), st.integers(1, 40), st.integers(0, 2**31))
def test_bag_of_one_row_is_the_dequantized_row(bits, d, seed):
    # no torch needed: a bag holding one row with weight 1 decodes that row exactly
    # (fma(s, q, 0 + b) is the unpack formula fma(s, q, b))
    from embzip.lowprec import dequantize_rowwise

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((7, d)).astype(F32)
    p = quantize_rowwise(w, bits)
    out = embedding_bag_rowwise(p, bits, np.arange(7), np.arange(7), dim=d)
    assert_same_floats(out, dequantize_rowwise(p, bits, dim=d))


def test_empty_bags_and_no_indices():
    p = quantize_rowwise(np.ones((3, 8), F32), 8)
    out = embedding_bag_rowwise(p, 8, [], [0, 0, 0])
    assert out.shape == (3, 8) and not out.any()
    assert embedding_bag_rowwise(p, 8, [], []).shape == (0, 8)
    assert embedding_bag_rowwise(p, 8, [1], [0, 1], include_last_offset=True).shape == (1, 8)


def test_bag_bounds_semantics():
    s, e = bag_bounds([0, 2, 2], 5)
    assert s.tolist() == [0, 2, 2] and e.tolist() == [2, 2, 5]
    s, e = bag_bounds([0, 2, 5], 5, include_last_offset=True)
    assert s.tolist() == [0, 2] and e.tolist() == [2, 5]
    with pytest.raises(TypeError, match="n_indices must be an integer"):
        bag_bounds([0, 1], 2.5)
    with pytest.raises(ValueError, match="n_indices must be >= 0"):
        bag_bounds([0], -1)


@pytest.mark.parametrize(
    ("indices", "offsets", "kwargs", "exc", "match"),
    [
        ([0, 3], [0], {}, ValueError, r"indices must be in \[0, 3\) .* found 3"),
        ([0, -1], [0], {}, ValueError, r"found -1"),
        ([0, 1, 2], [0, 2, 1], {}, ValueError,
         r"non-decreasing, found offsets\[1\]=2 > offsets\[2\]=1"),
        ([0, 1, 2], [1, 2], {}, ValueError, r"start at 0, found offsets\[0\]=1"),
        ([0, 1, 2], [0, 5], {}, ValueError, r"must not exceed len\(indices\)=3, found 5"),
        ([0, 1, 2], [0, 2], {"include_last_offset": True}, ValueError,
         r"last offset must equal len\(indices\)=3, found 2"),
        ([0, 1, 2], [], {"include_last_offset": True}, ValueError, "at least one offset"),
        ([0.0, 1.0], [0], {}, TypeError, "indices must be an integer array, found dtype float64"),
        ([True], [0], {}, TypeError, "found dtype bool"),
        ([[0, 1]], [0], {}, ValueError, r"indices must be 1-D, found shape \(1, 2\)"),
        ([0, 1], [0], {"per_sample_weights": np.ones(3, F32)}, ValueError,
         r"shape of indices \(2,\), found \(3,\)"),
        ([0, 1], [0], {"per_sample_weights": np.ones(2)}, TypeError, "found dtype float64"),
        ([0, 1], [0], {"include_last_offset": 1}, TypeError, "must be a bool"),
    ],
)
def test_bad_lookup_arguments(indices, offsets, kwargs, exc, match):
    p = quantize_rowwise(np.ones((3, 8), F32), 8)
    with pytest.raises(exc, match=match):
        embedding_bag_rowwise(p, 8, np.asarray(indices), offsets, **kwargs)


def test_bad_table_arguments():
    p = quantize_rowwise(np.ones((3, 8), F32), 4)
    with pytest.raises(ValueError, match=r"bits must be one of \(8, 4, 2\), found 3"):
        embedding_bag_rowwise(p, 3, [0], [0])
    with pytest.raises(ValueError, match=r"dim=9 does not fit 4-bit rows of 8 bytes"):
        embedding_bag_rowwise(p, 4, [0], [0], dim=9)
    with pytest.raises(TypeError, match="uint8"):
        embedding_bag_rowwise(p.astype(np.int8), 4, [0], [0])


@pytest.mark.parametrize("d", [3, 9, 17, 40, 100, 300, 390, 1030])
@pytest.mark.parametrize("weighted", [False, True])
def test_8bit_dims_and_table_alignments_match_torch(d, weighted):
    # 8-bit lookups run a kernel compiled per dimension (column blocks that overlap at the row's
    # end, several passes over a bag above 384 columns, the generic kernel above 1024) and
    # prefetch according to the table's alignment: all must give torch's bits.
    torch = _torch()
    rng = np.random.default_rng(d)
    n, n_idx = 40, 300
    w = (rng.standard_normal((n, d)) * 10.0 ** rng.integers(-3, 4, (n, 1))).astype(F32)
    want_p = torch.ops.quantized.embedding_bag_byte_prepack(torch.from_numpy(w)).numpy()
    idx = rng.integers(0, n, n_idx)
    offsets = np.sort(rng.integers(0, n_idx + 1, 25))
    offsets[0] = 0
    psw = rng.standard_normal(n_idx).astype(F32) if weighted else None
    want = torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
        torch.from_numpy(want_p), torch.from_numpy(idx), torch.from_numpy(offsets),
        per_sample_weights=None if psw is None else torch.from_numpy(psw)).numpy()
    for shift in (0, 1, 4, 8, 36):  # table starting at different offsets within a cache line
        buf = np.zeros(want_p.size + 64, np.uint8)
        p = buf[shift:shift + want_p.size].reshape(want_p.shape)
        p[:] = quantize_rowwise(w, 8)
        got = embedding_bag_rowwise(p, 8, idx, offsets, per_sample_weights=psw)
        assert_same_floats(got, want)


def test_prefetch_alignment_rule_is_exact():
    # _ends_past_prefetch says whether some row can end in a cache line that prefetching every
    # 64 bytes from the row's start misses; check it against every row of every alignment.
    from embzip.lowprec.bag import _ends_past_prefetch

    class Fake:
        def __init__(self, row_bytes, base):
            self.shape = (1, row_bytes)
            self.ctypes = type("C", (), {"data": base})()

    for row_bytes in range(9, 330):
        for base in range(64):
            miss = False
            for i in range(64):
                start = base + i * row_bytes
                need = set(range(start // 64, (start + row_bytes - 1) // 64 + 1))
                got = {(start + off) // 64 for off in range(0, row_bytes, 64)}
                miss |= not need <= got
            assert _ends_past_prefetch(Fake(row_bytes, base)) == miss, (row_bytes, base)


@pytest.mark.parametrize("bad", [-1, -(2**40), 3, 2**40])
@pytest.mark.parametrize("where", [0, 40_000, 69_999])
def test_out_of_range_index_found_in_long_index_lists(bad, where):
    # long index lists are looked up on all numba threads (each thread its bags, each keeping the
    # largest index it saw): a bad index is found wherever it is, with the usual message
    p = quantize_rowwise(np.ones((3, 8), F32), 8)
    idx = np.zeros(70_000, np.int64)
    idx[where] = bad
    with pytest.raises(ValueError, match=rf"indices must be in \[0, 3\) .* found {bad}$"):
        embedding_bag_rowwise(p, 8, idx, [0])


I64 = np.iinfo(np.int64)
BAD_IDS = [-1, -2, -(2**40), I64.min, 7, 8, 2**40, I64.max]


@pytest.mark.parametrize(
    ("bits", "d"),
    # 8-bit: per-dimension kernels (< 8, < 16, overlapping last block, several passes over a bag
    # above 384 columns) and the generic kernel above 1024; 4/2-bit: masked and full blocks
    [(8, 3), (8, 9), (8, 17), (8, 64), (8, 128), (8, 300), (8, 390), (8, 1030),
     (4, 8), (4, 100), (4, 130), (2, 8), (2, 100), (2, 130)],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_out_of_range_ids_raise_for_every_kernel(bits, d, weighted):
    # The kernels read rows at min(uint64(i), rows - 1) and report the largest uint64(i) they saw;
    # the wrapper raises from that after the lookup. Every kernel must report every bad id --
    # first, last, alone in a bag, in the prefetch window -- and never read outside the table:
    # the table sits right after, then right before, an inaccessible page, so a read past either
    # end would crash the test run.
    rng = np.random.default_rng(d)
    packed = quantize_rowwise(rng.standard_normal((7, d)).astype(F32), bits)
    for at_end in (False, True):
        _bad_ids_raise(_guarded(packed, at_end), bits, d, weighted, rng)


def _guarded(packed, at_end):
    """A copy of ``packed`` starting right after, or ending right before, a PROT_NONE page."""
    import ctypes
    import mmap

    if not sys.platform.startswith("linux"):
        return packed
    page = mmap.PAGESIZE
    size = -(-packed.nbytes // page) * page + 2 * page
    buf = mmap.mmap(-1, size)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(addr, page, 0) == 0
    assert libc.mprotect(addr + size - page, page, 0) == 0
    start = size - page - packed.nbytes if at_end else page
    table = np.frombuffer(buf, np.uint8, packed.nbytes, start).reshape(packed.shape)
    table[:] = packed
    return table


def _bad_ids_raise(table, bits, d, weighted, rng):
    from embzip.lowprec._simd import rows_ahead

    # longer than the 8-bit kernels' prefetch distance (at most 64 rows: _simd.rows_ahead), so
    # every kernel runs both its prefetching loop and the loop after it
    n_idx = 150
    assert n_idx > rows_ahead(1)
    good = rng.integers(0, 7, n_idx)
    offsets = np.array([0, 1, 20, 20, 149], np.int64)
    psw = rng.standard_normal(n_idx).astype(F32) if weighted else None
    want = embedding_bag_rowwise(table, bits, good, offsets, per_sample_weights=psw, dim=d)
    for bad in BAD_IDS:
        for where in (0, 1, 5, 19, 44, 70, 100, 140, 148, 149):
            idx = good.copy()
            idx[where] = bad
            with pytest.raises(ValueError, match=rf"indices must be in \[0, 7\) .* found {bad}$"):
                embedding_bag_rowwise(table, bits, idx, offsets, per_sample_weights=psw, dim=d)
    got = embedding_bag_rowwise(table, bits, good, offsets, per_sample_weights=psw, dim=d)
    assert_same_floats(got, want)


def test_largest_and_smallest_bad_ids_reported_as_before():
    # with several bad ids the message names the most negative one, else the largest
    p = quantize_rowwise(np.ones((3, 16), F32), 8)
    for idx, bad in (([5, -1, 9, -4], -4), ([5, 0, 9, 3], 9), ([0, 3], 3)):
        with pytest.raises(ValueError, match=rf"found {bad}$"):
            embedding_bag_rowwise(p, 8, np.asarray(idx), [0, 2])


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_bad_ids_checked_where_the_lookup_reads_none(bits):
    # no bags, zero-width rows, or a table with no rows: the kernel would not see the ids (or
    # could not clamp them), so they are checked on their own, as before
    p = quantize_rowwise(np.ones((3, 8), F32), bits)
    for offsets, kw in (([], {}), ([0], {"include_last_offset": True})):
        with pytest.raises(ValueError, match=r"indices must be in \[0, 3\) .* found 3$"):
            embedding_bag_rowwise(p, bits, np.array([3]), offsets, **kw)
    empty = quantize_rowwise(np.ones((0, 8), F32), bits)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 0\) .* found 0$"):
        embedding_bag_rowwise(empty, bits, np.array([0]), [0])
    assert not embedding_bag_rowwise(empty, bits, np.zeros(0, np.int64), [0, 0]).any()
    if bits == 8:
        flat = quantize_rowwise(np.ones((3, 0), F32), 8)
        with pytest.raises(ValueError, match=r"found -1$"):
            embedding_bag_rowwise(flat, 8, np.array([0, -1]), [0])


@pytest.mark.parametrize(
    ("offsets", "kwargs"),
    [([1], {}), ([0, 2, 1], {}), ([0, 9], {}), ([0, 1], {"include_last_offset": True}),
     ([0.5], {}), ([0], {"per_sample_weights": np.ones(2)}),
     ([0], {"per_sample_weights": np.ones(5, F32)})],
)
def test_bad_ids_reported_before_bad_offsets_or_weights(offsets, kwargs):
    # the id check moved after the lookup; when offsets or weights are bad too, the id error
    # still comes first, as when ids were checked before everything else
    p = quantize_rowwise(np.ones((3, 8), F32), 8)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 3\) .* found 3$"):
        embedding_bag_rowwise(p, 8, np.array([0, 3, 1]), offsets, **kwargs)
