"""Numba kernels for the small serialized parts of a rANS section.

Varints (chunk directory, constant sections), the Exp-Golomb-coded frequency table and
its integer normalization.  Byte layout: ``docs/entropy.md``.  Readers take an ``end``
and never read at or past it; they report problems as status codes, never raise.
"""

from __future__ import annotations

import numpy as np

from embzip._jit import kernel

__all__ = [
    "bit_length",
    "write_varint",
    "write_varints",
    "read_varint",
    "read_varints",
    "write_frequency_table",
    "read_frequency_table",
    "normalize_frequencies",
]

# Status codes (the wrapper turns them into CorruptFrameError messages).
OK = 0
ERR_TRUNCATED = 1  # a varint or the table runs past the end of the section
ERR_BAD_VARINT = 2  # more than 5 bytes, >= 2**32, or a redundant zero continuation
ERR_TABLE_COUNT = 3  # more present tokens than the alphabet or the scale allows
ERR_TABLE_TOKEN = 4  # a token index past the alphabet
ERR_TABLE_FREQ = 5  # a frequency leaving no room for the remaining tokens
ERR_TABLE_PADDING = 6  # non-zero padding bits after the table


@kernel
def bit_length(value):
    """Number of significant bits of ``1 <= value < 2**32``.

    A binary search on comparison results used as integers: no data-dependent branches,
    which mispredict on every escaped symbol when escapes are frequent.
    """
    step = np.int64(value >= 1 << 16) << 4
    value >>= step
    length = step + 1
    step = np.int64(value >= 1 << 8) << 3
    value >>= step
    length += step
    step = np.int64(value >= 1 << 4) << 2
    value >>= step
    length += step
    step = np.int64(value >= 1 << 2) << 1
    value >>= step
    length += step
    return length + np.int64(value >= 2)


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
def write_varints(values, out, pos):
    """Write every value of ``values`` as a varint from ``out[pos]``; return the end."""
    for i in range(values.shape[0]):
        pos = write_varint(values[i], out, pos)
    return pos


@kernel
def read_varints(data, pos, end, out):
    """Fill ``out`` with consecutive varints from ``data[pos:end]``; return (pos, status)."""
    for i in range(out.shape[0]):
        value, pos, status = read_varint(data, pos, end)
        if status != OK:
            return pos, status
        out[i] = value
    return pos, OK


# ------------------------------------------------------------------ frequency table
# The table is an LSB-first bit stream of Exp-Golomb (order 0) codes: it is the one part
# of a section whose size matters for short streams, where it rivals the payload.


@kernel
def _put_bits(out, pos, buffer, filled, value, count):
    buffer |= value << filled
    filled += count
    while filled >= 8:
        out[pos] = buffer & 0xFF
        pos += 1
        buffer >>= 8
        filled -= 8
    return pos, buffer, filled


@kernel
def _put_exp_golomb(out, pos, buffer, filled, value):
    length = bit_length(value + 1)  # (length - 1) zeros, a one, then the low bits
    pos, buffer, filled = _put_bits(out, pos, buffer, filled, np.int64(1) << (length - 1), length)
    low = value + 1 - (np.int64(1) << (length - 1))
    return _put_bits(out, pos, buffer, filled, low, length - 1)


@kernel
def _get_bits(data, pos, end, buffer, filled, count):
    """Returns (value, pos, buffer, filled, ok); ``ok`` is False past ``end``."""
    while filled < count:
        if pos >= end:
            return 0, pos, buffer, filled, False
        buffer |= np.int64(data[pos]) << filled
        pos += 1
        filled += 8
    value = buffer & ((np.int64(1) << count) - 1)
    return value, pos, buffer >> count, filled - count, True


