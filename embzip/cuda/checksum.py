"""CRC32C of device buffers (CUDA twin of cpu/checksum.py), and the frame header's two CRCs.

Each thread checksums one chunk of ``4 * CRC_CHUNK_WORDS`` bytes with slicing-by-8 (tables in
shared memory), then moves its CRC to the end of the buffer by multiplying it with
``x**(8 * bytes after the chunk) mod P`` and XORs it into one accumulator. CRC combination is
linear (``crc(A + B) = crc(A) * x**(8|B|) + crc(B)`` over GF(2), what zlib's crc32_combine and
embzip.checksum compute), so the XOR of every chunk's moved CRC is the CRC of the whole
buffer, in any order: no second pass, no ordering between blocks, one atomic per chunk.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, int64, uint8, uint32

from ..checksum import _X2N
from ..cpu.checksum import CRC_TABLES
from ._launch import CRC_CHUNK_WORDS, device, kernel

__all__ = ["crc_chunks", "finish_header", "device_tables"]

_POLY = 0x82F63B78
_TABLE_WORDS = 8 * 256
_tables = {}  # device id -> the tables there


def device_tables():
    """(slicing tables, x**(2**k) table) on the current device, uploaded once per device.

    Why per device: a process that switches GPUs would otherwise launch kernels reading the
    first GPU's memory, an illegal address without peer access (fatal to the context)."""
    key = getattr(cuda.get_current_device(), "id", 0)  # (the simulator's device has no id)
    tables = _tables.get(key)
    if tables is None:
        tables = _tables[key] = (cuda.to_device(CRC_TABLES.reshape(-1).astype(np.uint32)),
                                 cuda.to_device(np.array(_X2N, dtype=np.uint32)))
    return tables


@device
def multmodp(a, b):
    """a * b modulo the CRC32C polynomial, reflected bit order (as embzip.checksum)."""
    a = int64(a)
    b = int64(b)
    m = int64(1) << 31
    p = int64(0)
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


@device
def shift_operator(nbytes, x2n):
    """x**(8 * nbytes) mod P: multiplying a CRC by it moves the CRC past nbytes of zeros."""
    p = int64(1) << 31
    k = 3
    while nbytes:
        if nbytes & 1:
            p = multmodp(x2n[k & 31], p)
        nbytes >>= 1
        k += 1
    return p


@device
def _t(tables, k, index):
    return int64(tables[k * 256 + index])


@kernel
def crc_chunks(words, data, start, n, tables, x2n, result):
    """XOR into ``result[0]`` the CRC32C of ``data[start:start + n]`` (``start % 4 == 0``).

    ``words`` is ``data`` viewed as uint32 (its whole-word prefix). ``result`` must start at 0.
    """
    table = cuda.shared.array(_TABLE_WORDS, uint32)
    for k in range(cuda.threadIdx.x, _TABLE_WORDS, cuda.blockDim.x):
        table[k] = tables[k]
    cuda.syncthreads()
    chunk_bytes = 4 * CRC_CHUNK_WORDS
    end = start + n
    chunks = (n + chunk_bytes - 1) // chunk_bytes
    for chunk in range(cuda.grid(1), chunks, cuda.gridsize(1)):
        b0 = start + chunk * chunk_bytes
        b1 = min(b0 + chunk_bytes, end)
        w1 = b1 // 4
        c = int64(0xFFFFFFFF)
        i = b0 // 4
        while i + 2 <= w1:
            lo = c ^ int64(words[i])
            hi = int64(words[i + 1])
            c = (_t(table, 7, lo & 0xFF) ^ _t(table, 6, (lo >> 8) & 0xFF)
                 ^ _t(table, 5, (lo >> 16) & 0xFF) ^ _t(table, 4, lo >> 24)
                 ^ _t(table, 3, hi & 0xFF) ^ _t(table, 2, (hi >> 8) & 0xFF)
                 ^ _t(table, 1, (hi >> 16) & 0xFF) ^ _t(table, 0, hi >> 24))
            i += 2
        if i < w1:
            lo = c ^ int64(words[i])
            c = (_t(table, 3, lo & 0xFF) ^ _t(table, 2, (lo >> 8) & 0xFF)
                 ^ _t(table, 1, (lo >> 16) & 0xFF) ^ _t(table, 0, lo >> 24))
        for p in range(4 * w1, b1):
            c = (c >> 8) ^ _t(table, 0, (c ^ int64(data[p])) & 0xFF)
        c ^= 0xFFFFFFFF
        moved = multmodp(shift_operator(end - b1, x2n), c)
        cuda.atomic.xor(result, 0, uint32(moved))


@device
def _put_u32(frame, at, value):
    for k in range(4):
        frame[at + k] = uint8((value >> (8 * k)) & 0xFF)


@kernel
def finish_header(frame, head, header_length, crc_at, payload_crc, tables):
    """Copy the header (``head``, payload CRC 0) in, write ``payload_crc[0]`` at ``crc_at``,
    then the header CRC over ``frame[:header_length - 4]``."""
    if cuda.grid(1) != 0:
        return
    for p in range(header_length):
        frame[p] = head[p]
    _put_u32(frame, crc_at, int64(payload_crc[0]))
    c = int64(0xFFFFFFFF)
    for p in range(header_length - 4):
        c = (c >> 8) ^ int64(tables[(c ^ int64(frame[p])) & 0xFF])
    _put_u32(frame, header_length - 4, c ^ 0xFFFFFFFF)
