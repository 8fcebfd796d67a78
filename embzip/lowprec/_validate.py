"""Argument checks shared by the lowprec entry points (kernels trust these completely)."""

from __future__ import annotations

import numbers

import numpy as np

BITS = (8, 4, 2)


def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or int(bits) not in BITS:
        raise ValueError(f"bits must be one of {BITS}, found {bits!r}")
    return int(bits)


def _float32_or_16(arr, name: str) -> None:
    # either byte order: a big-endian float32 is a float32 (converted, value for value)
    if arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 2):
        raise TypeError(f"{name} must be a float32 (or float16) array, found dtype {arr.dtype}")


def float_matrix(a, name: str, *, allow_empty: bool = True) -> np.ndarray:
    """A C-contiguous 2-D float32 array; float16 is widened exactly, other dtypes are refused."""
    arr = np.asarray(a)
    _float32_or_16(arr, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x dim), found shape {arr.shape}")
    return np.asarray(arr, dtype=np.float32, order="C")  # keeps 0-d arrays 0-d


def float_array(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    _float32_or_16(arr, name)
    return np.asarray(arr, dtype=np.float32, order="C")  # keeps 0-d arrays 0-d


def uint8_matrix(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 array (a packed table), found dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x row bytes), found shape {arr.shape}")
    return np.ascontiguousarray(arr)


def int_vector(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        if arr.size == 0 and arr.dtype == np.float64:  # np.asarray([]) is float64: treat as empty
            return np.zeros(0, np.int64)
        raise TypeError(f"{name} must be an integer array, found dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, found shape {arr.shape}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values above int64 range, found max {int(arr.max())}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def count(value, name: str) -> int:
    """A non-negative integer (not bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, found {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, found {value}")
    return int(value)


def flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, found {type(value).__name__} {value!r}")
    return bool(value)


def choice(value, name: str, options) -> str:
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, found {value!r}")
    return value
