"""Per-block fixed-width bit-packing of uint32 streams (the "fast" encoder).

Full blocks use a lane-interleaved ("vertical") layout so that every shift is the same for
all lanes and the inner loop is SIMD: a block holds ``32 * LANES`` values, value ``j`` sits in
lane ``j % LANES``, row ``j // LANES``; each lane is a little-endian bit stream of 32 values of
``w`` bits packed into ``w`` uint32 words, and word ``k`` of every lane is stored together
(words ``k*LANES .. k*LANES+LANES-1``). A block is ``4 * LANES * w`` bytes. The last, partial
block is a plain little-endian bit stream of ``ceil(len * w / 8)`` bytes.
"""

from __future__ import annotations

import numpy as np

from .._jit import kernel, parallel_kernel, prange

LANES = 8
BLOCK_SIZE = 32 * LANES


@parallel_kernel
def block_widths(values, block_size, widths):
    """``widths[b]`` = bit length of the largest value in block ``b`` (last may be partial)."""
    n = values.size
    for b in prange(widths.size):
        start = b * block_size
        stop = min(start + block_size, n)
        acc = np.uint32(0)
        for i in range(start, stop):
            acc |= values[i]
        width = 0
        while acc:
            acc >>= np.uint32(1)
            width += 1
        widths[b] = width


@kernel
def block_word_offsets(widths, word_offsets):
    """``word_offsets[b + 1] = word_offsets[b] + LANES * widths[b]`` for the first
    ``word_offsets.size - 1`` blocks (``word_offsets[0] = 0``); return the largest of all
    ``widths`` (for the caller's validation). One call instead of four numpy ops: the
    geometry of a section is needed on every encode and decode, small frames included."""
    word_offsets[0] = 0
    total = np.int64(0)
    for b in range(word_offsets.size - 1):
        total += np.int64(widths[b]) * LANES
        word_offsets[b + 1] = total
    largest = 0
    for b in range(widths.size):
        largest = max(largest, np.int64(widths[b]))
    return largest


@kernel(inline="always")
def pack_one_block(codes, width, base, words):
    """Pack the 256 values of ``codes`` with ``width`` bits into ``words[base:base + 8*width]``."""
    w = np.uint32(width)
    for k in range(width * LANES):
        words[base + k] = 0
    if w == 0:
        return
    for r in range(32):
        bit = np.uint32(r) * w
        k = base + np.int64(bit >> np.uint32(5)) * LANES
        shift = bit & np.uint32(31)
        if shift + w > 32:  # the value continues in the lane's next word
            for lane in range(LANES):
                v = codes[r * LANES + lane]
                words[k + lane] |= v << shift
                # two shifts: a single shift by 32 - shift would be undefined for shift 0
                words[k + LANES + lane] |= (v >> np.uint32(1)) >> (np.uint32(31) - shift)
        else:
            for lane in range(LANES):
                words[k + lane] |= codes[r * LANES + lane] << shift


@parallel_kernel
def pack_full_blocks(values, widths, word_offsets, words):
    """Pack each full block ``b`` into ``words[word_offsets[b]:][:LANES * widths[b]]``."""
    for b in prange(widths.size):
        start = b * BLOCK_SIZE
        pack_one_block(values[start:start + BLOCK_SIZE], widths[b], word_offsets[b], words)


def _make_unpack_full(dequantize, cast):
    @parallel_kernel
    def unpack_full_blocks(words, widths, word_offsets, step, out):
        # Inputs were validated: block b's words lie inside words[word_offsets[b]:word_offsets[b+1]].
        for b in prange(widths.size):
            w = np.uint32(widths[b])
            base = word_offsets[b]
            start = b * BLOCK_SIZE
            mask = np.uint32((np.uint64(1) << np.uint64(w)) - np.uint64(1))
            if w == 0:
                for j in range(BLOCK_SIZE):
                    out[start + j] = 0
                continue
            for r in range(32):
                bit = np.uint32(r) * w
                k = base + np.int64(bit >> np.uint32(5)) * LANES
                shift = bit & np.uint32(31)
                row = start + r * LANES
                if shift + w > 32:  # the value continues in the lane's next word
                    for lane in range(LANES):
                        v = ((words[k + lane] >> shift)
                             | ((words[k + LANES + lane] << np.uint32(1)) << (np.uint32(31) - shift))) & mask
                        if dequantize:
                            z = np.int64(v)
                            out[row + lane] = cast((z >> 1) ^ -(z & 1)) * step
                        else:
                            out[row + lane] = v
                else:
                    for lane in range(LANES):
                        v = (words[k + lane] >> shift) & mask
                        if dequantize:
                            z = np.int64(v)
                            out[row + lane] = cast((z >> 1) ^ -(z & 1)) * step
                        else:
                            out[row + lane] = v

    return unpack_full_blocks


unpack_full_codes = _make_unpack_full(False, np.float64)
unpack_full_dequantize_f32 = _make_unpack_full(True, np.float32)
unpack_full_dequantize_f64 = _make_unpack_full(True, np.float64)


@kernel
def pack_tail(values, width, out):
    """Pack ``values`` as a plain little-endian bit stream of ``width``-bit fields into ``out``."""
    acc = np.uint64(0)
    filled = np.uint64(0)
    pos = 0
    w = np.uint64(width)
    for i in range(values.size):
        acc |= np.uint64(values[i]) << filled
        filled += w
        while filled >= 8:
            out[pos] = np.uint8(acc & np.uint64(0xFF))
            pos += 1
            acc >>= np.uint64(8)
            filled -= np.uint64(8)
    if filled > 0:
        out[pos] = np.uint8(acc & np.uint64(0xFF))


def _make_unpack_tail(dequantize, cast):
    @kernel
    def unpack_tail(data, width, step, out):
        # data holds exactly ceil(out.size * width / 8) bytes (validated by the caller).
        acc = np.uint64(0)
        avail = np.uint64(0)
        pos = 0
        w = np.uint64(width)
        mask = (np.uint64(1) << w) - np.uint64(1)
        for i in range(out.size):
            while avail < w:
                acc |= np.uint64(data[pos]) << avail
                pos += 1
                avail += np.uint64(8)
            v = acc & mask
            acc >>= w
            avail -= w
            if dequantize:
                z = np.int64(v)
                out[i] = cast((z >> 1) ^ -(z & 1)) * step
            else:
                out[i] = np.uint32(v)

    return unpack_tail


unpack_tail_codes = _make_unpack_tail(False, np.float64)
unpack_tail_dequantize_f32 = _make_unpack_tail(True, np.float32)
unpack_tail_dequantize_f64 = _make_unpack_tail(True, np.float64)
