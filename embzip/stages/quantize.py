"""Quantizer stage: resolve the step from the bound, quantize with the guarantee, dequantize."""

from __future__ import annotations

import dataclasses

import numpy as np

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
    lo, hi = float(np.min(values)), float(np.max(values))
    if np.isfinite(lo) and np.isfinite(hi):
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
    kernel = kernels.quantize_f32 if values.dtype == np.float32 else kernels.quantize_f64
    kernel(values, 1.0 / float(step), step, float(abs_error), codes, mask)
    return Quantized(codes, mask, int(np.count_nonzero(mask)))


def dequantize(codes: np.ndarray, step, out: np.ndarray) -> np.ndarray:
    """``out = dtype(unzigzag(codes)) * step`` (1-D, out's dtype)."""
    kernel = kernels.dequantize_f32 if out.dtype == np.float32 else kernels.dequantize_f64
    kernel(codes, step, out)
    return out


def patch_outliers(out: np.ndarray, positions: np.ndarray, values: np.ndarray) -> None:
    """Write verbatim outlier values; positions must already be validated."""
    kernels.scatter_values(positions, values, out)
