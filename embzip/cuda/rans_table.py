"""The small serialized parts of a rANS section on the CUDA backend (twin of cpu/rans_table.py).

Frequency tables and chunk directories are a few bytes per 65,536 symbols, written and read
one varint after another: a GPU would run them on one thread. So the device encoder builds
them on the host from the histogram and the per-chunk byte counts (with the CPU kernels), and
the device decoder copies the section's head (header, table, directory) to the host, parses
it with the CPU stage's checks, and uploads the chunk bounds.
"""

from __future__ import annotations

import numpy as np

from ..stages.rans import _section as section

__all__ = ["parse_section"]

_TABLE_BYTES_PER_TOKEN = 16  # a valid table spends < 7 bytes a token (stages.rans._encoder allocates 16)


#: Bytes of a section's head copied to the host at first: enough for a full 280-token table and
#: a directory of ~80 chunks (5 million symbols), so one copy serves almost every section.
_FIRST_COPY = 8192


def _head(frame, at: int, length: int, wanted: int) -> np.ndarray:
    end = at + min(length, wanted)
    head = frame[at:end].copy_to_host()
    head.flags.writeable = False  # the CPU kernels were compiled for read-only sections
    return head


def parse_section(frame, at: int, length: int, count: int):
    """Parse and check the section at ``frame[at:at + length]`` holding ``count >= 1`` symbols.

    Returns ``(KIND_CONSTANT, value)`` or ``(KIND_RANS, scale_bits, direct_bits, chunk_size,
    lanes, freqs, bounds)`` with ``bounds[chunk] = (rans_start, raw_start, raw_end)`` relative
    to the section. Raises CorruptFrameError with the CPU decoder's messages. One host copy
    (two when the head is longer than 8 KiB).
    """
    head = _head(frame, at, length, _FIRST_COPY)
    kind = section.check_kind(int(head[0]))
    if kind == section.KIND_CONSTANT:
        return (kind, section.parse_constant(head[:1 + section.MAX_VARINT_BYTES + 1], length))
    scale_bits, direct_bits, chunk_log2, lanes = section.parse_header(head[:3])
    chunk_size = 1 << chunk_log2
    chunks = -(-count // chunk_size)
    alphabet = section.alphabet_size(direct_bits)
    wanted = 3 + _TABLE_BYTES_PER_TOKEN * (alphabet + 2) + 2 * section.MAX_VARINT_BYTES * chunks
    if min(length, wanted) > head.size:
        head = _head(frame, at, length, wanted)
    head = head[:min(length, wanted)]
    freqs, pos = section.parse_table(head, scale_bits, direct_bits)
    bounds = section.parse_directory(head, pos, length, chunks, lanes)
    return (kind, scale_bits, direct_bits, chunk_size, lanes, freqs, bounds)
