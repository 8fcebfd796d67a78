"""The "fast" encoder: per-block fixed-width bit-packing of uint32 code streams.

Section layout (normative in docs/format.md)::

    u32  block_size        32 * lanes; this version writes and reads 256 (8 lanes)
    u8   widths[nblocks]   bit width of each block, 0..32; nblocks = ceil(count / block_size)
    u8   padding[...]      zero bytes up to a multiple of 4 (words stay 4-byte aligned in a frame)
    u32  words[...]        the full blocks, 8 * widths[b] little-endian words each, lane-interleaved
    u8   tail[...]         the last partial block (if any): ceil(len * width / 8) bytes, plain bit stream
"""

from __future__ import annotations

import numpy as np

from .._jit import for_size
from ..cpu import bitpack as kernels
from ..errors import CorruptFrameError

__all__ = ["BLOCK_SIZE", "encode", "decode", "plan", "words_offset", "section_size", "write_head"]

BLOCK_SIZE = kernels.BLOCK_SIZE
_BLOCK_SIZE_BYTES = np.frombuffer(int(BLOCK_SIZE).to_bytes(4, "little"), dtype=np.uint8)


def geometry(count: int, widths: np.ndarray):
    """(full block count, tail length, word offsets of full blocks, tail byte length)."""
    full = count // BLOCK_SIZE
    tail_len = count - full * BLOCK_SIZE
    word_offsets = np.empty(full + 1, dtype=np.int64)
    kernels.block_word_offsets(widths, word_offsets)
    tail_bytes = (tail_len * int(widths[full]) + 7) // 8 if tail_len else 0
    return full, tail_len, word_offsets, tail_bytes


def _size_of(widths: np.ndarray, word_offsets: np.ndarray, tail_bytes: int) -> int:
    return words_offset(widths.size) + 4 * int(word_offsets[-1]) + tail_bytes


def words_offset(nblocks: int) -> int:
    """Byte offset of the packed words in a section: header, widths, zero padding."""
    return (4 + nblocks + 3) & ~3


def section_size(count: int, widths: np.ndarray) -> int:
    """Exact section size for ``count`` values with these block widths."""
    _, _, word_offsets, tail_bytes = geometry(count, widths)
    return _size_of(widths, word_offsets, tail_bytes)


def write_head(section: np.ndarray, widths: np.ndarray) -> int:
    """Write block size, widths and padding into ``section``; return the words offset."""
    head = words_offset(widths.size)
    section[:4] = _BLOCK_SIZE_BYTES
    section[4:4 + widths.size] = widths
    section[4 + widths.size:head] = 0
    return head


