"""Numba kernels of the compact (rANS) entropy coder.

The byte layout these kernels read and write is specified in ``docs/entropy.md``; the
wrapper :mod:`embzip.stages.rans` validates every length and offset and allocates every
array before a kernel runs.  Kernels never allocate and never raise on data: a decoder
kernel clamps each read to the chunk it decodes and reports inconsistencies through an
``errors`` array, so hostile bytes cannot make it read or write out of bounds or loop.

All arithmetic is on int64 values that provably fit (symbols < 2**32, states < 2**31,
``state * reciprocal < 2**63``): numba turns mixed signed/unsigned operands into float64,
which would silently break the bit-exactness a CUDA twin of these kernels must match.
"""

from __future__ import annotations

import numpy as np

from embzip._jit import kernel, parallel_kernel, prange
from embzip.cpu.rans_table import OK, bit_length

__all__ = [
    "STATE_LOW",
    "STATE_HIGH",
    "SUB_HISTOGRAMS",
    "chunk_histograms",
    "build_encoder_table",
    "encode_chunks",
    "assemble_chunks",
    "build_decoder_table",
    "decode_chunks",
]

# A normalized state lies in [STATE_LOW, STATE_HIGH) = [2**15, 2**31) and renormalizes by
# one 16-bit word.  Keeping states below 2**31 makes the encoder's reciprocal division
# exact with a 32x32->64-bit product (Giesen's rans_byte construction), and with a
# probability scale of at most 2**15 a symbol never needs more than one word.
STATE_LOW = 1 << 15
STATE_HIGH = 1 << 31
WORD_MASK = 0xFFFF

# Histogram counters per chunk: runs of one symbol (80% zeros) would otherwise chain every
# increment through one memory cell and stall on store-to-load forwarding.
SUB_HISTOGRAMS = 4

# Per-chunk status codes (after embzip.cpu.rans_table's; 0 is OK).
ERR_STATE_RANGE = 7  # a chunk's initial state is outside [STATE_LOW, STATE_HIGH)
ERR_RANS_LENGTH = 8  # the chunk's rANS words were not consumed exactly
ERR_FINAL_STATE = 9  # a lane did not end in STATE_LOW
ERR_RAW_LENGTH = 10  # the chunk's raw-bit bytes were not consumed exactly
ERR_RAW_PADDING = 11  # non-zero padding bits after the last raw bit


# ------------------------------------------------------------------------- histogram


@parallel_kernel
def chunk_histograms(symbols, chunk_size, direct_bits, counts, raw_bits):
    """Token counts per group of chunks and raw-bit totals per chunk.

    ``counts`` is a zeroed int64 array ``[groups, SUB_HISTOGRAMS, alphabet]``: group ``g``
    counts chunks ``g * per_group ..`` (contiguous), so memory does not grow with the
    chunk count; the wrapper sums it.  ``raw_bits[chunk]`` receives the number of escape
    bits the chunk stores raw.
    """
    symbol_count = symbols.shape[0]
    chunk_count = raw_bits.shape[0]
    groups = counts.shape[0]
    per_group = (chunk_count + groups - 1) // groups
    direct_limit = np.int64(1) << direct_bits
    for group in prange(groups):
        for chunk in range(group * per_group, min((group + 1) * per_group, chunk_count)):
            start = chunk * chunk_size
            stop = min(start + chunk_size, symbol_count)
            bits = 0
            for i in range(start, stop):
                value = np.int64(symbols[i])
                sub = i & (SUB_HISTOGRAMS - 1)
                if value < direct_limit:
                    counts[group, sub, value] += 1
                else:
                    length = bit_length(value)
                    counts[group, sub, direct_limit + length - direct_bits - 1] += 1
                    bits += length - 1
            raw_bits[chunk] = bits


# --------------------------------------------------------------------------- encoder


@kernel
def build_encoder_table(freqs, scale_bits, table):
    """Per token: ``[x_max, reciprocal, shift, bias, scale - freq]`` (int64[alphabet, 5]).

    ``q = (x * reciprocal) >> 32 >> shift`` equals ``x // freq`` for ``x < 2**31``, and
    ``x + bias + q * (scale - freq)`` equals ``(x // freq << scale_bits) + x % freq + cum``.
    """
    scale = np.int64(1) << scale_bits
    cum = np.int64(0)
    for token in range(freqs.shape[0]):
        freq = np.int64(freqs[token])
        table[token, 0] = freq << (31 - scale_bits)  # renormalize while x >= x_max
        if freq == 0:
            table[token, 1] = 0
            table[token, 2] = 0
            table[token, 3] = 0
        elif freq == 1:
            # reciprocal 2**32 - 1 yields q = x - 1; the bias restores x * scale + cum.
            table[token, 1] = (np.int64(1) << 32) - 1
            table[token, 2] = 0
            table[token, 3] = cum + scale - 1
        else:
            shift = 0
            while freq > (np.int64(1) << shift):
                shift += 1
            table[token, 1] = ((np.int64(1) << (shift + 31)) + freq - 1) // freq
            table[token, 2] = shift - 1
            table[token, 3] = cum
        table[token, 4] = scale - freq
        cum += freq


