"""fp16 and bf16 casts with torch's CPU bit patterns (and FBGEMM's bf16 variant).

* ``to_fp16`` rounds to nearest even like ``Tensor.half()`` (``vcvtps2ph``): overflow to +-inf,
  gradual underflow, NaN keeps its sign and top payload bits with the quiet bit set.
* ``bf16_bits(x)`` rounds to nearest even like ``Tensor.to(torch.bfloat16)``; overflow goes to
  +-inf and every NaN becomes ``0xFFFF``, the pattern torch's vectorized CPU conversion writes,
  or ``0x7FC0``, its scalar conversion's (``c10::BFloat16``), for an array laid out as a tensor
  torch converts element by element: 0-d, or strided or broadcast along the dimension its copy
  loop runs innermost (see :func:`_torch_converts_one_by_one`).
* ``rounding="fbgemm"`` is FBGEMM's ``FloatToBfloat16``: ``(bits + 0x8000) >> 16`` on the raw
  uint32, i.e. ties away from zero, and no NaN handling (some NaNs become inf or +0, exactly as
  in FBGEMM).
"""

from __future__ import annotations

import numpy as np

from embzip.lowprec._validate import choice

__all__ = ["to_fp16", "to_bf16", "bf16_bits", "bf16_to_f32"]

_ROUNDINGS = ("rne", "fbgemm")


def _as_f32(x, name="x") -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise TypeError(f"{name} must be a real numeric array, found dtype {arr.dtype}")
    # float64 and integers are first rounded to float32: the casts are defined on float32
    return np.asarray(arr, dtype=np.float32, order="C")  # keeps 0-d arrays 0-d


def _torch_converts_one_by_one(arr: np.ndarray) -> bool:
    """Whether torch's CPU copy into bfloat16 runs its scalar loop for a tensor laid out as
    ``arr``: its vectorized loop needs the dimension it runs innermost one element apart.

    ``Tensor.to`` makes the output dense in the input's order of dimensions (its strides if
    dense, else ``infer_dense_strides``), and TensorIterator runs the output's innermost
    dimension innermost. That order is an insertion sort of the dimensions by stride (the
    smallest first; a stride of 0, broadcast, compares as neither; equal strides put the
    smaller size first), starting from the last dimension innermost; dimensions of size 1 are
    coalesced away. 0-d tensors take the scalar loop.
    """
    if arr.ndim == 0:
        return True
    strides, sizes = arr.strides, arr.shape

    def after(d0, d1) -> int:  # 1: d0 goes after (outside) d1; -1: before; 0: either
        s0, s1 = strides[d0], strides[d1]
        if s0 == 0 or s1 == 0:
            return 0
        if s0 != s1:
            return -1 if s0 < s1 else 1
        return 1 if sizes[d0] > sizes[d1] else 0

    perm = list(range(arr.ndim - 1, -1, -1))  # innermost first
    for i in range(1, len(perm)):
        d1 = i
        for d0 in range(i - 1, -1, -1):
            order = after(perm[d0], perm[d1])
            if order > 0:
                perm[d0], perm[d1] = perm[d1], perm[d0]
                d1 = d0
            elif order < 0:
                break
    inner = next((d for d in perm if sizes[d] > 1), None)
    return inner is not None and strides[inner] != arr.itemsize


def to_fp16(x) -> np.ndarray:
    """Round to IEEE half, bit-identical to torch's ``Tensor.half()`` on CPU.

    Parameters
    ----------
    x : array_like of float32 (other real dtypes are first converted to float32)

    Returns
    -------
    ndarray of float16, same shape

    Examples
    --------
    >>> import numpy as np
    >>> to_fp16(np.array([1.0, 65519.0, 65520.0, 1e-8], dtype=np.float32)).tolist()
    [1.0, 65504.0, inf, 0.0]
    """
    a = _as_f32(x)
    with np.errstate(over="ignore"):
        h = a.astype(np.float16)  # numpy rounds to nearest even, overflow -> inf, like F16C
    nan = np.isnan(a)
    if nan.any():
        # F16C keeps the sign and the top 10 payload bits and sets the quiet bit; numpy does not
        u = a.view(np.uint32)[nan]
        sign = (u >> np.uint32(16)) & np.uint32(0x8000)
        payload = (u >> np.uint32(13)) & np.uint32(0x3FF)
        h.view(np.uint16)[nan] = sign | np.uint32(0x7E00) | payload
    return h


def bf16_bits(x, rounding: str = "rne") -> np.ndarray:
    """bfloat16 bit patterns of ``x`` (uint16).

    Parameters
    ----------
    x : array_like of float32 (other real dtypes are first converted to float32)
    rounding : {"rne", "fbgemm"}
        ``"rne"``: round to nearest even, NaN -> 0xFFFF (torch CPU; 0x7FC0 where torch takes
        its scalar path, for ``torch.from_numpy(x)`` laid out as ``x``: a 0-d array, a strided
        slice such as ``x[::2]`` or a broadcast one). ``"fbgemm"``: FBGEMM's
        add-0x8000-and-shift rounding (ties away from zero, NaN not special-cased).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([1.00390625, 1.01171875, np.nan], dtype=np.float32)  # two ties, NaN
    >>> [hex(v) for v in bf16_bits(x)]
    ['0x3f80', '0x3f82', '0xffff']
    >>> [hex(v) for v in bf16_bits(x, rounding="fbgemm")]
    ['0x3f81', '0x3f82', '0x7fc0']
    """
    choice(rounding, "rounding", _ROUNDINGS)
    one_by_one = _torch_converts_one_by_one(np.asarray(x))
    a = _as_f32(x)
    u = a.view(np.uint32).astype(np.uint64)  # 64-bit: the adds below may carry past 2**32
    if rounding == "fbgemm":
        return np.asarray(((u + 0x8000) & 0xFFFFFFFF) >> 16, dtype=np.uint16)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = 0x7FC0 if one_by_one else 0xFFFF
    return np.asarray(np.where(np.isnan(a), nan, r), dtype=np.uint16)


def bf16_to_f32(bits) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (exact: the bits become the high half).

    Examples
    --------
    >>> import numpy as np
    >>> bf16_to_f32(np.array([0x3F80, 0xC000], dtype=np.uint16))
    array([ 1., -2.], dtype=float32)
    """
    b = np.asarray(bits)
    if b.dtype != np.uint16:
        raise TypeError(f"bits must be a uint16 array, found dtype {b.dtype}")
    return np.asarray(b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def to_bf16(x, rounding: str = "rne") -> np.ndarray:
    """Round to bfloat16 and return the values as float32 (torch: ``x.to(bfloat16).float()``).

    Parameters
    ----------
    x : array_like of float32 (other real dtypes are first converted to float32)
    rounding : {"rne", "fbgemm"}
        See :func:`bf16_bits`.

    Examples
    --------
    >>> import numpy as np
    >>> to_bf16(np.array([3.14159265, 3.4e38, -1e-40], dtype=np.float32))
    array([ 3.140625e+00,           inf, -9.183550e-41], dtype=float32)
    """
    return bf16_to_f32(bf16_bits(x, rounding))
