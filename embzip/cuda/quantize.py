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
from numba import cuda, float64, int64, uint32, uint64

from ..cpu.quantize import MAX_CODE_MAGNITUDE, ROUNDING_MAGIC
from ._launch import device, kernel, mul_f32, mul_f64

__all__ = ["quantize_one_f32", "quantize_one_f64", "quantize_f32", "quantize_f64",
           "dequantize_f32", "dequantize_f64", "finite_range", "patch_outliers_f32", "patch_outliers_f64",
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
def finite_range(values, lo_hi, finite_count):
    """``lo_hi = [min, max]`` of the finite values (start it at [+inf, -inf]), and their count."""
    lo = np.inf
    hi = -np.inf
    count = int64(0)
    for i in range(cuda.grid(1), values.shape[0], cuda.gridsize(1)):
        v = float64(values[i])
        if v - v == 0.0:  # finite: inf - inf and NaN - NaN are NaN
            lo = min(lo, v)
            hi = max(hi, v)
            count += 1
    if count:
        cuda.atomic.min(lo_hi, 0, lo)
        cuda.atomic.max(lo_hi, 1, hi)
        cuda.atomic.add(finite_count, 0, count)


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


@kernel
def compact_outliers(mask, numbers, values_bits, positions, outlier_bits):
    """``positions[k]``, ``outlier_bits[k]``: index and value bits of the k-th outlier, in
    order; ``numbers`` is the exclusive prefix sum of ``mask``."""
    for i in range(cuda.grid(1), mask.shape[0], cuda.gridsize(1)):
        if mask[i]:
            k = numbers[i]
            positions[k] = i
            outlier_bits[k] = values_bits[i]