@parallel_kernel
def encode_chunks(
    symbols, chunk_size, direct_bits, table, states, words, word_starts, raw_bits, raw, raw_offsets
):
    """rANS-encode each chunk backwards into its row of ``words`` (uint16), and its raw
    escape bits into ``raw[raw_offsets[chunk]:raw_offsets[chunk + 1]]``.

    Row ``chunk`` ends with the chunk's words in decoder read order, starting at
    ``word_starts[chunk]``: the lanes' final states (low word first), then the
    renormalization words.  A row needs one word per symbol plus two per lane (a symbol
    emits at most one word).  ``states`` is int64 scratch ``[num_chunks, lanes]``;
    ``raw_bits[chunk]`` is the chunk's exact raw-bit count (from the histogram pass).
    """
    symbol_count = symbols.shape[0]
    lanes = states.shape[1]
    row_words = words.shape[1]
    direct_limit = np.int64(1) << direct_bits
    for chunk in prange(words.shape[0]):
        start = chunk * chunk_size
        stop = min(start + chunk_size, symbol_count)
        for lane in range(lanes):
            states[chunk, lane] = STATE_LOW
        pos = row_words
        lane = (stop - 1 - start) % lanes  # symbol j of the chunk uses lane j % lanes
        # Raw bits are written back to front too, so a chunk costs one pass: ``pending``
        # holds the ``held`` lowest not yet stored bits, starting with the zero padding
        # that tops the stream's last byte.
        raw_pos = raw_offsets[chunk + 1]
        pending = np.int64(0)
        held = (8 - raw_bits[chunk] % 8) % 8
        for i in range(stop - 1, start - 1, -1):
            value = np.int64(symbols[i])
            token = value
            if value >= direct_limit:
                extra = bit_length(value) - 1
                token = direct_limit + extra - direct_bits
                pending = (pending << extra) | (value - (np.int64(1) << extra))
                held += extra
                while held >= 8:
                    held -= 8
                    raw_pos -= 1
                    if raw_pos >= raw_offsets[chunk]:  # only symbols changed mid-call fail it
                        raw[raw_pos] = (pending >> held) & 0xFF
                pending &= (np.int64(1) << held) - 1
            state = states[chunk, lane]
            # Branch-free renormalization (whether a word is due is a coin flip at a few
            # bits per symbol): always store the low word below the stream, keep it only
            # if due.  pos - 1 >= 2 * lanes - 1 >= 0, so the store stays in the row.
            emit = np.int64(state >= table[token, 0])
            words[chunk, pos - 1] = state & WORD_MASK
            pos -= emit
            state >>= emit << 4
            quotient = ((state * table[token, 1]) >> 32) >> table[token, 2]
            states[chunk, lane] = state + table[token, 3] + quotient * table[token, 4]
            lane = lane - 1 if lane > 0 else lanes - 1
        for lane in range(lanes - 1, -1, -1):
            state = states[chunk, lane]
            words[chunk, pos - 1] = state >> 16
            words[chunk, pos - 2] = state & WORD_MASK
            pos -= 2
        word_starts[chunk] = pos


@parallel_kernel
def assemble_chunks(words, word_starts, raw, raw_offsets, out, offsets):
    """Copy each chunk's words (little-endian) to ``out[offsets[chunk]:]``, then its raw
    escape bytes."""
    row_words = words.shape[1]
    for chunk in prange(words.shape[0]):
        pos = offsets[chunk]
        for w in range(word_starts[chunk], row_words):
            word = words[chunk, w]
            out[pos] = word & 0xFF
            out[pos + 1] = word >> 8
            pos += 2
        for b in range(raw_offsets[chunk], raw_offsets[chunk + 1]):
            out[pos] = raw[b]
            pos += 1


# --------------------------------------------------------------------------- decoder


@kernel
def build_decoder_table(freqs, table):
    """Slot table: ``table[slot] = freq | (slot - cum) << 16 | token << 32`` (int64).

    The wrapper checked ``sum(freqs) == len(table)``, so every slot is written exactly once.
    """
    cum = 0
    for token in range(freqs.shape[0]):
        freq = np.int64(freqs[token])
        for offset in range(freq):
            table[cum + offset] = freq | (np.int64(offset) << 16) | (np.int64(token) << 32)
        cum += freq


