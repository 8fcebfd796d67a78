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

__all__ = [
    "STATE_LOW",
    "STATE_HIGH",
    "SUB_HISTOGRAMS",
    "chunk_histograms",
    "normalize_frequencies",
    "build_encoder_table",
    "encode_chunks",
    "assemble_chunks",
    "build_decoder_table",
    "decode_chunks",
    "write_varint",
    "read_varint",
    "write_frequency_table",
    "read_frequency_table",
    "read_varints",
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

# Status codes shared with the wrapper (it turns them into CorruptFrameError messages).
OK = 0
ERR_TRUNCATED = 1  # a varint runs past the end of its area
ERR_BAD_VARINT = 2  # more than 5 bytes, >= 2**32, or a redundant zero continuation
ERR_TOKEN_END = 3  # table alphabet end out of range
ERR_TABLE_RUN = 4  # a zero run goes past the table's alphabet end
ERR_STATE_RANGE = 5  # a chunk's initial state is outside [STATE_LOW, STATE_HIGH)
ERR_RANS_LENGTH = 6  # the chunk's rANS words were not consumed exactly
ERR_FINAL_STATE = 7  # a lane did not end in STATE_LOW
ERR_RAW_LENGTH = 8  # the chunk's raw-bit bytes were not consumed exactly
ERR_RAW_PADDING = 9  # non-zero padding bits after the last raw bit


@kernel
def bit_length(value):
    """Number of significant bits of ``1 <= value < 2**32`` (branch-light binary search)."""
    length = 1
    if value >= 1 << 16:
        value >>= 16
        length += 16
    if value >= 1 << 8:
        value >>= 8
        length += 8
    if value >= 1 << 4:
        value >>= 4
        length += 4
    if value >= 1 << 2:
        value >>= 2
        length += 2
    if value >= 2:
        length += 1
    return length


# ---------------------------------------------------------------------------- varints


@kernel
def write_varint(value, out, pos):
    """Write unsigned LEB128 ``value`` at ``out[pos]``; return the position after it."""
    while value >= 0x80:
        out[pos] = (value & 0x7F) | 0x80
        value >>= 7
        pos += 1
    out[pos] = value
    return pos + 1


@kernel
def read_varint(data, pos, end):
    """Read a canonical LEB128 value < 2**32 from ``data[pos:end]``.

    Returns ``(value, next_pos, status)``; on a bad status ``value`` is meaningless.
    """
    value = 0
    shift = 0
    while True:
        if pos >= end:
            return 0, pos, ERR_TRUNCATED
        byte = np.int64(data[pos])
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            # A zero final byte after a continuation is a second spelling of a shorter
            # varint; rejecting it keeps one byte string per section.
            if shift > 0 and byte == 0:
                return 0, pos, ERR_BAD_VARINT
            break
        shift += 7
        if shift >= 35:
            return 0, pos, ERR_BAD_VARINT
    if value >= 1 << 32:
        return 0, pos, ERR_BAD_VARINT
    return value, pos, OK


@kernel
def read_varints(data, pos, end, out):
    """Fill ``out`` with consecutive varints from ``data[pos:end]``; return (pos, status)."""
    for i in range(out.shape[0]):
        value, pos, status = read_varint(data, pos, end)
        if status != OK:
            return pos, status
        out[i] = value
    return pos, OK


@kernel
def write_frequency_table(freqs, token_end, out, pos):
    """Write ``token_end`` then ``freqs[:token_end]`` as varints, a zero followed by the
    number of further zeros (alphabets are sparse between direct and escape tokens)."""
    pos = write_varint(token_end, out, pos)
    token = 0
    while token < token_end:
        freq = freqs[token]
        pos = write_varint(freq, out, pos)
        if freq == 0:
            run = 0
            while token + 1 + run < token_end and freqs[token + 1 + run] == 0:
                run += 1
            pos = write_varint(run, out, pos)
            token += run
        token += 1
    return pos


@kernel
def read_frequency_table(data, pos, end, alphabet_size, freqs):
    """Inverse of :func:`write_frequency_table`; ``freqs`` (zeroed) has alphabet_size entries.

    Returns ``(pos, status, token_end)``.  Sum and canonical-form checks are the wrapper's.
    """
    token_end, pos, status = read_varint(data, pos, end)
    if status != OK:
        return pos, status, 0
    if token_end < 1 or token_end > alphabet_size:
        return pos, ERR_TOKEN_END, token_end
    token = 0
    while token < token_end:
        freq, pos, status = read_varint(data, pos, end)
        if status != OK:
            return pos, status, token_end
        freqs[token] = freq
        if freq == 0:
            run, pos, status = read_varint(data, pos, end)
            if status != OK:
                return pos, status, token_end
            if token + 1 + run > token_end:
                return pos, ERR_TABLE_RUN, token_end
            token += run
        token += 1
    return pos, OK, token_end


# ------------------------------------------------------------------------- histogram


@parallel_kernel
def chunk_histograms(symbols, chunk_size, direct_bits, counts, raw_bits):
    """Token counts and raw-bit totals per chunk.

    ``counts`` is a zeroed int32 array ``[num_chunks, SUB_HISTOGRAMS, alphabet]``;
    ``raw_bits[chunk]`` receives the number of escape bits the chunk stores raw.
    """
    symbol_count = symbols.shape[0]
    direct_limit = np.int64(1) << direct_bits
    for chunk in prange(counts.shape[0]):
        start = chunk * chunk_size
        stop = min(start + chunk_size, symbol_count)
        bits = 0
        for i in range(start, stop):
            value = np.int64(symbols[i])
            sub = i & (SUB_HISTOGRAMS - 1)
            if value < direct_limit:
                counts[chunk, sub, value] += 1
            else:
                length = bit_length(value)
                counts[chunk, sub, direct_limit + length - direct_bits - 1] += 1
                bits += length - 1
        raw_bits[chunk] = bits


@kernel
def normalize_frequencies(counts, scale_bits, freqs):
    """Scale ``counts`` to frequencies summing to ``2**scale_bits``, integers only.

    Start from ``floor(count * scale / total)`` (at least 1 for a present token), then
    move one unit at a time to the token whose coded size changes most (increment) or
    least (decrement), using ``count / (freq +- 1/2)`` as the integer proxy of
    ``count * log(1 + 1/freq)``; ties go to the lowest token.  Both loops run at most
    ``present tokens`` times, and every step is exact integer arithmetic, so a CUDA
    host or device computes the same table.
    """
    scale = np.int64(1) << scale_bits
    total = np.int64(0)
    for token in range(counts.shape[0]):
        total += counts[token]
    assigned = np.int64(0)
    for token in range(counts.shape[0]):
        count = np.int64(counts[token])
        freq = np.int64(0)
        if count > 0:
            freq = max(count * scale // total, 1)
        freqs[token] = freq
        assigned += freq
    while assigned < scale:
        best = -1
        for token in range(counts.shape[0]):
            count = np.int64(counts[token])
            if count > 0 and (
                best < 0 or count * (2 * freqs[best] + 1) > counts[best] * (2 * freqs[token] + 1)
            ):
                best = token
        freqs[best] += 1
        assigned += 1
    while assigned > scale:
        best = -1
        for token in range(counts.shape[0]):
            count = np.int64(counts[token])
            if freqs[token] > 1 and (
                best < 0 or count * (2 * freqs[best] - 1) < counts[best] * (2 * freqs[token] - 1)
            ):
                best = token
        freqs[best] -= 1
        assigned -= 1


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
def encode_chunks(symbols, chunk_size, direct_bits, table, states, words, word_starts):
    """rANS-encode each chunk backwards into its row of ``words`` (uint16).

    Row ``chunk`` ends with the chunk's words in decoder read order, starting at
    ``word_starts[chunk]``: the lanes' final states (low word first), then the
    renormalization words.  A row holds ``chunk_size + 2 * lanes`` words: at most one
    word per symbol plus two per lane.  ``states`` is int64 scratch ``[num_chunks, lanes]``.
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
        for i in range(stop - 1, start - 1, -1):
            value = np.int64(symbols[i])
            token = value
            if value >= direct_limit:
                token = direct_limit + bit_length(value) - direct_bits - 1
            state = states[chunk, lane]
            if state >= table[token, 0]:
                pos -= 1
                words[chunk, pos] = state & WORD_MASK
                state >>= 16
            quotient = ((state * table[token, 1]) >> 32) >> table[token, 2]
            states[chunk, lane] = state + table[token, 3] + quotient * table[token, 4]
            lane = lane - 1 if lane > 0 else lanes - 1
        for lane in range(lanes - 1, -1, -1):
            state = states[chunk, lane]
            words[chunk, pos - 1] = state >> 16
            words[chunk, pos - 2] = state & WORD_MASK
            pos -= 2
        word_starts[chunk] = pos


@kernel
def write_raw_bits(symbols, start, stop, direct_limit, out, pos):
    """Append each escaped symbol's bits below its leading one, LSB first, from ``pos``."""
    buffer = np.int64(0)
    filled = 0
    for i in range(start, stop):
        value = np.int64(symbols[i])
        if value >= direct_limit:
            raw_count = bit_length(value) - 1
            buffer |= (value - (np.int64(1) << raw_count)) << filled
            filled += raw_count
            while filled >= 8:
                out[pos] = buffer & 0xFF
                pos += 1
                buffer >>= 8
                filled -= 8
    if filled > 0:
        out[pos] = buffer  # padding bits are zero
        pos += 1
    return pos


@parallel_kernel
def assemble_chunks(symbols, chunk_size, direct_bits, words, word_starts, raw_bytes, out, offsets):
    """Copy each chunk's words (little-endian) to ``out[offsets[chunk]:]`` followed by its
    ``raw_bytes[chunk]`` bytes of escape bits."""
    symbol_count = symbols.shape[0]
    row_words = words.shape[1]
    direct_limit = np.int64(1) << direct_bits
    for chunk in prange(words.shape[0]):
        pos = offsets[chunk]
        for w in range(word_starts[chunk], row_words):
            word = words[chunk, w]
            out[pos] = word & 0xFF
            out[pos + 1] = word >> 8
            pos += 2
        if raw_bytes[chunk] > 0:
            start = chunk * chunk_size
            stop = min(start + chunk_size, symbol_count)
            write_raw_bits(symbols, start, stop, direct_limit, out, pos)


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


@parallel_kernel
def decode_chunks(
    data, bounds, chunk_size, direct_bits, scale_bits, table, states, out, errors
):
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
        raw_overrun = False
        start = chunk * chunk_size
        stop = min(start + chunk_size, symbol_count)
        lane = 0
        for i in range(start, stop):
            state = states[chunk, lane]
            entry = table[state & mask]
            token = entry >> 32
            state = (entry & 0xFFFF) * (state >> scale_bits) + ((entry >> 16) & 0xFFFF)
            if state < STATE_LOW:
                p = min(pos, last_word)
                state = (state << 16) | np.int64(data[p]) | (np.int64(data[p + 1]) << 8)
                pos += 2
            states[chunk, lane] = state
            lane = lane + 1 if lane + 1 < lanes else 0
            if token < direct_limit:
                out[i] = token
            else:
                raw_count = token - direct_limit + direct_bits
                while filled < raw_count:
                    if raw_pos < raw_end:
                        buffer |= np.int64(data[raw_pos]) << filled
                    else:
                        raw_overrun = True
                    raw_pos += 1
                    filled += 8
                out[i] = (np.int64(1) << raw_count) | (buffer & ((np.int64(1) << raw_count) - 1))
                buffer >>= raw_count
                filled -= raw_count
        if pos != rans_end:
            _fail(errors, chunk, ERR_RANS_LENGTH, rans_end - rans_start, pos - rans_start)
            continue
        for lane in range(lanes):
            if states[chunk, lane] != STATE_LOW:
                _fail(errors, chunk, ERR_FINAL_STATE, STATE_LOW, states[chunk, lane])
                break
        if errors[chunk, 0] != OK:
            continue
        if raw_overrun or raw_pos != raw_end:
            _fail(errors, chunk, ERR_RAW_LENGTH, raw_end - rans_end, raw_pos - rans_end)
        elif buffer != 0:
            _fail(errors, chunk, ERR_RAW_PADDING, 0, buffer)
