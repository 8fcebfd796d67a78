"""Rowwise embedding quantization in FBGEMM's fused layouts (``embedding_bag_*_prepack``).

Layouts (one packed row per table row, little-endian):

* ``bits=8``: ``dim`` uint8 codes, then fp32 scale, then fp32 bias (``dim + 8`` bytes).
* ``bits=4`` / ``bits=2``: ``ceil(dim / (8 // bits))`` bytes of codes, element ``j`` in bits
  ``(j % per_byte) * bits`` of byte ``j // per_byte``, then fp16 scale, then fp16 bias.

Decoding is ``code * scale + bias`` with one rounding (an FMA), as torch's unpack does.
"""

from __future__ import annotations

import numpy as np

from embzip.lowprec import _rowwise_kernels as _k
from embzip.lowprec._validate import check_bits, count, float_matrix, uint8_matrix

__all__ = ["quantize_rowwise", "dequantize_rowwise", "packed_row_bytes", "packed_dim"]


def packed_row_bytes(dim: int, bits: int) -> int:
    """Bytes per packed row for an embedding dimension ``dim``.

    Examples
    --------
    >>> packed_row_bytes(64, 8), packed_row_bytes(64, 4), packed_row_bytes(5, 2)
    (72, 36, 6)
    """
    bits = check_bits(bits)
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 0:
        raise ValueError(f"dim must be a non-negative integer, found {dim!r}")
    if bits == 8:
        return int(dim) + 8
    per_byte = 8 // bits
    return (int(dim) + per_byte - 1) // per_byte + 4


def packed_dim(row_bytes: int, bits: int, dim=None) -> int:
    """The embedding dimension a packed row of ``row_bytes`` bytes holds.

    For 4/2-bit rows several dims share one byte count; ``dim=None`` takes the largest (what
    torch's ``embedding_bag_4bit_unpack`` returns), an explicit ``dim`` is checked against it.

    Examples
    --------
    >>> packed_dim(72, 8), packed_dim(36, 4), packed_dim(6, 2, dim=5)
    (64, 64, 5)
    """
    bits = check_bits(bits)
    row_bytes = count(row_bytes, "row_bytes")
    overhead = 8 if bits == 8 else 4
    if row_bytes < overhead:
        raise ValueError(
            f"a {bits}-bit packed row needs at least {overhead} bytes (scale and bias), "
            f"found {row_bytes}"
        )
    per_byte = 1 if bits == 8 else 8 // bits
    full = (row_bytes - overhead) * per_byte
    if dim is None:
        return full
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be an integer or None, found {type(dim).__name__}")
    if packed_row_bytes(int(dim), bits) != row_bytes if dim >= 0 else True:
        lo = full - per_byte + 1 if full else 0
        raise ValueError(
            f"dim={dim} does not fit {bits}-bit rows of {row_bytes} bytes; "
            f"expected a dim in [{lo}, {full}]"
        )
    return int(dim)


def quantize_rowwise(table, bits: int = 8) -> np.ndarray:
    """Quantize each row to ``bits`` bits, byte-identical to torch's embedding prepack ops.

    ``bits=8`` matches ``torch.ops.quantized.embedding_bag_byte_prepack`` (scale =
    (max - min) / 255, bias = min, code = lrint((x - min) * 255 / (range + 1e-8)));
    ``bits=4`` / ``2`` match ``embedding_bag_4bit_prepack`` / ``_2bit_prepack`` (bias = min
    rounded to fp16, scale = range / 15 or / 3 rounded to fp16, codes clamped).

    Parameters
    ----------
    table : ndarray of float32 or float16, shape (rows, dim)
        Any finite or non-finite values; rows with NaN or inf are packed exactly as FBGEMM's AVX2
        kernel packs them (see docs/lowprec.md).
    bits : {8, 4, 2}

    Returns
    -------
    ndarray of uint8, shape (rows, packed_row_bytes(dim, bits))
        torch refuses 4-bit (2-bit) tables whose dim is not a multiple of 2 (4); those are packed
        with FBGEMM's reference layout (last byte partly used, spare bits zero).

    Examples
    --------
    >>> import numpy as np
    >>> t = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    >>> p = quantize_rowwise(t, bits=8)
    >>> p[0, :3].tolist(), p[0, 3:].view(np.float32).tolist()
    ([0, 128, 255], [0.003921568859368563, 0.0])
    >>> dequantize_rowwise(p, bits=8)
    array([[0.       , 0.5019608, 1.       ]], dtype=float32)
    """
    bits = check_bits(bits)
    w = float_matrix(table, "table")
    n, d = w.shape
    out = np.empty((n, packed_row_bytes(d, bits)), dtype=np.uint8)
    if n == 0:
        return out
    if bits == 8:
        _k.quantize8_kernel(w, out)
    else:
        _k.QUANTIZE_NBIT[bits](w, out)
    return out


def dequantize_rowwise(packed, bits: int = 8, dim=None) -> np.ndarray:
    """Decode packed rows to float32, bit-identical to torch's ``embedding_bag_*_unpack``.

    Parameters
    ----------
    packed : ndarray of uint8, shape (rows, row_bytes)
    bits : {8, 4, 2}
    dim : int, optional
        Embedding dimension; by default the largest the row holds (torch's convention).

    Returns
    -------
    ndarray of float32, shape (rows, dim)

    Examples
    --------
    >>> import numpy as np
    >>> t = np.linspace(-1, 1, 8, dtype=np.float32)[None, :]
    >>> dequantize_rowwise(quantize_rowwise(t, bits=4), bits=4).round(3)
    array([[-1.   , -0.733, -0.467, -0.2  ,  0.2  ,  0.466,  0.733,  1.   ]],
          dtype=float32)
    """
    bits = check_bits(bits)
    p = uint8_matrix(packed, "packed")
    d = packed_dim(p.shape[1], bits, dim)
    out = np.empty((p.shape[0], d), dtype=np.float32)
    if p.shape[0] == 0 or d == 0:
        return out
    if bits == 8:
        _k.dequantize8_kernel(p, out)
    else:
        _k.DEQUANTIZE_NBIT[bits](p, out)
    return out
