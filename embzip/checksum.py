"""CRC32C of byte buffers: parallel chunk CRCs joined with the standard combine."""

from __future__ import annotations

import numpy as np

from .cpu.checksum import CRC_TABLES, combine_chunks, crc32c_chunks, crc32c_update

__all__ = ["crc32c"]

_POLY = 0x82F63B78
_CHUNK = 1 << 20  # below two chunks the serial kernel is as fast


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (reflected bit order)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table():
    table, p = [], 1 << 30  # x**1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()


def _shift_operator(nbytes: int) -> int:
    """x**(8 * nbytes) mod P: multiplying a CRC by it moves the CRC past nbytes of data."""
    p, k = 1 << 31, 3
    while nbytes:
        if nbytes & 1:
            p = _multmodp(_X2N[k & 31], p)
        nbytes >>= 1
        k += 1
    return p


_CHUNK_SHIFT = _shift_operator(_CHUNK)


def crc32c(data, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of a bytes-like object, optionally continuing ``crc``.

    Examples
    --------
    >>> hex(crc32c(b"123456789"))
    '0xe3069283'
    >>> crc32c(b"56789", crc32c(b"1234")) == crc32c(b"123456789")
    True
    """
    if type(data) is np.ndarray and data.dtype == np.uint8 and data.ndim == 1 and data.flags.c_contiguous:
        buf = data  # the frames' own case: skip the memoryview round trip (~1 us a call)
    else:
        buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    if buf.size < 2 * _CHUNK:
        return int(crc32c_update(np.uint32(crc), buf, CRC_TABLES))
    crcs = np.empty(-(-buf.size // _CHUNK), dtype=np.uint32)
    crc32c_chunks(buf, _CHUNK, CRC_TABLES, crcs)
    last_shift = _shift_operator(buf.size - (crcs.size - 1) * _CHUNK)
    return int(combine_chunks(np.uint32(crc), crcs, np.uint32(_CHUNK_SHIFT), np.uint32(last_shift)))
