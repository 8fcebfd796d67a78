"""CRC32C of byte buffers (wrapper around the numba kernel)."""

from __future__ import annotations

import numpy as np

from .cpu.checksum import CRC_TABLES, crc32c_update

__all__ = ["crc32c"]


def crc32c(data, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of a bytes-like object, optionally continuing ``crc``.

    Examples
    --------
    >>> hex(crc32c(b"123456789"))
    '0xe3069283'
    """
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    return int(crc32c_update(np.uint32(crc), buf, CRC_TABLES))
