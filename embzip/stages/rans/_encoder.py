"""rANS encoder wrapper: histogram, table plan, size estimate and encode.

Validates the symbols, allocates every array and calls the kernels of :mod:`embzip.cpu.rans`.
The device encoder (:mod:`embzip.cuda.streams`) reuses :func:`make_plan`,
:func:`section_header`, :func:`chunk_directory`, :func:`varint_sizes` and
:func:`constant_section`, so both backends write the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embzip._jit import for_size
from embzip.cpu import rans as _k
from embzip.cpu import rans_table as _t

from ._section import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DIRECT_BITS,
    DEFAULT_MAX_SCALE_BITS,
    KIND_CONSTANT,
    KIND_RANS,
    MAX_CHUNK_LOG2,
    MAX_DIRECT_BITS,
    MAX_LANES_LOG2,
    MAX_SCALE_BITS,
    MIN_CHUNK_LOG2,
    RANS_HEADER_BYTES,
    alphabet_size,
)

SCALE_BELOW_COUNT_LOG2 = 2
#: Inputs at least this long use 4 interleaved states per chunk (speed); shorter ones use
#: one, saving ~6 bytes of final-state overhead per lane where those bytes matter.
MULTI_LANE_MIN_SYMBOLS = 1 << 14
MULTI_LANES = 4

#: Parallel tasks of the histogram pass (each owns one set of counters).
HISTOGRAM_GROUPS = 64


@dataclass(frozen=True)
class SymbolHistogram:
    """Token statistics of one symbol stream, all :func:`estimate_size` and the encoder need.

    Attributes
    ----------
    symbol_count : int
        Length of the stream.
    chunk_size : int
        Symbols per chunk the statistics were gathered for.
    direct_bits : int
        Symbols below ``2**direct_bits`` are their own token; larger ones are escapes.
    token_counts : numpy.ndarray
        int64 count of every token (``alphabet_size(direct_bits)`` entries).
    chunk_raw_bits : numpy.ndarray
        int64 number of raw escape bits each chunk stores.
    constant_value : int or None
        The value of every symbol when the stream holds one distinct value, else None.
    """

    symbol_count: int
    chunk_size: int
    direct_bits: int
    token_counts: np.ndarray
    chunk_raw_bits: np.ndarray
    constant_value: int | None

    @property
    def chunk_count(self) -> int:
        return -(-self.symbol_count // self.chunk_size)


@dataclass(frozen=True)
class _Plan:
    scale_bits: int
    lanes: int
    freqs: np.ndarray  # int64, sums to 2**scale_bits
    token_end: int


def _check_symbols(symbols) -> np.ndarray:
    if not isinstance(symbols, np.ndarray):
        raise TypeError(f"symbols must be a numpy array, found {type(symbols).__name__}")
    if symbols.dtype != np.uint32:
        raise TypeError(f"symbols must have dtype uint32, found {symbols.dtype}")
    if symbols.ndim != 1:
        raise ValueError(f"symbols must be 1-D, found shape {symbols.shape}")
    return np.ascontiguousarray(symbols)


def _check_chunk_size(chunk_size: int) -> int:
    chunk_size = int(chunk_size)
    log2 = chunk_size.bit_length() - 1
    if chunk_size != 1 << max(log2, 0) or not MIN_CHUNK_LOG2 <= log2 <= MAX_CHUNK_LOG2:
        raise ValueError(
            f"chunk_size must be a power of two in [2**{MIN_CHUNK_LOG2}, 2**{MAX_CHUNK_LOG2}],"
            f" found {chunk_size}"
        )
    return log2


def _histogram(symbols: np.ndarray, chunk_size: int, direct_bits: int) -> SymbolHistogram:
    symbol_count = symbols.shape[0]
    chunk_count = -(-symbol_count // chunk_size)
    groups = min(chunk_count, HISTOGRAM_GROUPS)
    sub_counts = np.zeros((groups, _k.SUB_HISTOGRAMS, alphabet_size(direct_bits)), np.int64)
    raw_bits = np.empty(chunk_count, np.int64)
    if chunk_count:
        for_size(_k.chunk_histograms, symbols.nbytes)(symbols, chunk_size, direct_bits, sub_counts, raw_bits)
    token_counts = sub_counts.sum(axis=(0, 1), dtype=np.int64)
    constant = None
    present = np.flatnonzero(token_counts)
    if present.size == 1:
        if present[0] < 1 << direct_bits:
            constant = int(present[0])
        elif np.all(symbols == symbols[0]):  # one escape token may still hold many values
            constant = int(symbols[0])
    return SymbolHistogram(symbol_count, chunk_size, direct_bits, token_counts, raw_bits, constant)


def histogram(symbols: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> SymbolHistogram:
    """Count the coder's tokens in ``symbols`` (one parallel pass, no encoding).

    Parameters
    ----------
    symbols : numpy.ndarray
        1-D uint32 symbol stream.
    chunk_size : int, optional
        Symbols per independently coded chunk (a power of two, 2**8 .. 2**24).

    Returns
    -------
    SymbolHistogram
        Pass it to :func:`estimate_size` instead of the symbols to avoid a second pass.

    Examples
    --------
    >>> import numpy as np
    >>> h = histogram(np.array([0, 0, 1, 300], dtype=np.uint32))
    >>> h.token_counts[:2].tolist(), int(h.chunk_raw_bits.sum())
    ([2, 1], 8)
    """
    symbols = _check_symbols(symbols)
    _check_chunk_size(chunk_size)
    return _histogram(symbols, int(chunk_size), DEFAULT_DIRECT_BITS)


def _ceil_log2(value: int) -> int:
    return max(int(value) - 1, 0).bit_length()


def make_plan(hist: SymbolHistogram, max_scale_bits: int, lanes: int | None) -> _Plan:
    present = np.flatnonzero(hist.token_counts)
    # Table bits grow with the scale, precision losses shrink with it: a scale of about
    # count / 4 minimized section size for 64..100k-symbol Laplace streams (measured,
    # docs/entropy.md); long streams use the full scale.
    scale_bits = min(max(_ceil_log2(hist.symbol_count) - SCALE_BELOW_COUNT_LOG2, 1), max_scale_bits)
    scale_bits = max(scale_bits, _ceil_log2(present.size))
    if lanes is None:
        lanes = MULTI_LANES if hist.symbol_count >= MULTI_LANE_MIN_SYMBOLS else 1
    freqs = np.zeros_like(hist.token_counts)
    _t.normalize_frequencies(hist.token_counts, scale_bits, freqs)
    return _Plan(scale_bits, lanes, freqs, int(present[-1]) + 1)


def section_header(hist: SymbolHistogram, plan: _Plan) -> np.ndarray:
    """Kind, packed parameters and frequency table: everything before the chunk directory."""
    # A table entry is <= 3 Exp-Golomb codes / fields of <= 65 bits together: 16 bytes is ample.
    out = np.empty(RANS_HEADER_BYTES + 16 * (plan.token_end + 2), np.uint8)
    out[0] = KIND_RANS
    out[1] = plan.scale_bits | hist.direct_bits << 4
    out[2] = (hist.chunk_size.bit_length() - 1) | (plan.lanes.bit_length() - 1) << 5
    end = _t.write_frequency_table(plan.freqs, plan.scale_bits, out, RANS_HEADER_BYTES)
    return out[:end]


def varint_sizes(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, np.int64)
    return 1 + sum((values >= 1 << (7 * i)).astype(np.int64) for i in range(1, 5))


def constant_section(value: int) -> np.ndarray:
    out = np.empty(6, np.uint8)
    out[0] = KIND_CONSTANT
    return out[: _t.write_varint(value, out, 1)]


def chunk_directory(rans_bytes: np.ndarray, raw_bytes: np.ndarray) -> np.ndarray:
    """Chunk directory values: raw and rANS byte counts per chunk, interleaved, without
    the last chunk's rANS count (the section end implies it)."""
    directory = np.empty(2 * raw_bytes.size, np.int64)
    directory[0::2] = raw_bytes
    directory[1::2] = rans_bytes
    return directory[:-1]


