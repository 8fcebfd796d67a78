"""Kernels of the compact (rANS) coder on the device (CUDA twin of cpu/rans.py).

Byte layout: docs/entropy.md. The encoder follows the reference encoder (§7) step for step,
one thread per chunk, so its sections are byte-identical to the CPU's: same chunks (2**16
symbols), same lanes, same integer arithmetic (int64 throughout, as on the CPU), same
branch-free renormalization and back-to-front raw bits. The small serialized parts (frequency
table, directory varints) are written on the host from the histogram and the per-chunk byte
counts: a few bytes per 65,536 symbols cross to the host, never the symbols.

One thread per chunk keeps the format and the bytes of the CPU encoder, at the price of
parallelism: a 2**28-symbol stream has 4096 chunks, a few per multiprocessor. docs/cuda.md
says what a faster design would change.
"""

from __future__ import annotations

from numba import cuda, int32, int64, uint8, uint16, uint32

from ..cpu.rans import ERR_FINAL_STATE, ERR_RANS_LENGTH, ERR_RAW_LENGTH, ERR_RAW_PADDING, ERR_STATE_RANGE
from ..cpu.rans import STATE_HIGH, STATE_LOW, WORD_MASK
from ._launch import device, kernel

__all__ = ["ALPHABET", "DIRECT_BITS", "token_histogram", "encode_chunks", "assemble_chunks",
           "build_decoder_table", "decode_chunks"]

DIRECT_BITS = 8  # what the encoder writes (stages.rans.DEFAULT_DIRECT_BITS)
ALPHABET = (1 << DIRECT_BITS) + 32 - DIRECT_BITS
MAX_LANES = 32
_TABLE_SIZE = ALPHABET * 5  # shared-array sizes must be plain globals
_OK = 0


@device
def bit_length(value):
    """Significant bits of ``1 <= value < 2**32``."""
    return 32 - cuda.clz(uint32(value))  # uint32: clz counts 32 bits on GPU and simulator


@device
def _token(value, direct_limit):
    if value < direct_limit:
        return value, 0
    extra = bit_length(value) - 1
    return direct_limit + extra - DIRECT_BITS, extra