@kernel
def _get_exp_golomb(data, pos, end, buffer, filled):
    zeros = 0
    while True:
        bit, pos, buffer, filled, ok = _get_bits(data, pos, end, buffer, filled, 1)
        if not ok or bit == 1:
            break
        zeros += 1
        if zeros > 32:  # no value this table stores needs more
            return 0, pos, buffer, filled, False
    low, pos, buffer, filled, ok2 = _get_bits(data, pos, end, buffer, filled, zeros)
    return (np.int64(1) << zeros) + low - 1, pos, buffer, filled, ok and ok2


@kernel
def write_frequency_table(freqs, scale_bits, out, pos):
    """Write the table at ``out[pos]``; return the position after its last byte.

    Codes: present-token count - 1; per present token, the gap to the previous one, and
    (except for the last, whose frequency is what remains of the scale) the change of the
    frequency's bit length (zigzag) followed by its bits below the leading one.
    """
    present = 0
    for token in range(freqs.shape[0]):
        present += freqs[token] > 0
    pos, buffer, filled = _put_exp_golomb(out, pos, np.int64(0), 0, present - 1)
    previous_token = -1
    previous_length = scale_bits
    seen = 0
    for token in range(freqs.shape[0]):
        freq = np.int64(freqs[token])
        if freq == 0:
            continue
        pos, buffer, filled = _put_exp_golomb(out, pos, buffer, filled, token - previous_token - 1)
        previous_token = token
        seen += 1
        if seen < present:
            length = bit_length(freq)
            delta = length - previous_length
            zigzag = 2 * delta if delta >= 0 else -2 * delta - 1
            pos, buffer, filled = _put_exp_golomb(out, pos, buffer, filled, zigzag)
            low = freq - (np.int64(1) << (length - 1))
            pos, buffer, filled = _put_bits(out, pos, buffer, filled, low, length - 1)
            previous_length = length
    if filled > 0:
        out[pos] = buffer  # zero padding bits
        pos += 1
    return pos


@kernel
def read_frequency_table(data, pos, end, scale_bits, freqs):
    """Inverse of :func:`write_frequency_table` into zeroed ``freqs`` (one per token).

    Returns ``(pos, status, found)``.  On success the frequencies are each >= 1 where
    present and sum to exactly ``2**scale_bits``; on failure ``found`` is the offending
    value (token count, token index, or frequency).
    """
    scale = np.int64(1) << scale_bits
    alphabet = freqs.shape[0]
    value, pos, buffer, filled, ok = _get_exp_golomb(data, pos, end, np.int64(0), 0)
    present = value + 1
    if not ok:
        return pos, ERR_TRUNCATED, 0
    if present > alphabet or present > scale:
        return pos, ERR_TABLE_COUNT, present
    token = -1
    remaining = scale
    previous_length = scale_bits
    for index in range(present):
        gap, pos, buffer, filled, ok = _get_exp_golomb(data, pos, end, buffer, filled)
        if not ok:
            return pos, ERR_TRUNCATED, 0
        token += gap + 1
        if token >= alphabet:
            return pos, ERR_TABLE_TOKEN, token
        if index == present - 1:
            freqs[token] = remaining  # >= 1: each earlier frequency left room for the rest
            break
        zigzag, pos, buffer, filled, ok = _get_exp_golomb(data, pos, end, buffer, filled)
        length = previous_length + (zigzag >> 1 if zigzag % 2 == 0 else -((zigzag + 1) >> 1))
        if not ok:
            return pos, ERR_TRUNCATED, 0
        if length < 1 or length > scale_bits:
            return pos, ERR_TABLE_FREQ, length
        low, pos, buffer, filled, ok = _get_bits(data, pos, end, buffer, filled, length - 1)
        if not ok:
            return pos, ERR_TRUNCATED, 0
        freq = (np.int64(1) << (length - 1)) | low
        if freq > remaining - (present - 1 - index):
            return pos, ERR_TABLE_FREQ, freq
        freqs[token] = freq
        remaining -= freq
        previous_length = length
    if buffer != 0:
        return pos, ERR_TABLE_PADDING, buffer
    return pos, OK, 0



# ------------------------------------------------------------- normalization


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
