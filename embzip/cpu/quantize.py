"""Prequantization with a guaranteed bound, and dequantization.

A value ``x`` becomes the integer ``q = rint(x / step)`` and decodes as ``dtype(q) * step``
computed in the output dtype (one IEEE multiply: no FMA contraction is possible, so CPU and
GPU decode to the same bits). The quantizer recomputes that exact decoded value and checks
``|decoded - x| <= abs_error`` in float64 (see the kernel for why that is exact), so
float32 rounding can never break the bound: every value that fails, every NaN/Inf and every ``|q| > 2**30`` becomes an outlier, stored verbatim.
"""

from __future__ import annotations

import numpy as np

from .._jit import kernel, parallel_kernel, prange

MAX_CODE_MAGNITUDE = float(1 << 30)  # zigzag(q) then fits in 31 bits of a uint32
# Adding then subtracting 1.5 * 2**52 rounds a float64 to the nearest integer, ties to even
# (the current IEEE rounding mode), without a libm call; valid while |t| < 2**51.
ROUNDING_MAGIC = 6755399441055744.0


def _make_kernels(cast):
    """Build the quantize/dequantize kernels for one float type (``cast`` = np.float32/64)."""

    @kernel(inline="always")
    def quantize_one(value, inv_step, step, abs_error):
        # -> (zigzag code, ok). Branch-free so that loops around it vectorize.
        original = np.float64(value)
        t = original * inv_step
        in_range = abs(t) <= MAX_CODE_MAGNITUDE  # False for NaN and +-Inf too
        t = t if in_range else 0.0
        qf = (t + ROUNDING_MAGIC) - ROUNDING_MAGIC  # rint (ties to even), inlined
        diff = np.float64(cast(qf) * step) - original
        # Rounding is monotone, so a rounded |diff| strictly below the bound proves the
        # exact difference is within it; diff == 0 is exact. A difference that rounds to
        # exactly the bound is conservatively an outlier (rare, never wrong).
        ok = in_range & ((abs(diff) < abs_error) | (diff == 0.0))
        q = np.int64(qf) if ok else np.int64(0)
        return np.uint32((q << 1) ^ (q >> 63)), ok

    @parallel_kernel
    def quantize(values, inv_step, step, abs_error, codes, outlier_mask):
        # values: 1-D float; codes: uint32 zigzag; outlier_mask: uint8, 1 where the value is
        # stored verbatim (its code is then 0).
        for i in prange(values.size):
            code, ok = quantize_one(values[i], inv_step, step, abs_error)
            codes[i] = code
            outlier_mask[i] = np.uint8(0) if ok else np.uint8(1)

    @parallel_kernel
    def dequantize(codes, step, out):
        # out[i] = dtype(unzigzag(codes[i])) * step, in out's dtype (matches quantize's check).
        for i in prange(codes.size):
            z = np.int64(codes[i])
            q = (z >> 1) ^ -(z & 1)
            out[i] = cast(q) * step

    return quantize_one, quantize, dequantize


quantize_one_f32, quantize_f32, dequantize_f32 = _make_kernels(np.float32)
quantize_one_f64, quantize_f64, dequantize_f64 = _make_kernels(np.float64)


@kernel
def scatter_values(positions, values, out):
    """``out[positions[k]] = values[k]``; positions were validated by the caller."""
    for k in range(positions.size):
        out[positions[k]] = values[k]
