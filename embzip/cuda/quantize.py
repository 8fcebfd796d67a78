"""Prequantization with a guaranteed bound, and dequantization (CUDA twin of cpu/quantize.py).

``quantize_one`` is the CPU function line for line: the float64 multiply by ``inv_step``,
rounding by adding and subtracting 1.5 * 2**52, the decoded value recomputed as
``dtype(q) * step`` in the dtype, and the same outlier rule. The two multiplications go
through ``mul_f64`` / ``mul_f32`` (round-to-nearest intrinsics) so that the compiler cannot
fuse them with the following addition or subtraction into an FMA, which would round once
instead of twice and give a different code than the CPU for some inputs (see _launch.py).
The dequantizer's ``dtype(q) * step`` is a lone multiply: there is nothing to fuse.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float64, int64, uint8, uint32, uint64

from ..cpu.quantize import MAX_CODE_MAGNITUDE, ROUNDING_MAGIC
from ._launch import device, kernel, mul_f32, mul_f64

__all__ = ["quantize_one_f32", "quantize_one_f64", "quantize_f32", "quantize_f64",
           "dequantize_f32", "dequantize_f64", "finite_range", "range_from_keys", "patch_outliers_f32", "patch_outliers_f64",
           "check_positions", "load_u64", "compact_outliers"]


def _make(cast, mul):
    @device
    def quantize_one(value, inv_step, step, abs_error):
        # -> (zigzag code, ok); the CPU kernel's arithmetic, operation for operation.
        original = float64(value)
        t = mul_f64(original, inv_step)
        in_range = abs(t) <= MAX_CODE_MAGNITUDE  # False for NaN and +-Inf too
        if not in_range:
            t = 0.0
        qf = (t + ROUNDING_MAGIC) - ROUNDING_MAGIC
        diff = float64(mul(cast(qf), step)) - original
        ok = in_range and (abs(diff) < abs_error or diff == 0.0)
        q = int64(qf) if ok else int64(0)
        return uint32(((q << 1) ^ (q >> 63)) & 0xFFFFFFFF), ok

    @kernel
    def quantize(values, inv_step, step, abs_error, codes, outlier_mask, outliers):
        # codes: uint32 zigzag; outlier_mask: uint8, 1 where stored verbatim (code 0);
        # outliers[0] += number of outliers (one atomic per thread).
        bad = int64(0)
        for i in range(cuda.grid(1), values.shape[0], cuda.gridsize(1)):
            code, ok = quantize_one(values[i], inv_step, step, abs_error)
            codes[i] = code
            outlier_mask[i] = 0 if ok else 1
            bad += 0 if ok else 1
        if bad:
            cuda.atomic.add(outliers, 0, bad)

    @kernel
    def dequantize(codes, step, out):
        for i in range(cuda.grid(1), codes.shape[0], cuda.gridsize(1)):
            z = int64(codes[i])
            out[i] = cast((z >> 1) ^ -(z & 1)) * step

    return quantize_one, quantize, dequantize


quantize_one_f32, quantize_f32, dequantize_f32 = _make(np.float32, mul_f32)
quantize_one_f64, quantize_f64, dequantize_f64 = _make(np.float64, mul_f64)


@kernel
def finite_range(bits, top, exponent, keys):
    """Order keys of the least and greatest finite values (see :func:`range_from_keys`).

    ``bits``: the values as unsigned ints (uint32 for float32, uint64 for float64); ``top`` its
    sign bit, ``exponent`` its exponent field (all ones: inf or NaN). A value's key orders like
    the value (negatives complemented, positives with the sign bit set), so integer atomics
    find the extremes, and no finite value has key 0 or complemented key 0: ``keys`` starts at
    [0, 0] (a zeroed counter slot) and ends ``[max complemented key, max key]``.
    """
    ones = top | (top - uint64(1))
    lo = uint64(0)
    hi = uint64(0)
    for i in range(cuda.grid(1), bits.shape[0], cuda.gridsize(1)):
        b = uint64(bits[i])
        if (b & exponent) != exponent:
            key = (b ^ ones) if (b & top) != uint64(0) else (b | top)
            hi = max(hi, key)
            lo = max(lo, key ^ ones)
    if hi != uint64(0):
        cuda.atomic.max(keys, 0, lo)
        cuda.atomic.max(keys, 1, hi)


def range_from_keys(keys, dtype):
    """(min, max) as Python floats from finite_range's ``keys`` (ints), or None (no finite value)."""
    dtype = np.dtype(dtype)
    top = 1 << (8 * dtype.itemsize - 1)
    ones = (top << 1) - 1
    keys = [k & 0xFFFFFFFFFFFFFFFF for k in keys]  # (read back as signed int64)
    if keys[1] == 0:
        return None
    utype = np.uint32 if dtype.itemsize == 4 else np.uint64

    def value(key):
        bits = key ^ top if key & top else key ^ ones
        return float(np.array(bits, utype).view(dtype))

    return value(keys[0] ^ ones), value(keys[1])


@device
def load_u64(data, pos):
    """The little-endian uint64 at byte ``pos`` of a uint8 array (any alignment)."""
    v = uint64(0)
    for k in range(8):
        v |= uint64(data[pos + k]) << uint64(8 * k)
    return v


def _make_patch(itemsize, utype):
    @kernel
    def patch_outliers(out_bits, frame, positions_at, values_at, count):
        # out_bits[position k] = value k, both read from the frame's outlier sections (any
        # alignment); out_bits is the output viewed as unsigned ints of the dtype's width.
        # Positions were validated by check_positions.
        for k in range(cuda.grid(1), count, cuda.gridsize(1)):
            at = values_at + itemsize * k
            bits = uint64(0)
            for b in range(itemsize):
                bits |= uint64(frame[at + b]) << uint64(8 * b)
            out_bits[load_u64(frame, positions_at + 8 * k)] = utype(bits)

    return patch_outliers


patch_outliers_f32 = _make_patch(4, uint32)
patch_outliers_f64 = _make_patch(8, uint64)


@kernel
def check_positions(frame, positions_at, count, limit, bad):
    """``bad[0] = 1`` unless the positions increase strictly and stay below ``limit``."""
    ulimit = uint64(limit)
    for k in range(cuda.grid(1), count, cuda.gridsize(1)):
        position = load_u64(frame, positions_at + 8 * k)
        wrong = position >= ulimit
        if k > 0 and position <= load_u64(frame, positions_at + 8 * (k - 1)):
            wrong = True
        if wrong:
            bad[0] = 1


@device
def store_bytes(frame, at, value, nbytes):
    """``frame[at:at + nbytes]`` = the little-endian bytes of ``value`` (any alignment)."""
    for k in range(nbytes):
        frame[at + k] = uint8((value >> uint64(8 * k)) & uint64(0xFF))


@kernel
def compact_outliers(mask, numbers, values_bits, frame, positions_at, values_at, itemsize):
    """The k-th outlier's index (uint64) to ``frame[positions_at + 8k]`` and its value bits to
    ``frame[values_at + itemsize * k]``, in order, byte by byte (the sections of a frame are
    packed, so any alignment); ``numbers`` is the exclusive prefix sum of ``mask``."""
    for i in range(cuda.grid(1), mask.shape[0], cuda.gridsize(1)):
        if mask[i]:
            k = numbers[i]
            store_bytes(frame, positions_at + 8 * k, uint64(i), 8)
            store_bytes(frame, values_at + itemsize * k, uint64(values_bits[i]), itemsize)