@kernel
def _fail(errors, chunk, code, expected, found):
    errors[chunk, 0] = code
    errors[chunk, 1] = expected
    errors[chunk, 2] = found


def _make_decode(dequantize, cast):
    """decode_chunks writing symbols (uint32), or dequantized codes ``cast(unzigzag) * step``."""

    @parallel_kernel
    def decode_chunks(data, bounds, chunk_size, direct_bits, scale_bits, table, states, step, out, errors):
        """Decode every chunk into ``out``; report per-chunk problems in ``errors``.

        ``bounds[chunk] = (rans_start, raw_start, raw_end)`` are byte offsets into ``data``
        that the wrapper checked (``rans_start + 4 * lanes <= raw_start <= raw_end <=
        len(data)``, even rANS length).  ``errors[chunk] = (code, expected, found)``, code 0
        when the chunk decoded and ended exactly as the format requires.
        """
        symbol_count = out.shape[0]
        lanes = states.shape[1]
        mask = (np.int64(1) << scale_bits) - 1
        direct_limit = np.int64(1) << direct_bits
        for chunk in prange(bounds.shape[0]):
            errors[chunk, 0] = OK
            rans_start = bounds[chunk, 0]
            rans_end = bounds[chunk, 1]
            raw_end = bounds[chunk, 2]
            bad_state = False
            for lane in range(lanes):
                p = rans_start + 4 * lane
                state = (
                    np.int64(data[p])
                    | (np.int64(data[p + 1]) << 8)
                    | (np.int64(data[p + 2]) << 16)
                    | (np.int64(data[p + 3]) << 24)
                )
                states[chunk, lane] = state
                if (state < STATE_LOW or state >= STATE_HIGH) and not bad_state:
                    _fail(errors, chunk, ERR_STATE_RANGE, lane, state)
                    bad_state = True
            if bad_state:
                continue
            pos = rans_start + 4 * lanes
            last_word = rans_end - 2  # >= rans_start: clamping keeps reads inside the chunk
            raw_pos = rans_end
            buffer = np.int64(0)
            filled = 0
            start = chunk * chunk_size
            stop = min(start + chunk_size, symbol_count)
            lane = 0
            for i in range(start, stop):
                state = states[chunk, lane]
                entry = table[state & mask]
                token = entry >> 32
                state = (entry & 0xFFFF) * (state >> scale_bits) + ((entry >> 16) & 0xFFFF)
                # Branch-free renormalization, as in the encoder; the clamped read is always
                # inside the chunk, and an overrun shows as pos > rans_end at the end.
                refill = np.int64(state < STATE_LOW)
                p = min(pos, last_word)
                word = np.int64(data[p]) | (np.int64(data[p + 1]) << 8)
                state = (state << (refill << 4)) | (word & -refill)
                pos += refill << 1
                states[chunk, lane] = state
                lane = lane + 1 if lane + 1 < lanes else 0
                if token < direct_limit:
                    value = token
                else:
                    raw_count = token - direct_limit + direct_bits
                    while filled < raw_count:
                        if raw_pos < raw_end:  # past it, count the bytes but read nothing
                            buffer |= np.int64(data[raw_pos]) << filled
                        raw_pos += 1
                        filled += 8
                    value = (np.int64(1) << raw_count) | (buffer & ((np.int64(1) << raw_count) - 1))
                    buffer >>= raw_count
                    filled -= raw_count
                if dequantize:  # fused: saves a pass and a code array (see stages/rans.decode)
                    out[i] = cast((value >> 1) ^ -(value & 1)) * step
                else:
                    out[i] = value
            if pos != rans_end:
                _fail(errors, chunk, ERR_RANS_LENGTH, rans_end - rans_start, pos - rans_start)
                continue
            for lane in range(lanes):
                if states[chunk, lane] != STATE_LOW:
                    _fail(errors, chunk, ERR_FINAL_STATE, STATE_LOW, states[chunk, lane])
                    break
            if errors[chunk, 0] != OK:
                continue
            if raw_pos != raw_end:
                _fail(errors, chunk, ERR_RAW_LENGTH, raw_end - rans_end, raw_pos - rans_end)
            elif buffer != 0:
                _fail(errors, chunk, ERR_RAW_PADDING, 0, buffer)

    return decode_chunks


decode_chunks = _make_decode(False, np.float64)
decode_dequantize_f32 = _make_decode(True, np.float32)
decode_dequantize_f64 = _make_decode(True, np.float64)
