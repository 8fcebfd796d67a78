"""Compact entropy coder: uint32 symbol stream <-> self-contained rANS byte section.

The section layout is normative and specified in ``docs/entropy.md``. The wrappers here
validate inputs and every length and offset of a section, allocate all arrays, and call the
kernels in :mod:`embzip.cpu.rans`, which trust what they are given.

- :mod:`._section`: layout constants and the checked readers of a section's head (shared
  with the device decoder, so both raise the same errors);
- :mod:`._encoder`: :func:`histogram`, :func:`estimate_size`, :func:`encode`;
- :mod:`._decoder`: :func:`decode`.
"""

from __future__ import annotations

from ._decoder import decode
from ._encoder import SymbolHistogram, _encode, encode, estimate_size, histogram
from ._section import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DIRECT_BITS,
    DEFAULT_MAX_SCALE_BITS,
    KIND_CONSTANT,
    KIND_RANS,
    MAX_DIRECT_BITS,
    MAX_SCALE_BITS,
    alphabet_size,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "SymbolHistogram",
    "histogram",
    "estimate_size",
    "encode",
    "decode",
]