@kernel
def token_histogram(symbols, chunk_size, counts, raw_bits, low_high):
    """Token counts (int64[ALPHABET]), raw-bit totals per chunk (int64) and ``low_high =
    [2**32 - min, max + 1]`` of the symbols (all start at 0, zeroed counter slots: the
    offsets make 0 mean "no symbol" for both extremes, so no start values are uploaded)."""
    hist = cuda.shared.array(ALPHABET, int32)
    for t in range(cuda.threadIdx.x, ALPHABET, cuda.blockDim.x):
        hist[t] = 0
    cuda.syncthreads()
    direct_limit = int64(1) << DIRECT_BITS
    last = int64(-1)
    run = 0
    low = int64(1) << 32
    high = int64(-1)
    for i in range(cuda.grid(1), symbols.shape[0], cuda.gridsize(1)):
        value = int64(symbols[i])
        low = min(low, value)
        high = max(high, value)
        token, extra = _token(value, direct_limit)
        if extra:
            cuda.atomic.add(raw_bits, i // chunk_size, extra)
        # Runs of one token (mostly zeros) cost one shared atomic, not one per symbol.
        if token == last:
            run += 1
        else:
            if run:
                cuda.atomic.add(hist, last, int32(run))
            last = token
            run = 1
    if run:
        cuda.atomic.add(hist, last, int32(run))
    if high >= 0:
        cuda.atomic.max(low_high, 0, (int64(1) << 32) - low)
        cuda.atomic.max(low_high, 1, high + 1)
    cuda.syncthreads()
    for t in range(cuda.threadIdx.x, ALPHABET, cuda.blockDim.x):
        if hist[t]:
            cuda.atomic.add(counts, t, int64(hist[t]))


@kernel
def encode_chunks(symbols, chunk_size, lanes, table, words, word_starts, raw_bits, raw, raw_offsets):
    """rANS-encode each chunk backwards into its row of ``words`` (uint16) and its raw bits
    into ``raw[raw_offsets[chunk]:raw_offsets[chunk + 1]]``: cpu/rans.py's encode_chunks.

    ``table`` is the flat int64 encoder table (ALPHABET x 5, see build_encoder_table).
    """
    shared_table = cuda.shared.array(_TABLE_SIZE, int64)
    for k in range(cuda.threadIdx.x, _TABLE_SIZE, cuda.blockDim.x):
        shared_table[k] = table[k]
    cuda.syncthreads()
    states = cuda.local.array(MAX_LANES, int64)
    symbol_count = symbols.shape[0]
    row_words = words.shape[1]
    direct_limit = int64(1) << DIRECT_BITS
    for chunk in range(cuda.grid(1), words.shape[0], cuda.gridsize(1)):
        start = chunk * chunk_size
        stop = min(start + chunk_size, symbol_count)
        for lane in range(lanes):
            states[lane] = STATE_LOW
        pos = row_words
        lane = (stop - 1 - start) % lanes
        raw_pos = raw_offsets[chunk + 1]
        pending = int64(0)
        held = (8 - raw_bits[chunk] % 8) % 8
        for i in range(stop - 1, start - 1, -1):
            value = int64(symbols[i])
            token, extra = _token(value, direct_limit)
            if extra:
                pending = (pending << extra) | (value - (int64(1) << extra))
                held += extra
                while held >= 8:
                    held -= 8
                    raw_pos -= 1
                    raw[raw_pos] = uint8((pending >> held) & 0xFF)
                pending &= (int64(1) << held) - 1
            state = states[lane]
            row = token * 5
            emit = int64(1) if state >= shared_table[row] else int64(0)
            words[chunk, pos - 1] = uint16(state & WORD_MASK)
            pos -= emit
            state >>= emit << 4
            quotient = ((state * shared_table[row + 1]) >> 32) >> shared_table[row + 2]
            states[lane] = state + shared_table[row + 3] + quotient * shared_table[row + 4]
            lane = lane - 1 if lane > 0 else lanes - 1
        for lane in range(lanes - 1, -1, -1):
            state = states[lane]
            words[chunk, pos - 1] = uint16(state >> 16)
            words[chunk, pos - 2] = uint16(state & WORD_MASK)
            pos -= 2
        word_starts[chunk] = pos


@kernel
def assemble_chunks(words, word_starts, raw, raw_offsets, out, offsets):
    """Copy chunk ``c``'s words (little-endian) then its raw bytes to ``out[offsets[c]:]``;
    one block per chunk, its threads striding over the bytes."""
    row_words = words.shape[1]
    for chunk in range(cuda.blockIdx.x, words.shape[0], cuda.gridDim.x):
        first = word_starts[chunk]
        base = offsets[chunk]
        for w in range(first + cuda.threadIdx.x, row_words, cuda.blockDim.x):
            word = words[chunk, w]
            at = base + 2 * (w - first)
            out[at] = uint8(word & 0xFF)
            out[at + 1] = uint8(word >> 8)
        base += 2 * (row_words - first)
        r0 = raw_offsets[chunk]
        for b in range(r0 + cuda.threadIdx.x, raw_offsets[chunk + 1], cuda.blockDim.x):
            out[base + b - r0] = raw[b]


@kernel
def build_decoder_table(freqs, cums, table):
    """Slot table ``table[slot] = freq | (slot - cum) << 16 | token << 32``; one thread a token."""
    for token in range(cuda.grid(1), freqs.shape[0], cuda.gridsize(1)):
        freq = freqs[token]
        cum = cums[token]
        for offset in range(freq):
            table[cum + offset] = freq | (int64(offset) << 16) | (int64(token) << 32)


@device
def _fail(errors, chunk, code, expected, found):
    errors[chunk, 0] = code
    errors[chunk, 1] = expected
    errors[chunk, 2] = found


@kernel
def decode_chunks(data, bounds, chunk_size, direct_bits, scale_bits, lanes, table, out, errors):
    """Decode every chunk into ``out``: cpu/rans.py's decode_chunks, one thread per chunk.

    ``bounds[chunk] = (rans_start, raw_start, raw_end)`` are validated byte offsets into
    ``data``; ``errors[chunk] = (code, expected, found)``, code 0 when the chunk is sound.
    """
    states = cuda.local.array(MAX_LANES, int64)
    symbol_count = out.shape[0]
    mask = (int64(1) << scale_bits) - 1
    direct_limit = int64(1) << direct_bits
    for chunk in range(cuda.grid(1), bounds.shape[0], cuda.gridsize(1)):
        errors[chunk, 0] = _OK
        rans_start = bounds[chunk, 0]
        rans_end = bounds[chunk, 1]
        raw_end = bounds[chunk, 2]
        bad_state = False
        for lane in range(lanes):
            p = rans_start + 4 * lane
            state = (int64(data[p]) | (int64(data[p + 1]) << 8) | (int64(data[p + 2]) << 16)
                     | (int64(data[p + 3]) << 24))
            states[lane] = state
            if (state < STATE_LOW or state >= STATE_HIGH) and not bad_state:
                _fail(errors, chunk, ERR_STATE_RANGE, lane, state)
                bad_state = True
        if bad_state:
            continue
        pos = rans_start + 4 * lanes
        last_word = rans_end - 2
        raw_pos = rans_end
        buffer = int64(0)
        filled = 0
        raw_overrun = False
        start = chunk * chunk_size
        stop = min(start + chunk_size, symbol_count)
        lane = 0
        for i in range(start, stop):
            state = states[lane]
            entry = table[state & mask]
            token = entry >> 32
            state = (entry & 0xFFFF) * (state >> scale_bits) + ((entry >> 16) & 0xFFFF)
            refill = int64(1) if state < STATE_LOW else int64(0)
            p = min(pos, last_word)
            word = int64(data[p]) | (int64(data[p + 1]) << 8)
            state = (state << (refill << 4)) | (word & -refill)
            pos += refill << 1
            states[lane] = state
            lane = lane + 1 if lane + 1 < lanes else 0
            if token < direct_limit:
                out[i] = token
            else:
                raw_count = token - direct_limit + direct_bits
                while filled < raw_count:
                    if raw_pos < raw_end:
                        buffer |= int64(data[raw_pos]) << filled
                    else:
                        raw_overrun = True
                    raw_pos += 1
                    filled += 8
                out[i] = (int64(1) << raw_count) | (buffer & ((int64(1) << raw_count) - 1))
                buffer >>= raw_count
                filled -= raw_count
        if pos != rans_end:
            _fail(errors, chunk, ERR_RANS_LENGTH, rans_end - rans_start, pos - rans_start)
            continue
        for lane in range(lanes):
            if states[lane] != STATE_LOW:
                _fail(errors, chunk, ERR_FINAL_STATE, STATE_LOW, states[lane])
                break
        if errors[chunk, 0] != _OK:
            continue
        if raw_overrun or raw_pos != raw_end:
            _fail(errors, chunk, ERR_RAW_LENGTH, raw_end - rans_end, raw_pos - rans_end)
        elif buffer != 0:
            _fail(errors, chunk, ERR_RAW_PADDING, 0, buffer)