def plan(values: np.ndarray):
    """Block widths and the exact encoded size of ``values`` in bytes, without packing.

    Returns ``(widths, size)``; pass ``widths`` to :func:`encode` to skip recomputing them.
    """
    nblocks = -(-values.size // BLOCK_SIZE)
    widths = np.empty(nblocks, dtype=np.uint8)
    for_size(kernels.block_widths, values.nbytes)(values, BLOCK_SIZE, widths)
    return widths, section_size(values.size, widths)


def encode(values: np.ndarray, widths=None) -> np.ndarray:
    """Bit-pack a uint32 stream into a self-describing section (uint8 array).

    Examples
    --------
    >>> import numpy as np
    >>> codes = np.arange(1000, dtype=np.uint32)
    >>> section = encode(codes)
    >>> bool((decode(section, 1000) == codes).all())
    True
    """
    values = np.ascontiguousarray(values, dtype=np.uint32)
    if widths is None:  # plan() without its size: the geometry below gives it
        widths = np.empty(-(-values.size // BLOCK_SIZE), dtype=np.uint8)
        for_size(kernels.block_widths, values.nbytes)(values, BLOCK_SIZE, widths)
    full, tail_len, word_offsets, tail_bytes = geometry(values.size, widths)
    out = np.empty(_size_of(widths, word_offsets, tail_bytes), dtype=np.uint8)
    head = write_head(out, widths)
    nwords = int(word_offsets[-1])
    words = out[head:head + 4 * nwords].view(np.uint32)  # aligned: fresh array, head % 4 == 0
    for_size(kernels.pack_full_blocks, values.nbytes)(values, widths[:full], word_offsets, words)
    if tail_len:
        kernels.pack_tail(values[full * BLOCK_SIZE:], int(widths[full]), out[head + 4 * nwords:])
    return out


def _layout(section: np.ndarray, count: int):
    """Validate a section against ``count``; return (widths, full, word_offsets, head, tail_bytes)."""
    if section.size < 4:
        raise CorruptFrameError(f"bit-packed section is {section.size} bytes, shorter than its 4-byte header")
    block_size = int.from_bytes(section[:4].tobytes(), "little")
    if block_size != BLOCK_SIZE:
        raise CorruptFrameError(f"bit-packed block size is {block_size}, expected {BLOCK_SIZE}")
    nblocks = -(-count // BLOCK_SIZE)
    head = words_offset(nblocks)
    if section.size < head:
        raise CorruptFrameError(f"bit-packed section is {section.size} bytes, its width table needs {head}")
    widths = section[4:4 + nblocks].copy()
    if any(section[4 + nblocks:head].tobytes()):  # at most 3 bytes: no numpy reduction
        raise CorruptFrameError("bit-packed width table padding is not zero")
    # One kernel call gives the word offsets and the largest width (checked before any use).
    full = count // BLOCK_SIZE
    word_offsets = np.empty(full + 1, dtype=np.int64)
    largest = kernels.block_word_offsets(widths, word_offsets)
    if largest > 32:
        raise CorruptFrameError(f"bit width {largest} exceeds 32")
    tail_len = count - full * BLOCK_SIZE
    tail_bytes = (tail_len * int(widths[full]) + 7) // 8 if tail_len else 0
    expected = head + 4 * int(word_offsets[-1]) + tail_bytes
    if expected != section.size:
        raise CorruptFrameError(f"bit-packed section is {section.size} bytes, its widths say {expected}")
    return widths, full, word_offsets, head, tail_bytes


def _aligned_words(raw: np.ndarray) -> np.ndarray:
    """The words as a native uint32 array: a view when aligned, else a copy (cheap next to
    the output, and numba kernels want aligned data). Always read-only, so that numba
    compiles one specialization whatever the frame's alignment and writability."""
    # __array_interface__, not .ctypes: building the ctypes helper costs ~2 us per call.
    if raw.__array_interface__["data"][0] % 4 == 0 and np.little_endian:
        words = raw.view(np.uint32)  # a new view: marking it read-only leaves ``raw`` alone
        words.flags.writeable = False
        return words
    words = np.frombuffer(raw.tobytes(), dtype="<u4")  # read-only: it wraps bytes
    if not np.little_endian:
        words = words.astype(np.uint32)
        words.flags.writeable = False
    return words


def decode(section: np.ndarray, count: int, out=None, step=None) -> np.ndarray:
    """Unpack ``count`` values; with ``step`` (a numpy float32/float64 scalar), dequantize too.

    Without ``step`` the result is the uint32 stream; with it, ``out`` (or a new array of
    step's dtype) receives ``dtype(unzigzag(code)) * step``. Raises CorruptFrameError when the
    section does not match ``count``.
    """
    widths, full, word_offsets, head, tail_bytes = _layout(section, count)
    nwords = int(word_offsets[-1])
    words = _aligned_words(section[head:head + 4 * nwords])
    tail = section[head + 4 * nwords:]
    if step is None:
        if out is None:
            out = np.empty(count, dtype=np.uint32)
        for_size(kernels.unpack_full_codes, out.nbytes)(words, widths[:full], word_offsets, 0.0, out)
        if count > full * BLOCK_SIZE:
            kernels.unpack_tail_codes(tail, int(widths[full]), 0.0, out[full * BLOCK_SIZE:])
        return out
    if out is None:
        out = np.empty(count, dtype=step.dtype)
    f32 = out.dtype == np.float32
    unpack_full = for_size(kernels.unpack_full_dequantize_f32 if f32 else kernels.unpack_full_dequantize_f64,
                           out.nbytes)
    unpack_full(words, widths[:full], word_offsets, step, out)
    if count > full * BLOCK_SIZE:
        unpack_tail = kernels.unpack_tail_dequantize_f32 if f32 else kernels.unpack_tail_dequantize_f64
        unpack_tail(tail, int(widths[full]), step, out[full * BLOCK_SIZE:])
    return out
