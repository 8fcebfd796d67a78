"""The small serialized parts of a rANS section on the CUDA backend (twin of cpu/rans_table.py).

Frequency tables and chunk directories are a few bytes per 65,536 symbols, written and read
one varint after another: a GPU would run them on one thread. So the device encoder builds
them on the host from the histogram and the per-chunk byte counts (with the CPU kernels), and
the device decoder copies the section's head (header, table, directory) to the host, parses
it with the CPU stage's checks, and uploads the chunk bounds.
"""

from __future__ import annotations

import numpy as np

from ..cpu import rans_table as cpu_table
from ..stages import rans as host_rans

__all__ = ["parse_section"]

_TABLE_BYTES_PER_TOKEN = 16  # a valid table spends < 7 bytes a token (stages.rans allocates 16)
_MAX_VARINT = 5


def _head(frame, at: int, length: int, wanted: int) -> np.ndarray:
    end = at + min(length, wanted)
    head = frame[at:end].copy_to_host()
    head.flags.writeable = False  # the CPU kernels were compiled for read-only sections
    return head


def parse_section(frame, at: int, length: int, count: int):
    """Parse and check the section at ``frame[at:at + length]`` holding ``count >= 1`` symbols.

    Returns ``(KIND_CONSTANT, value)`` or ``(KIND_RANS, scale_bits, direct_bits, chunk_size,
    lanes, freqs, bounds)`` with ``bounds[chunk] = (rans_start, raw_start, raw_end)`` relative
    to the section. Raises CorruptFrameError with the CPU decoder's messages.
    """
    head = _head(frame, at, length, 3)
    kind = int(head[0])
    if kind == host_rans.KIND_CONSTANT:
        head = _head(frame, at, length, 1 + _MAX_VARINT + 1)
        value, end, status = cpu_table.read_varint(head, 1, head.size)
        if status != cpu_table.OK:
            raise host_rans._corrupt("constant value", "a well-formed varint", host_rans._STATUS_TEXT[status])
        if end != length:
            raise host_rans._corrupt("constant section length", end, length)
        return (kind, int(value))
    if kind != host_rans.KIND_RANS:
        raise host_rans._corrupt("section kind", f"{host_rans.KIND_CONSTANT} or {host_rans.KIND_RANS}", kind)
    scale_bits, direct_bits, chunk_log2, lanes = host_rans._parse_header(head)
    chunk_size = 1 << chunk_log2
    chunks = -(-count // chunk_size)
    alphabet = host_rans.alphabet_size(direct_bits)
    head = _head(frame, at, length, 3 + _TABLE_BYTES_PER_TOKEN * (alphabet + 2) + 2 * _MAX_VARINT * chunks)
    freqs, pos = host_rans._parse_table(head, scale_bits, direct_bits)
    min_bytes = chunks * (2 + 4 * lanes) - 1
    if length - pos < min_bytes:
        raise host_rans._corrupt(f"bytes left for {chunks} chunks", f">= {min_bytes}", length - pos)
    directory = np.empty(2 * chunks, np.int64)
    pos, status = cpu_table.read_varints(head, pos, head.size, directory[:-1])
    if status != cpu_table.OK:
        raise host_rans._corrupt("chunk directory", "well-formed varints", host_rans._STATUS_TEXT[status])
    directory[-1] = length - pos - directory[:-1].sum()
    raw_bytes, rans_bytes = directory[0::2], directory[1::2]
    bad = np.flatnonzero((rans_bytes < 4 * lanes) | (rans_bytes % 2 != 0))
    if bad.size:
        chunk = int(bad[0])
        raise host_rans._corrupt(f"rANS byte count of chunk {chunk} of {chunks}", f"even and >= {4 * lanes}",
                                 int(rans_bytes[chunk]))
    bounds = np.empty((chunks, 3), np.int64)
    bounds[:, 0] = pos + np.concatenate(([0], np.cumsum(rans_bytes + raw_bytes)[:-1]))
    bounds[:, 1] = bounds[:, 0] + rans_bytes
    bounds[:, 2] = bounds[:, 1] + raw_bytes
    return (kind, scale_bits, direct_bits, chunk_size, lanes, freqs, bounds)
