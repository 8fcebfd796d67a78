"""Hypothesis strategies for adversarial float arrays (shared by the property tests).

Special values are built from bit patterns, never from float arithmetic, and arrays are
assembled by bit copies, so NaN payloads (quiet and signalling, both signs) survive exactly.
Ordinary (quantizable) background values come from numpy generators seeded by a drawn seed;
the adversarial elements are drawn by hypothesis over them, so failures shrink to the few
elements that matter.

The element mix aims at the places an error-bounded quantizer breaks:

- values one ulp either side of the bin edges ``(k + 0.5) * 2 * abs_error`` (and of the
  edges of the largest dtype step not above ``2 * abs_error``, which is what a careful
  quantizer must use), for small, medium and integer-range-overflowing ``k``;
- subnormals, +-max, +-smallest normal, -0.0, +-inf, NaN with random payloads;
- huge ranges (1e-30 next to 1e30), bounds tiny or huge next to the values.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOATS = (np.float32, np.float64)
STRATEGIES = ("fast", "compact", "auto")

# dtype -> (unsigned int type of the same width, mantissa bits, exponent bits)
_LAYOUT = {np.dtype(np.float32): (np.uint32, 23, 8), np.dtype(np.float64): (np.uint64, 52, 11)}


def uint_of(dtype):
    return _LAYOUT[np.dtype(dtype)][0]


def bits_of(x: np.ndarray) -> np.ndarray:
    """The raw bit patterns of a native-order float array (any layout), same shape."""
    x = np.asarray(x)
    assert x.dtype.isnative
    return x.view(uint_of(x.dtype))


def from_bits(bits, dtype) -> np.ndarray:
    return np.asarray(bits, dtype=uint_of(dtype)).view(np.dtype(dtype))


def _to_bits(value: float, dtype) -> int:
    """A Python float (or numpy scalar) rounded to ``dtype``, as its bit pattern."""
    with np.errstate(over="ignore"):
        return int(np.array([value], dtype=dtype).view(uint_of(dtype))[0])


# --------------------------------------------------------------------------- elements


@st.composite
def nan_bits(draw, dtype):
    """A NaN bit pattern: random sign, quiet or signalling, random payload."""
    utype, mbits, ebits = _LAYOUT[np.dtype(dtype)]
    sign = draw(st.integers(0, 1))
    quiet = draw(st.booleans())
    quiet_bit = 1 << (mbits - 1)
    payload = draw(st.integers(0, quiet_bit - 1))
    if quiet:
        mantissa = quiet_bit | payload
    else:
        mantissa = payload if payload else 1  # a zero mantissa would be an infinity
    return (sign << (mbits + ebits)) | (((1 << ebits) - 1) << mbits) | mantissa


def nonfinite_bits(dtype):
    """+-inf or any NaN."""
    utype, mbits, ebits = _LAYOUT[np.dtype(dtype)]
    inf = ((1 << ebits) - 1) << mbits
    return st.one_of(st.sampled_from([inf, inf | 1 << (mbits + ebits)]), nan_bits(dtype))


def finite_special_bits(dtype):
    """+-0, +-max, +-smallest normal, +-smallest subnormal, any subnormal."""
    utype, mbits, ebits = _LAYOUT[np.dtype(dtype)]
    sign = 1 << (mbits + ebits)
    info = np.finfo(dtype)
    fixed = [0, sign, _to_bits(info.max, dtype), _to_bits(-info.max, dtype),
             _to_bits(info.tiny, dtype), _to_bits(-info.tiny, dtype), 1, sign | 1]
    subnormal = st.builds(lambda s, m: s * sign | m, st.integers(0, 1), st.integers(1, (1 << mbits) - 1))
    return st.one_of(st.sampled_from(fixed), subnormal)


def special_bits(dtype):
    """Finite specials (zeros, extremes, subnormals), +-inf, NaN with any payload."""
    return st.one_of(finite_special_bits(dtype), nonfinite_bits(dtype))


def dtype_step(abs_error: float, dtype):
    """The largest ``dtype`` value not above ``2 * abs_error`` (what the quantizer should use)."""
    ftype = np.dtype(dtype).type
    target = 2.0 * abs_error
    with np.errstate(over="ignore"):
        step = ftype(target)
    if not np.isfinite(step) or float(step) > target:
        step = np.nextafter(ftype(min(target, float(np.finfo(dtype).max))), ftype(0))
    return float(step)


_K_SMALL = st.integers(-300, 300)
_K_EDGE = st.sampled_from([2**30 - 2, 2**30 - 1, 2**30, 2**30 + 1, 2**31 - 1, 2**31, 2**32, 2**53])
_K = st.one_of(_K_SMALL, _K_EDGE.flatmap(lambda k: st.sampled_from([k, -k - 1])),
               st.integers(-(2**31), 2**31))


@st.composite
def edge_bits(draw, dtype, abs_error: float):
    """A value within a few ulps of a bin edge ``(k + 1/2) * step`` for one of two steps."""
    step = draw(st.sampled_from([2.0 * abs_error, dtype_step(abs_error, dtype)]))
    k = draw(_K)
    edge = (k + 0.5) * step
    if not math.isfinite(edge):
        edge = math.copysign(float(np.finfo(dtype).max), edge)
    bits = _to_bits(edge, dtype)
    ulps = draw(st.integers(-3, 3))
    ftype = np.dtype(dtype).type
    v = from_bits([bits], dtype)[0]
    toward = ftype(np.inf) if ulps > 0 else ftype(-np.inf)
    with np.errstate(over="ignore"):
        for _ in range(abs(ulps)):
            v = np.nextafter(v, toward)
    return int(np.array([v], dtype=dtype).view(uint_of(dtype))[0])


@st.composite
def scaled_bits(draw, dtype, scale: float):
    """A finite value in [-scale, scale] (uniform-ish, plus exact multiples of the scale)."""
    frac = draw(st.floats(-1.0, 1.0, allow_nan=False))
    return _to_bits(frac * scale, dtype)


def magnitude_bits(dtype):
    """Any finite value, including 1e-30 next to 1e30 (huge ranges)."""
    info = np.finfo(dtype)
    limit = float(info.max)
    return st.one_of(
        st.floats(-limit, limit, allow_nan=False, allow_infinity=False, width=np.dtype(dtype).itemsize * 8),
        st.sampled_from([1e-30, -1e-30, 1e30, -1e30, 1e-20, 1e20]),
    ).map(lambda v: _to_bits(v, dtype))


@st.composite
def element_bits(draw, dtype, abs_error: float):
    """One adversarial element for a bound of ``abs_error`` (weighted toward quantizable values)."""
    r = draw(st.integers(0, 99))
    if r < 45:
        return draw(edge_bits(dtype, abs_error))
    if r < 70:
        return draw(scaled_bits(dtype, min(1e3 * abs_error, float(np.finfo(dtype).max))))
    if r < 88:
        return draw(special_bits(dtype))
    return draw(magnitude_bits(dtype))


# --------------------------------------------------------------------------- bounds


def abs_bounds(dtype):
    """Absolute bounds from tiny (1e-30, subnormal) to huge (1e300 / 1e38), plus ordinary ones."""
    huge = 1e300 if np.dtype(dtype) == np.float64 else 1e38
    tiny_sub = 1e-310 if np.dtype(dtype) == np.float64 else 1e-44
    return st.one_of(
        st.sampled_from([1e-30, tiny_sub, 1e-12, 1e-6, 1e-3, 0.01, 0.5, 1.0, 3.0, 1e6, huge]),
        st.floats(1e-8, 1e4, allow_nan=False, allow_infinity=False),
    )


def rel_bounds():
    return st.one_of(st.sampled_from([1e-30, 1e-12, 1e-6, 1e-3, 0.01, 0.05, 0.5, 1.0, 7.0]),
                     st.floats(1e-7, 0.2, allow_nan=False, allow_infinity=False))


# --------------------------------------------------------------------------- shapes


def shapes(max_elements: int = 400):
    """0-d, empty (0,), (3, 0), (0, 5), 1-element, and N-d up to 4 dims."""
    return st.one_of(
        st.sampled_from([(), (0,), (3, 0), (0, 5), (1,), (1, 1), (2, 0, 3), (1, 1, 1, 1)]),
        hnp.array_shapes(min_dims=1, max_dims=1, min_side=1, max_side=max_elements),
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),
        hnp.array_shapes(min_dims=3, max_dims=4, min_side=1, max_side=5),
    )


# --------------------------------------------------------------------------- arrays


def _nudge(x: np.ndarray, rng, max_ulps: int = 2) -> np.ndarray:
    """Move each element of a finite float array by -max_ulps..max_ulps ulps."""
    ftype = x.dtype.type
    for _ in range(max_ulps):
        move = rng.integers(-1, 2, x.shape)
        with np.errstate(over="ignore"):
            x = np.where(move > 0, np.nextafter(x, ftype(np.inf)),
                         np.where(move < 0, np.nextafter(x, ftype(-np.inf)), x)).astype(x.dtype)
    return x


def _background(rng, dtype, shape, step: float, lo=None, hi=None) -> np.ndarray:
    """Quantizable values: bin centres, bin edges and points in between, each nudged by a few
    ulps; within [lo, hi] when given (rel mode), else around zero with a drawn spread."""
    n = math.prod(shape)
    info = np.finfo(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        if lo is None:
            k = np.rint(rng.laplace(0.0, float(rng.choice([1.0, 8.0, 300.0, 1e5])), n))
        else:
            k = np.floor((lo + (hi - lo) * rng.uniform(0.0, 1.0, n)) / step)
        kind = rng.integers(0, 3, n)
        v = np.where(kind == 0, (k + 0.5) * step, np.where(kind == 1, k * step, (k + rng.uniform(0, 1, n)) * step))
        if lo is not None:
            v = np.clip(v, lo, hi)
        v = np.where(np.isfinite(v), v, 0.0)
        v = np.clip(v, -float(info.max), float(info.max)).astype(dtype)
    v = _nudge(v, rng)
    if lo is not None:
        v = np.clip(v, np.dtype(dtype).type(lo), np.dtype(dtype).type(hi))
    return np.ascontiguousarray(v, dtype=dtype).reshape(shape)


@st.composite
def _overlay(draw, bits: np.ndarray, elements, max_count: int = 40) -> np.ndarray:
    """Write up to ``max_count`` drawn elements (bit patterns) at drawn flat positions."""
    if bits.size == 0:
        return bits
    flat = bits.reshape(-1)
    for index, value in draw(st.lists(st.tuples(st.integers(0, bits.size - 1), elements),
                                      max_size=min(max_count, bits.size))):
        flat[index] = value
    return bits


@st.composite
def abs_cases(draw, dtype, max_elements: int = 400):
    """(array, abs_error): quantizable background values (bin edges +- ulps) for a drawn
    bound, with adversarial elements (edges of far bins, specials, NaN payloads, huge and
    tiny magnitudes) written over drawn positions. Any shape, 0-d to 4-d."""
    abs_error = draw(abs_bounds(dtype), label="abs_error")
    shape = draw(shapes(max_elements), label="shape")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    step = draw(st.sampled_from([2.0 * abs_error, dtype_step(abs_error, dtype)]), label="step")
    x = _background(rng, dtype, shape, step)
    bits = draw(_overlay(x.view(uint_of(dtype)).copy(), element_bits(dtype, abs_error)), label="overlay")
    return bits.view(np.dtype(dtype)), abs_error


@st.composite
def rel_cases(draw, dtype, max_elements: int = 400):
    """(array, rel_error): background values in a drawn range [lo, hi] near the bin edges of
    ``rel_error * (hi - lo)``, the range endpoints pinned, plus adversarial overlays (mostly
    non-finite or inside the range; sometimes range-extending)."""
    rel = draw(rel_bounds(), label="rel_error")
    info = np.finfo(dtype)
    ftype = np.dtype(dtype).type
    lo = draw(st.one_of(st.sampled_from([0.0, -1.0, -1e30, float(-info.max), 1e-30]),
                        st.floats(-1e6, 1e6, allow_nan=False)), label="lo")
    width = draw(st.one_of(st.sampled_from([0.0, 1.0, 1e-30, 2.0 * float(info.max), 1e30]),
                           st.floats(0.0, 1e6, allow_nan=False)), label="width")
    with np.errstate(over="ignore"):
        lo_v = ftype(lo)
        hi_v = ftype(min(lo + width, float(info.max)))
    lo_f, hi_f = float(lo_v), float(hi_v)
    bound = rel * (hi_f - lo_f)
    if not math.isfinite(bound):
        bound = 2.0 * rel * (hi_f / 2 - lo_f / 2)
    shape = draw(shapes(max_elements), label="shape")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    if bound > 0 and math.isfinite(2.0 * bound):
        x = _background(rng, dtype, shape, 2.0 * bound, lo_f, hi_f)
    else:
        x = np.where(rng.integers(0, 2, shape) == 1, hi_v, lo_v).astype(dtype)
    bits = x.view(uint_of(dtype)).copy()
    if bits.size >= 2:
        flat = bits.reshape(-1)
        flat[0], flat[-1] = _to_bits(lo_v, dtype), _to_bits(hi_v, dtype)
    inside = st.floats(lo_f, hi_f, allow_nan=False, width=np.dtype(dtype).itemsize * 8).map(
        lambda v: _to_bits(v, dtype))
    extra = st.one_of(nonfinite_bits(dtype), inside, inside, element_bits(dtype, bound if bound > 0 else 1.0))
    bits = draw(_overlay(bits, extra, max_count=20), label="overlay")
    return bits.view(np.dtype(dtype)), rel


@st.composite
def bulk_arrays(draw, dtype, abs_error: float, min_size: int = 500, max_size: int = 5000):
    """A larger 1-D array (numpy-generated from a drawn seed) mixing quantizable values,
    bin-edge values and sprinkled specials: exercises multi-block bit-packing and rANS."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(min_size, max_size))
    special_rate = draw(st.sampled_from([0.0, 0.001, 0.02, 0.3]))
    spread = draw(st.sampled_from([1.0, 10.0, 1e3, 1e6, 1e10]))
    rng = np.random.default_rng(seed)
    step = dtype_step(abs_error, dtype)
    k = np.rint(rng.laplace(0.0, spread, n))
    choice = rng.integers(0, 3, n)
    x = np.where(choice == 0, (k + 0.5) * step, np.where(choice == 1, (k + 0.5) * 2 * abs_error, k * step + rng.uniform(-step, step, n)))
    with np.errstate(over="ignore", invalid="ignore"):
        x = x.astype(dtype)
        x = np.where(np.isfinite(x), x, np.finfo(dtype).max).astype(dtype)
    ulps = rng.integers(-2, 3, n)
    ftype = np.dtype(dtype).type
    x = np.where(ulps > 0, np.nextafter(x, ftype(np.inf)), np.where(ulps < 0, np.nextafter(x, ftype(-np.inf)), x))
    x = np.ascontiguousarray(x, dtype=dtype)
    n_special = int(special_rate * n)
    if n_special:
        where = rng.choice(n, n_special, replace=False)
        specials = draw(st.lists(special_bits(dtype), min_size=1, max_size=16))
        x_bits = x.view(uint_of(dtype))
        x_bits[where] = np.asarray(specials, dtype=uint_of(dtype))[rng.integers(0, len(specials), n_special)]
    return x


