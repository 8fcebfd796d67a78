"""Property tests of the compress / decompress / inspect promises.

For every input and every strategy (fast, compact, auto), float32 and float64:

- every finite element decodes within ``bound = inspect(frame).abs_error`` (evaluated in
  float64 on the decoded values in the output dtype, no tolerance), and that bound is the
  ``abs_error`` given, or ``rel_error * (max - min)`` of the finite values (recomputed here);
- NaN (payload bits included) and +-Inf come back bit-exact, -0.0 comes back as a zero;
- the same input and parameters give identical frame bytes, whatever the memory layout
  (C, F, strided, negative strides, byte order) of the same logical array;
- ``frame.nbytes <= x.nbytes + 52 + 8 * ndim + 24 + 4`` (raw fallback: 1 section);
- dtype and shape are preserved; ``decompress(frame, out=arr)`` fills ``arr``;
- frames are accepted as bytes, bytearray, memoryview and uint8 arrays.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import currently_in_test_context, event, given, note
from hypothesis import strategies as st

import embzip
import strategies as S
from checkers import check_decoded, expected_abs_error

FIXED_HEADER = 52
SECTION_ENTRY = 24
HEADER_CRC = 4


def max_frame_bytes(x: np.ndarray) -> int:
    """Raw size plus the largest header a never-larger-than-raw frame needs (1 RAW section)."""
    return x.nbytes + FIXED_HEADER + 8 * x.ndim + SECTION_ENTRY + HEADER_CRC


def check_frame(x: np.ndarray, frame, mode: str, value, strategy: str) -> np.ndarray:
    """Every promise for one input and its frame; returns the decoded array."""
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 1
    assert frame.nbytes <= max_frame_bytes(x), (
        f"frame is {frame.nbytes} bytes, raw {x.nbytes} + max header "
        f"{max_frame_bytes(x) - x.nbytes}; stages {embzip.inspect(frame).stages}")
    info = embzip.inspect(frame)
    if currently_in_test_context():
        note(f"{strategy}: stages={info.stages} abs_error={info.abs_error!r} size={frame.nbytes}/{x.nbytes}")
        event(f"{strategy}: {'+'.join(info.stages)}")
    assert info.dtype == x.dtype and info.shape == x.shape
    assert info.error_mode == mode and info.error_value == float(value)
    assert info.frame_size == frame.nbytes and info.raw_size == x.nbytes
    expected = expected_abs_error(x, mode, value)
    bound = info.abs_error
    if expected is None:
        assert math.isfinite(bound) and bound >= 0.0
    else:
        assert bound == expected, (f"{mode} mode: header bound {bound!r}, expected {expected!r}"
                                   f" ({mode}_error={value!r})")
    y = embzip.decompress(frame)
    check_decoded(x, y, bound)
    return y


def roundtrip(x: np.ndarray, mode: str, value, strategies=S.STRATEGIES) -> dict:
    """Compress with each strategy, check every promise and determinism; return the frames."""
    frames = {}
    for strategy in strategies:
        frame = embzip.compress(x, strategy=strategy, **{f"{mode}_error": value})
        check_frame(x, frame, mode, value, strategy)
        again = embzip.compress(x, strategy=strategy, **{f"{mode}_error": value})
        assert np.array_equal(frame, again), f"{strategy}: compressing twice gave different frames"
        frames[strategy] = frame
    return frames


dtypes = pytest.mark.parametrize("dtype", S.FLOATS, ids=["float32", "float64"])


# --------------------------------------------------------------------- the bound


@dtypes
@given(data=st.data())
def test_abs_bound_adversarial(dtype, data):
    x, abs_error = data.draw(S.abs_cases(dtype), label="(x, abs_error)")
    roundtrip(x, "abs", abs_error)


@dtypes
@given(data=st.data())
def test_rel_bound_adversarial(dtype, data):
    x, rel_error = data.draw(S.rel_cases(dtype), label="(x, rel_error)")
    roundtrip(x, "rel", rel_error)


@dtypes
@given(data=st.data())
def test_bound_on_larger_arrays(dtype, data):
    """Multi-block bit-packing, rANS, dedup of reshaped rows, specials at random places."""
    abs_error = data.draw(st.sampled_from([1e-6, 1e-3, 0.05, 2.0]), label="abs_error")
    x = data.draw(S.bulk_arrays(dtype, abs_error), label="x")
    cols = data.draw(st.sampled_from([0, 1, 4, 16]), label="cols")
    if cols and x.size >= 2 * cols:
        rows = x.size // cols
        x = x[: rows * cols].reshape(rows, cols)
        if data.draw(st.booleans(), label="duplicate rows"):
            x = x[np.random.default_rng(rows).integers(0, max(1, rows // 8), rows)]
    mode = data.draw(st.sampled_from(["abs", "rel"]), label="mode")
    value = abs_error if mode == "abs" else data.draw(st.sampled_from([1e-6, 1e-3, 0.02]), label="rel")
    roundtrip(x, mode, value)


@dtypes
@given(data=st.data())
def test_duplicate_rows(dtype, data):
    """The dedup path, with duplicated rows that hold NaN, Inf or out-of-range values."""
    abs_error = data.draw(st.sampled_from([1e-3, 0.1, 1e-30]), label="abs_error")
    x = data.draw(S.duplicate_row_arrays(dtype, abs_error), label="x")
    if data.draw(st.booleans(), label="rel"):
        roundtrip(x, "rel", 0.01)
    else:
        roundtrip(x, "abs", abs_error)


@dtypes
@given(data=st.data())
def test_nonfinite_only(dtype, data):
    """Arrays of only NaN (random payloads, quiet and signalling, both signs) and +-Inf."""
    shape = data.draw(S.shapes(200), label="shape")
    bits = data.draw(S.hnp.arrays(S.uint_of(dtype), shape, elements=S.nonfinite_bits(dtype)), label="bits")
    x = np.asarray(bits).view(np.dtype(dtype))
    roundtrip(x, "abs", data.draw(S.abs_bounds(dtype), label="abs_error"))
    roundtrip(x, "rel", 0.01)


@dtypes
@given(data=st.data())
def test_constant_arrays(dtype, data):
    """rel mode on a constant array (zero range): the bound is 0, so decoding is exact."""
    shape = data.draw(S.shapes(300).filter(lambda s: math.prod(s) > 0), label="shape")
    value = data.draw(st.one_of(S.magnitude_bits(dtype), S.finite_special_bits(dtype)), label="value bits")
    x = np.full(shape, S.from_bits([value], dtype)[0], dtype=dtype)
    if data.draw(st.booleans(), label="with NaN/Inf") and x.size > 1:
        x.reshape(-1).view(S.uint_of(dtype))[:: max(1, x.size // 3)] = data.draw(S.nan_bits(dtype))
    frames = roundtrip(x, "rel", data.draw(S.rel_bounds(), label="rel_error"))
    if np.isfinite(x).any():  # max - min of the finite values is 0
        assert embzip.inspect(frames["auto"]).abs_error == 0.0


@dtypes
@pytest.mark.parametrize("abs_error", [1e-30, 1e-44, 1e-46, 1e-300, 1e-310, 5e-324])
def test_bounds_tiny_next_to_values(dtype, abs_error):
    """Bounds far below the values' ulp: every value must come back within them (exactly)."""
    rng = np.random.default_rng(7)
    x = rng.normal(1.0, 0.25, 3000).astype(dtype)
    x[::50] = 0.0
    x[1::97] = -0.0
    for mode, value in (("abs", abs_error), ("rel", abs_error)):
        roundtrip(x, mode, value)


