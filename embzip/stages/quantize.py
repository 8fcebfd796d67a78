"""Quantizer stage: resolve the step from the bound, quantize with the guarantee, dequantize."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .._jit import for_size
from ..cpu import quantize as kernels

__all__ = ["Quantized", "choose_step", "quantize", "dequantize", "finite_range"]


def choose_step(abs_error: float, dtype: np.dtype, constant=None):
    """The dequantization step for ``abs_error``, exactly representable in ``dtype``, or None.

    The step is the largest ``dtype`` value not above ``2 * abs_error`` (so a bin's half
    width never exceeds the bound). A zero bound (rel mode on constant data) uses a step that
    makes the constant value exact. None means no usable step exists (the bound underflows
    the dtype): the caller stores the data raw.
    """
    ftype = np.dtype(dtype).type
    info = np.finfo(dtype)
    if abs_error == 0.0:
        magnitude = abs(float(constant)) if constant is not None else 0.0
        return ftype(magnitude) if magnitude > 0.0 else ftype(1.0)
    target = 2.0 * abs_error
    if not np.isfinite(target) or target > float(info.max):
        return ftype(2.0 ** (info.maxexp - 1))  # largest power of two: any bigger step is as good
    step = ftype(target)
    if float(step) > target:
        step = np.nextafter(step, ftype(0))
    if step == 0:
        return None
    return step


def finite_range(values: np.ndarray):
    """(min, max) of the finite values as Python floats, or None when there are none."""
    if values.size == 0:
        return None
    # The ufuncs' reduce directly: np.min/np.max add ~3 us of dispatch each, a third of
    # their cost on a 100 KB array. Any NaN propagates, so finite results mean no NaN/Inf.
    flat = values.reshape(-1)
    lo, hi = float(np.minimum.reduce(flat)), float(np.maximum.reduce(flat))
    if math.isfinite(lo) and math.isfinite(hi):
        return lo, hi
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    return float(finite.min()), float(finite.max())


@dataclasses.dataclass
class Quantized:
    """Zigzag codes of every value, plus where the values must be stored verbatim."""

    codes: np.ndarray  # uint32, same element count as the input
    outlier_mask: np.ndarray  # uint8, 1 where the value is an outlier (its code is 0)
    outlier_count: int


def quantize(values: np.ndarray, step, abs_error: float) -> Quantized:
    """Quantize a contiguous 1-D float array with ``step`` (a scalar of the values' dtype)."""
    codes = np.empty(values.size, dtype=np.uint32)
    mask = np.empty(values.size, dtype=np.uint8)
    kernel = for_size(kernels.quantize_f32 if values.dtype == np.float32 else kernels.quantize_f64, values.nbytes)
    kernel(values, 1.0 / float(step), step, float(abs_error), codes, mask)
    return Quantized(codes, mask, int(np.count_nonzero(mask)))


def dequantize(codes: np.ndarray, step, out: np.ndarray) -> np.ndarray:
    """``out = dtype(unzigzag(codes)) * step`` (1-D, out's dtype)."""
    kernel = for_size(kernels.dequantize_f32 if out.dtype == np.float32 else kernels.dequantize_f64, out.nbytes)
    kernel(codes, step, out)
    return out


def patch_outliers(out: np.ndarray, positions: np.ndarray, values: np.ndarray) -> None:
    """Write verbatim outlier values; positions must already be validated."""
    kernels.scatter_values(positions, values, out)
