"""CRC32C (Castagnoli) kernel, slicing-by-8.

Why CRC32C and not zlib's CRC32: it is the checksum hardware and storage formats use, and the
CUDA backend can compute the same value. Why our own kernel: runtime dependencies are numba
and numpy only, and the frame's payload checksum must be cheap next to the fast decoder.
"""

from __future__ import annotations

import numpy as np

from .._jit import kernel

_POLY = np.uint32(0x82F63B78)  # reflected Castagnoli polynomial


def _make_tables() -> np.ndarray:
    tables = np.zeros((8, 256), dtype=np.uint32)
    for byte in range(256):
        crc = np.uint32(byte)
        for _ in range(8):
            crc = (crc >> np.uint32(1)) ^ (_POLY if crc & np.uint32(1) else np.uint32(0))
        tables[0, byte] = crc
    for byte in range(256):
        crc = tables[0, byte]
        for k in range(1, 8):
            crc = (crc >> np.uint32(8)) ^ tables[0, crc & np.uint32(0xFF)]
            tables[k, byte] = crc
    return tables


CRC_TABLES = _make_tables()


@kernel
def crc32c_update(crc, data, tables):
    """Continue a CRC32C over ``data`` (uint8, any alignment); ``crc`` is the previous value."""
    c = np.uint32(crc) ^ np.uint32(0xFFFFFFFF)
    n = data.size
    i = 0
    while i + 8 <= n:
        lo = c ^ (np.uint32(data[i]) | (np.uint32(data[i + 1]) << np.uint32(8))
                  | (np.uint32(data[i + 2]) << np.uint32(16)) | (np.uint32(data[i + 3]) << np.uint32(24)))
        c = (tables[7, lo & np.uint32(0xFF)] ^ tables[6, (lo >> np.uint32(8)) & np.uint32(0xFF)]
             ^ tables[5, (lo >> np.uint32(16)) & np.uint32(0xFF)] ^ tables[4, lo >> np.uint32(24)]
             ^ tables[3, data[i + 4]] ^ tables[2, data[i + 5]]
             ^ tables[1, data[i + 6]] ^ tables[0, data[i + 7]])
        i += 8
    while i < n:
        c = (c >> np.uint32(8)) ^ tables[0, (c ^ np.uint32(data[i])) & np.uint32(0xFF)]
        i += 1
    return c ^ np.uint32(0xFFFFFFFF)