@dtypes
@pytest.mark.parametrize("which", ["huge", "max"])
def test_bounds_huge(dtype, which):
    """Bounds of 1e300 (float64) / 1e38 (float32) and the largest float, values up to +-max."""
    info = np.finfo(dtype)
    abs_error = float(info.max) if which == "max" else (1e300 if dtype == np.float64 else 1e38)
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.normal(0, 1, 500), [float(info.max), -float(info.max), 0.0, -0.0, 1e-30],
                        rng.uniform(-1, 1, 500) * float(info.max)]).astype(dtype)
    roundtrip(x, "abs", abs_error)
    roundtrip(x, "rel", 1e300 if which == "max" else 0.5)


@dtypes
def test_codes_that_overflow_the_integer_range(dtype):
    """Values whose code round(x / step) needs more than 31 bits sit next to small ones."""
    step = S.dtype_step(1e-3, dtype)
    k = np.array([2**30 - 1, 2**30, 2**30 + 1, 2**31 - 1, 2**31, 2**31 + 1, 2**32, 2**40, 2**53], dtype=np.float64)
    big = np.concatenate([(k + 0.5) * step, -(k + 0.5) * step, k * step, -k * step])
    rng = np.random.default_rng(3)
    small = rng.uniform(-1, 1, 4000)
    x = np.concatenate([small[:2000], big, small[2000:]]).astype(dtype)
    frames = roundtrip(x, "abs", 1e-3)
    assert any("quantize" in embzip.inspect(f).stages for f in frames.values())