@st.composite
def duplicate_row_arrays(draw, dtype, abs_error: float):
    """2-D (rows x cols) arrays with many duplicate rows (the dedup path); some unique rows
    hold NaN / Inf / out-of-range values, and those rows are duplicated too. cols may be 1."""
    cols = draw(st.sampled_from([1, 2, 3, 8, 16]))
    n_unique = draw(st.integers(1, 6))
    rows = draw(st.integers(2, 80))
    unique = np.asarray(draw(hnp.arrays(uint_of(dtype), (n_unique, cols), elements=st.one_of(
        scaled_bits(dtype, 100 * abs_error), edge_bits(dtype, abs_error))))).copy()
    for r in range(n_unique):
        if draw(st.integers(0, 3)) == 0:  # an "outlier row": a special or far value in it
            c = draw(st.integers(0, cols - 1))
            unique[r, c] = draw(st.one_of(special_bits(dtype), magnitude_bits(dtype)))
    index = draw(st.lists(st.integers(0, n_unique - 1), min_size=rows, max_size=rows))
    return unique[np.asarray(index)].view(np.dtype(dtype))


# --------------------------------------------------------------------------- layouts


def bit_copy(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst[...] = src`` copying bit patterns (no float conversion can touch a NaN)."""
    u = uint_of(src.dtype.newbyteorder("="))
    dst.view(u)[...] = src.view(u)


def layouts(x: np.ndarray):
    """Equivalent arrays holding the same logical values: C copy, F copy, strided view
    (every axis stepped by 2), reversed view (negative strides), transposed-back copy,
    read-only copy, big-endian copy."""
    c = np.empty(x.shape, dtype=x.dtype)
    bit_copy(x, c)
    out = {"C": c}
    f = np.empty(x.shape, dtype=x.dtype, order="F")
    bit_copy(x, f)
    out["F"] = f
    if x.ndim:
        big = np.zeros(tuple(2 * s + 1 for s in x.shape), dtype=x.dtype)
        view = big[tuple(slice(1, None, 2) for _ in x.shape)]
        bit_copy(x, view)
        out["strided"] = view
        rev = np.zeros(x.shape, dtype=x.dtype)[tuple(slice(None, None, -1) for _ in x.shape)]
        bit_copy(x, rev)
        out["reversed"] = rev
        if x.ndim >= 2:
            t = np.empty(x.shape[::-1], dtype=x.dtype)
            bit_copy(x.T, t)
            out["transposed"] = t.T
    ro = c.copy()
    ro.flags.writeable = False
    out["read-only"] = ro
    u = np.dtype(uint_of(x.dtype))
    out["big-endian"] = x.view(u).astype(u.newbyteorder(">")).view(x.dtype.newbyteorder(">"))
    return out
