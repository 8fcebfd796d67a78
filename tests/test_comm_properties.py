"""Property tests of embzip.comm's segment blobs: the bound each destination's data is sent under.

A segment travels as a blob of embzip frames: one frame, or one per group of tables that share
a bound (``TableLayout``), each a gather of its tables' columns. For adversarial values (bin
edges +- ulps, subnormals, +-max, -0.0, NaN payloads, Inf) and every way of giving bounds
(the call's, one per destination, one per table with ``None`` entries, per destination and
table), in abs and rel mode, every strategy, float32 and float64:

- each table's elements decode within the bound of the frame that holds them: the table's
  ``abs_error``, or its ``rel_error`` times the range of the finite values of that frame's
  columns (what :func:`embzip.compress` would resolve for them; recomputed here);
- NaN/Inf come back bit-exact, -0.0 as a zero (the codec's promises, through the comm layer);
- the blob writes its region of the receive segment and nothing outside it;
- encoding the same segment twice gives the same bytes.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st

import strategies as S
from checkers import check_decoded, expected_abs_error
from embzip.comm import TableLayout
from embzip.comm import _layout, _segment


@st.composite
def segments(draw, dtype):
    """(segment [rows, tables*dim], plan, destination, the bound per table it must get, mode)."""
    mode = draw(st.sampled_from(["abs", "rel"]), label="mode")
    pool = S.abs_bounds(dtype) if mode == "abs" else S.rel_bounds()
    size = draw(st.integers(1, 3), label="size")
    dest = draw(st.integers(0, size - 1), label="destination")
    rows, tables, dim = (draw(st.integers(0, 6), label="rows"), draw(st.integers(1, 4), label="tables"),
                         draw(st.integers(1, 5), label="dim"))
    # A few distinct bound values, each table or destination taking one of them or None (the
    # call's): the coarse and fine ones land in any order, so a frame given a neighbour's bound shows.
    levels = draw(st.lists(pool, min_size=1, max_size=3, unique=True), label="bound values")
    default = levels[0]
    kind = draw(st.sampled_from(["call", "per destination", "dim only", "per table", "per destination and table"]))
    maybe = st.one_of(st.none(), st.just(float("nan")), st.sampled_from(levels), st.sampled_from(levels[::-1]))
    # the bound each table of this destination's segment must get, worked out from what was
    # drawn (not from the plan under test): None and NaN entries take the call's
    given = [default] * tables
    if kind == "per destination":
        bounds = draw(st.lists(maybe, min_size=size, max_size=size), label="bounds")
        given = [bounds[dest]] * tables
    elif kind == "dim only":
        bounds = TableLayout(dim=dim)
    elif kind == "per table":
        given = draw(st.lists(maybe, min_size=tables, max_size=tables), label="table bounds")
        bounds = TableLayout(dim=dim, bounds=given)
    elif kind == "per destination and table":
        grid = draw(st.lists(st.lists(maybe, min_size=tables, max_size=tables), min_size=size, max_size=size))
        bounds, given = TableLayout(dim=dim, bounds=grid), grid[dest]
    else:
        bounds = None
    per_table = np.array([default if b is None or b != b else b for b in given])
    count = rows * tables * dim
    plan = _layout.resolve(default if mode == "abs" else None, default if mode == "rel" else None, bounds, size,
                           np.full(size, count))
    # Values quantized on the finest table's grid (abs), or spread over a drawn range (rel),
    # with adversarial elements written over drawn positions.
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    finest = float(per_table.min())
    if mode == "abs":
        step = draw(st.sampled_from([2.0 * finest, S.dtype_step(finest, dtype)]), label="step")
        x = S._background(rng, dtype, (rows, tables * dim), step)
        elements = S.element_bits(dtype, finest)
    else:
        scale = draw(st.sampled_from([1.0, 1e-30, 1e6, float(np.finfo(dtype).max) / 4]), label="scale")
        x = (rng.standard_normal((rows, tables * dim)) * scale).astype(dtype)
        elements = st.one_of(S.special_bits(dtype), S.element_bits(dtype, max(finest * scale, 1e-300)))
    bits = draw(S._overlay(x.view(S.uint_of(dtype)).copy(), elements, max_count=20), label="overlay")
    return bits.view(np.dtype(dtype)), plan, dest, per_table, mode


@given(st.sampled_from(S.FLOATS), st.data())
def test_each_table_decodes_within_its_bound(dtype, data):
    x, plan, dest, per_table, mode = data.draw(segments(dtype))
    strategy = data.draw(st.sampled_from(S.STRATEGIES), label="strategy")
    offset = data.draw(st.integers(0, 3), label="offset")
    rows, tables = x.shape[0], per_table.size
    dim = x.shape[1] // tables
    blob = _segment.encode(x.reshape(-1), offset, plan, dest, dim, strategy)
    assert np.array_equal(blob, _segment.encode(x.reshape(-1), offset, plan, dest, dim, strategy))
    sentinel = np.array(np.nan, x.dtype).view(S.uint_of(x.dtype)) ^ 0x5
    segment = np.full(offset + x.size + 2, sentinel, S.uint_of(x.dtype)).view(x.dtype)
    assert _segment.decode(blob, segment) == (offset, x.size)
    outside = np.r_[segment[:offset], segment[offset + x.size:]].view(S.uint_of(x.dtype))
    assert np.all(outside == sentinel), "the blob wrote outside its region"
    got = segment[offset:offset + x.size].reshape(rows, tables, dim)
    want = x.reshape(rows, tables, dim)
    for value in dict.fromkeys(per_table.tolist()):  # the tables of one frame
        idx = np.flatnonzero(per_table == value)
        columns = want[:, idx, :]
        bound = expected_abs_error(columns, mode, value)
        note(f"tables {idx.tolist()}: {mode}_error={value!r} -> abs bound {bound!r}")
        check_decoded(columns, got[:, idx, :], float("inf") if bound is None else bound)