@dtypes
def test_bin_edges_take_the_quantizer_path(dtype):
    """Coverage guard: values 1 ulp around every bin edge for k in -2000..2000 are quantized
    (not stored raw), so the bound tests above really test the quantizer; and they hold.
    (Edge values may legitimately become outliers; the frame must still beat raw.)"""
    abs_error = 1e-3
    out = []
    for step in (2.0 * abs_error, S.dtype_step(abs_error, dtype)):
        edges = ((np.arange(-2000, 2001) + 0.5) * step).astype(dtype)
        ftype = np.dtype(dtype).type
        out += [np.nextafter(edges, ftype(-np.inf)), edges, np.nextafter(edges, ftype(np.inf))]
    x = np.concatenate(out).astype(dtype)
    frames = roundtrip(x, "abs", abs_error)
    for strategy, frame in frames.items():
        info = embzip.inspect(frame)
        assert "quantize" in info.stages and frame.nbytes < x.nbytes, (strategy, info.stages, frame.nbytes)


def test_rel_bound_when_the_range_overflows_float64():
    """max - min of [-max, max] overflows float64; rel_error * (max - min) does not (for
    rel_error < 0.5): the header must carry that bound and every value must meet it."""
    big = float(np.finfo(np.float64).max)
    x = np.linspace(-1.0, 1.0, 1000) * big
    roundtrip(x, "rel", 0.01)


def test_dedup_path_is_exercised():
    """Coverage guard for the duplicate-row tests: repeated rows are deduplicated."""
    rng = np.random.default_rng(5)
    unique = rng.normal(size=(5, 16)).astype(np.float32)
    unique[2, 3] = np.nan
    x = unique[rng.integers(0, 5, 200)]
    frames = roundtrip(x, "abs", 1e-3)
    for strategy, frame in frames.items():
        info = embzip.inspect(frame)
        assert "dedup" in info.stages, (strategy, info.stages)


# --------------------------------------------------------------------- shapes, layouts


SHAPES = [(), (0,), (3, 0), (0, 5), (1,), (1, 1), (7,), (300,), (40, 8), (5, 1), (1, 5),
          (3, 4, 5), (2, 3, 4, 5), (2, 0, 3), (1, 1, 1, 1), (17, 3, 1, 2)]