def _estimate(hist: SymbolHistogram, max_scale_bits=DEFAULT_MAX_SCALE_BITS, lanes=None) -> int:
    if hist.symbol_count == 0:
        return 0
    if hist.constant_value is not None:
        return constant_section(hist.constant_value).size
    plan = make_plan(hist, max_scale_bits, lanes)
    present = plan.freqs > 0
    counts = hist.token_counts[present]
    ideal_bits = float(np.sum(counts * (plan.scale_bits - np.log2(plan.freqs[present]))))
    chunks = hist.chunk_count
    raw_bytes = (hist.chunk_raw_bits + 7) // 8
    # Per chunk: final states cost 4 bytes a lane but carry ~2 bytes of payload each, and
    # the stream rounds up to whole 16-bit words.
    rans_bytes = ideal_bits / 8 + chunks * (2 * plan.lanes + 1)
    directory = varint_sizes(chunk_directory(np.full(chunks, rans_bytes / chunks), raw_bytes)).sum()
    header = section_header(hist, plan).size
    return int(round(header + directory + rans_bytes + raw_bytes.sum()))


def estimate_size(symbols, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Predict ``encode(symbols).size`` in bytes from a histogram, without encoding.

    Accurate to a few percent (a few bytes for tiny streams); costs one histogram pass,
    several times cheaper than :func:`encode`.

    Parameters
    ----------
    symbols : numpy.ndarray or SymbolHistogram
        The uint32 stream, or its :func:`histogram` (then ``chunk_size`` is ignored).
    chunk_size : int, optional
        As for :func:`encode`.

    Returns
    -------
    int
        Estimated section size in bytes.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> symbols = rng.geometric(0.5, 100_000).astype(np.uint32) - 1
    >>> abs(estimate_size(symbols) - encode(symbols).size) < 0.01 * encode(symbols).size
    True
    """
    if isinstance(symbols, SymbolHistogram):
        return _estimate(symbols)
    return _estimate(histogram(symbols, chunk_size=chunk_size))


def _encode(
    symbols: np.ndarray,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    direct_bits: int = DEFAULT_DIRECT_BITS,
    max_scale_bits: int = DEFAULT_MAX_SCALE_BITS,
    lanes: int | None = None,
) -> np.ndarray:
    """:func:`encode` with every format parameter exposed (tests exercise the decoder's range)."""
    if lanes is not None and (lanes & (lanes - 1) or not 1 <= lanes <= 1 << MAX_LANES_LOG2):
        raise ValueError(f"lanes must be a power of two in 1..{1 << MAX_LANES_LOG2}, found {lanes}")
    if not (0 <= direct_bits <= MAX_DIRECT_BITS and 1 <= max_scale_bits <= MAX_SCALE_BITS):
        found = f"direct_bits={direct_bits}, max_scale_bits={max_scale_bits}"
        raise ValueError(f"expected direct_bits 0..12 and max_scale_bits 1..15, found {found}")
    hist = _histogram(symbols, chunk_size, direct_bits)
    if hist.symbol_count == 0:
        return np.empty(0, np.uint8)
    if hist.constant_value is not None:
        return constant_section(hist.constant_value)
    plan = make_plan(hist, max_scale_bits, lanes)
    enc_table = np.empty((hist.token_counts.size, 5), np.int64)
    _k.build_encoder_table(plan.freqs, plan.scale_bits, enc_table)
    chunks = hist.chunk_count
    # <= one renormalization word per symbol plus two words of final state per lane
    row_words = min(chunk_size, hist.symbol_count) + 2 * plan.lanes
    words = np.empty((chunks, row_words), np.uint16)
    word_starts = np.empty(chunks, np.int64)
    states = np.empty((chunks, plan.lanes), np.int64)
    raw_bytes = (hist.chunk_raw_bits + 7) // 8
    raw_offsets = np.zeros(chunks + 1, np.int64)
    np.cumsum(raw_bytes, out=raw_offsets[1:])
    raw = np.empty(int(raw_offsets[-1]), np.uint8)
    for_size(_k.encode_chunks, symbols.nbytes)(
        symbols, chunk_size, direct_bits, enc_table, states, words, word_starts,
        hist.chunk_raw_bits, raw, raw_offsets,
    )  # fmt: skip

    rans_bytes = 2 * (words.shape[1] - word_starts)
    directory = chunk_directory(rans_bytes, raw_bytes)
    header = section_header(hist, plan)
    payload_start = header.size + int(varint_sizes(directory).sum())
    chunk_bytes = rans_bytes + raw_bytes
    offsets = payload_start + np.concatenate(([0], np.cumsum(chunk_bytes)[:-1]))
    out = np.empty(payload_start + int(chunk_bytes.sum()), np.uint8)
    out[: header.size] = header
    _t.write_varints(directory, out, header.size)
    for_size(_k.assemble_chunks, out.nbytes)(words, word_starts, raw, raw_offsets, out, offsets)
    return out


def encode(symbols: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Entropy-code a uint32 stream into a self-contained byte section.

    The section does not store the symbol count; :func:`decode` needs it from the caller.
    Output is deterministic: the same symbols and chunk size give the same bytes.

    Parameters
    ----------
    symbols : numpy.ndarray
        1-D uint32 stream; any values, best for small ones (below 256 they are coded
        directly, larger ones as a bit-length escape plus raw bits).
    chunk_size : int, optional
        Symbols per independently coded chunk (power of two in 2**8 .. 2**24). Chunks are
        encoded and decoded in parallel.

    Returns
    -------
    numpy.ndarray
        uint8 section, empty when ``symbols`` is empty.

    Examples
    --------
    >>> import numpy as np
    >>> from embzip.stages.rans import decode
    >>> symbols = np.array([0, 0, 0, 1, 0, 2, 70000, 0], dtype=np.uint32)
    >>> section = encode(symbols)
    >>> np.array_equal(decode(section, symbols.size), symbols)
    True
    """
    symbols = _check_symbols(symbols)
    _check_chunk_size(chunk_size)
    return _encode(symbols, int(chunk_size))
