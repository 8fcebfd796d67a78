"""CRC32C (Castagnoli) kernel, slicing-by-8.

Why CRC32C and not zlib's CRC32: it is the checksum hardware and storage formats use, and the
CUDA backend can compute the same value. Why our own kernel: runtime dependencies are numba
and numpy only, and the frame's payload checksum must be cheap next to the fast decoder.
"""

from __future__ import annotations

import numpy as np

from .._jit import kernel, parallel_kernel, prange

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


@parallel_kernel
def crc32c_chunks(data, chunk_size, tables, crcs):
    """CRC32C of each ``chunk_size`` slice of ``data`` (the last may be shorter), in parallel."""
    for c in prange(crcs.size):
        start = c * chunk_size
        stop = min(start + chunk_size, data.size)
        crcs[c] = crc32c_update(np.uint32(0), data[start:stop], tables)


@kernel
def multmodp(a, b):
    """a * b modulo the CRC32C polynomial, reflected bit order (as in zlib's crc32_combine)."""
    a = np.uint32(a)
    b = np.uint32(b)
    m = np.uint32(1 << 31)
    p = np.uint32(0)
    while True:
        if a & m:
            p ^= b
            if a & (m - np.uint32(1)) == 0:
                return p
        m >>= np.uint32(1)
        b = (b >> np.uint32(1)) ^ np.uint32(0x82F63B78) if b & np.uint32(1) else b >> np.uint32(1)


@kernel
def combine_chunks(crc, crcs, chunk_shift, last_shift):
    """Fold chunk CRCs into ``crc``: every chunk but the last moves ``crc`` by ``chunk_shift``."""
    result = np.uint32(crc)
    for k in range(crcs.size):
        shift = chunk_shift if k + 1 < crcs.size else last_shift
        result = multmodp(shift, result) ^ crcs[k]
    return result