@dtypes
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_shapes(dtype, shape):
    rng = np.random.default_rng(len(shape) * 100 + sum(shape))
    x = rng.normal(size=shape).astype(dtype)
    if x.size > 4:
        flat = x.reshape(-1)
        idx = np.arange(0, x.size, x.size // 4)[:4]
        flat[idx] = np.array([np.nan, -0.0, np.inf, 1e30], dtype)
    for mode, value in (("abs", 0.01), ("rel", 0.001)):
        roundtrip(x, mode, value)


@dtypes
@given(data=st.data())
def test_frame_depends_only_on_logical_values(dtype, data):
    """C, F, strided, negative-stride and transposed views of the same values: same frame."""
    x, abs_error = data.draw(S.abs_cases(dtype, max_elements=120), label="(x, abs_error)")
    mode = data.draw(st.sampled_from(["abs", "rel"]), label="mode")
    value = abs_error if mode == "abs" else 0.01
    strategy = data.draw(st.sampled_from(S.STRATEGIES), label="strategy")
    reference = embzip.compress(x, strategy=strategy, **{f"{mode}_error": value})
    for name, variant in S.layouts(x).items():
        if name == "big-endian":
            continue  # own test below
        frame = embzip.compress(variant, strategy=strategy, **{f"{mode}_error": value})
        assert np.array_equal(frame, reference), f"{name} layout gave a different frame"


@dtypes
@given(data=st.data())
def test_frame_independent_of_byte_order(dtype, data):
    """A big-endian array holds the same logical float values: it compresses, to the same frame."""
    x, abs_error = data.draw(S.abs_cases(dtype, max_elements=120), label="(x, abs_error)")
    variant = S.layouts(x)["big-endian"]
    assert variant.dtype.byteorder == ">"
    frame = embzip.compress(variant, abs_error=abs_error)
    assert np.array_equal(frame, embzip.compress(x, abs_error=abs_error))
    assert embzip.decompress(frame).dtype == np.dtype(dtype)


# --------------------------------------------------------------------- out= and frame types


def _out_variants(shape, dtype):
    out = {"C": np.empty(shape, dtype), "F": np.empty(shape, dtype, order="F")}
    if len(shape):
        big = np.full(tuple(2 * s + 1 for s in shape), 7, dtype)
        out["strided"] = big[tuple(slice(1, None, 2) for _ in shape)]
        out["reversed"] = np.empty(shape, dtype)[tuple(slice(None, None, -1) for _ in shape)]
    # ndarray subclasses with rules of their own (a matrix stays 2-D when reshaped): decoded
    # into through their memory (once, a matrix here was written past its end)
    out["masked"] = np.ma.masked_array(np.empty(shape, dtype))
    if len(shape) == 2:
        out["matrix"] = np.asmatrix(np.empty(shape, dtype))
        out["matrix F"] = np.asmatrix(np.empty(shape, dtype, order="F"))
    return out


@dtypes
@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@given(data=st.data())
def test_decompress_into_out(dtype, data):
    x, abs_error = data.draw(S.abs_cases(dtype, max_elements=150), label="(x, abs_error)")
    strategy = data.draw(st.sampled_from(S.STRATEGIES), label="strategy")
    frame = embzip.compress(x, abs_error=abs_error, strategy=strategy)
    y = embzip.decompress(frame)
    for name, out in _out_variants(x.shape, dtype).items():
        if name == "strided":
            big = out.base
            outside = big.copy()
        result = embzip.decompress(frame, out=out)
        assert result is out, f"{name}: decompress(out=) did not return out"
        assert np.array_equal(S.bits_of(out.view(np.ndarray)), S.bits_of(y)), f"{name}: out differs from decompress()"
        if len(x.shape) == 2:  # and a subclass compresses as its plain array does
            assert embzip.compress(np.asmatrix(x), abs_error=abs_error, strategy=strategy).tobytes() == frame.tobytes()
        if name == "strided":  # elements between the strided ones are untouched
            mask = np.ones(big.shape, bool)
            mask[tuple(slice(1, None, 2) for _ in x.shape)] = False
            assert np.array_equal(S.bits_of(big)[mask], S.bits_of(outside)[mask])


@given(data=st.data())
def test_frame_input_types(data):
    x, abs_error = data.draw(S.abs_cases(np.float32, max_elements=150), label="(x, abs_error)")
    frame = embzip.compress(x, abs_error=abs_error)
    y = embzip.decompress(frame)
    raw = frame.tobytes()
    spaced = np.zeros(2 * frame.size, np.uint8)
    spaced[::2] = frame
    readonly = frame.copy()
    readonly.flags.writeable = False
    forms = {"bytes": raw, "bytearray": bytearray(raw), "memoryview": memoryview(raw),
             "memoryview(bytearray)": memoryview(bytearray(raw)), "uint8 array": frame,
             "read-only uint8 array": readonly, "strided uint8 array": spaced[::2],
             "unaligned bytes": memoryview(b"\0" + raw)[1:]}
    for name, form in forms.items():
        assert np.array_equal(S.bits_of(embzip.decompress(form)), S.bits_of(y)), name
        assert embzip.inspect(form) == embzip.inspect(frame), name
