"""Tests of the compact rANS entropy coder (embzip.stages.rans)."""

from __future__ import annotations

import doctest

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embzip.errors import CorruptFrameError
from embzip.stages import rans

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
U32_MAX = 2**32 - 1


def _round_trip(symbols: np.ndarray, section: np.ndarray) -> None:
    decoded = rans.decode(section, symbols.size)
    assert decoded.dtype == np.uint32
    np.testing.assert_array_equal(decoded, symbols)


def _geometric(rng, size, p):
    return (rng.geometric(p, size) - 1).astype(np.uint32)


@st.composite
def symbol_streams(draw, max_size=3000):
    """Streams shaped like zigzagged codes: skewed small values, escapes, extremes."""
    kind = draw(st.sampled_from(["geometric", "zeros_mostly", "wide", "mixture", "equal", "two"]))
    size = draw(st.integers(0, max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "geometric":
        return _geometric(rng, size, draw(st.floats(0.02, 0.95)))
    if kind == "zeros_mostly":
        symbols = np.zeros(size, np.uint32)
        hits = rng.random(size) < 0.1
        symbols[hits] = rng.integers(1, 40, hits.sum())
        return symbols
    if kind == "wide":
        return rng.integers(0, 2**32, size, dtype=np.uint64).astype(np.uint32)
    if kind == "mixture":
        symbols = _geometric(rng, size, 0.3)
        hits = rng.random(size) < 0.05
        shifts = rng.integers(0, 33, hits.sum()).astype(np.uint64)  # any bit length 0..32
        wide = rng.integers(0, 2**32, hits.sum(), dtype=np.uint64) >> shifts
        symbols[hits] = wide.astype(np.uint32)
        return symbols
    if kind == "equal":
        return np.full(size, draw(st.sampled_from([0, 1, 255, 256, 70000, U32_MAX])), np.uint32)
    values = draw(st.lists(st.integers(0, U32_MAX), min_size=2, max_size=2, unique=True))
    return np.array(values, np.uint32)[rng.integers(0, 2, size)]


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "symbols",
    [
        np.zeros(0, np.uint32),
        np.array([0], np.uint32),
        np.array([U32_MAX], np.uint32),
        np.array([7, 7, 7], np.uint32),
        np.zeros(100_000, np.uint32),
        np.full(5000, U32_MAX, np.uint32),
        np.array([0, U32_MAX], np.uint32),
        np.array([2**31, 2**31 + 1, 2**32 - 2], np.uint32),  # one escape token, many values
        np.arange(256, dtype=np.uint32),
        np.array([1 << b for b in range(32)] + [(1 << b) - 1 for b in range(1, 33)], np.uint32),
    ],
    ids=lambda a: f"n{a.size}",
)
def test_round_trip_edge_cases(symbols):
    _round_trip(symbols, rans.encode(symbols))


def test_empty_and_constant_sections_are_tiny():
    assert rans.encode(np.zeros(0, np.uint32)).size == 0
    assert rans.encode(np.zeros(10**6, np.uint32)).size == 2  # kind + value
    assert rans.encode(np.full(10, U32_MAX, np.uint32)).size == 6


@FAST
@given(symbol_streams(), st.sampled_from([256, 1024, rans.DEFAULT_CHUNK_SIZE]))
def test_round_trip_property(symbols, chunk_size):
    _round_trip(symbols, rans.encode(symbols, chunk_size=chunk_size))


@FAST
@given(st.lists(st.integers(0, U32_MAX), max_size=40))
def test_round_trip_any_values(values):
    symbols = np.array(values, np.uint32)
    _round_trip(symbols, rans.encode(symbols))


@FAST
@given(
    symbol_streams(max_size=1500),
    st.sampled_from([256, 512]),
    st.integers(0, rans.MAX_DIRECT_BITS),
    st.integers(1, rans.MAX_SCALE_BITS),
    st.sampled_from([1, 2, 4, 8, 32]),
)
def test_decoder_accepts_every_parameter(symbols, chunk_size, direct_bits, max_scale_bits, lanes):
    """The format's fields have ranges; the decoder must handle every legal value."""
    section = rans._encode(symbols, chunk_size, direct_bits, max_scale_bits, lanes)
    _round_trip(symbols, section)


@pytest.mark.parametrize("chunk_size", [256, rans.DEFAULT_CHUNK_SIZE])
def test_large_skewed_stream_multi_chunk(chunk_size):
    rng = np.random.default_rng(5)
    symbols = _geometric(rng, 300_000, 0.4)
    symbols[rng.random(symbols.size) < 0.001] = 123_456_789
    _round_trip(symbols, rans.encode(symbols, chunk_size=chunk_size))  # 1172 or 5 chunks


# ---------------------------------------------------------------- determinism, size


def test_deterministic_across_runs_and_thread_counts():
    rng = np.random.default_rng(11)
    symbols = _geometric(rng, 200_000, 0.2)
    symbols[::97] = rng.integers(256, 2**32, symbols[::97].size, dtype=np.uint64).astype(np.uint32)
    first = rans.encode(symbols, chunk_size=4096)
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = rans.encode(symbols, chunk_size=4096)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_array_equal(first, single)
    np.testing.assert_array_equal(first, rans.encode(symbols.copy(), chunk_size=4096))


def _entropy_bytes(symbols):
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / symbols.size
    return float(-(counts * np.log2(p)).sum()) / 8


@pytest.mark.parametrize("p", [0.9, 0.5, 0.1])
def test_size_close_to_order0_entropy(p):
    symbols = _geometric(np.random.default_rng(3), 200_000, p)
    size = rans.encode(symbols).size
    assert size <= 1.01 * _entropy_bytes(symbols) + 300


def _huffman_bits_per_symbol(symbols):
    """Average code length of an optimal prefix (Huffman) code for the stream."""
    _, counts = np.unique(symbols, return_counts=True)
    heap = sorted(int(c) for c in counts)
    total = 0
    while len(heap) > 1:  # each merge lengthens every code below it by one bit
        merged = heap.pop(0) + heap.pop(0)
        total += merged
        heap.append(merged)
        heap.sort()
    return total / symbols.size


def test_beats_huffman_floor_on_skewed_stream():
    """The measurement behind docs/entropy.md's choice of rANS over Huffman."""
    symbols = np.zeros(100_000, np.uint32)
    rng = np.random.default_rng(4)
    hits = rng.random(symbols.size) < 0.05
    symbols[hits] = rng.integers(1, 8, hits.sum())
    entropy = 8 * _entropy_bytes(symbols) / symbols.size  # 0.425 bits/symbol
    huffman = _huffman_bits_per_symbol(symbols)  # 1.142: at least 1 bit per symbol
    coded = 8 * rans.encode(symbols).size / symbols.size  # 0.4286, table included
    assert coded <= 1.01 * entropy and huffman >= 1.0 and huffman / coded > 2.5


@FAST
@given(symbol_streams(max_size=20_000))
def test_estimate_size_accuracy(symbols):
    actual = rans.encode(symbols).size
    estimate = rans.estimate_size(symbols)
    assert abs(estimate - actual) <= 0.03 * actual + 8


def test_estimate_size_from_histogram():
    symbols = _geometric(np.random.default_rng(8), 100_000, 0.3)
    hist = rans.histogram(symbols)
    assert rans.estimate_size(hist) == rans.estimate_size(symbols)
    assert hist.symbol_count == symbols.size and hist.chunk_count == 2
    assert hist.token_counts.sum() == symbols.size


def test_histogram_counts_escapes():
    symbols = np.array([0, 0, 5, 255, 256, 511, 512, U32_MAX], np.uint32)
    hist = rans.histogram(symbols)
    assert hist.token_counts[0] == 2 and hist.token_counts[5] == 1 and hist.token_counts[255] == 1
    assert hist.token_counts[256] == 2  # bit length 9
    assert hist.token_counts[257] == 1  # bit length 10
    assert hist.token_counts[256 + 23] == 1  # bit length 32
    assert hist.chunk_raw_bits.tolist() == [8 + 8 + 9 + 31]
    assert hist.constant_value is None
    assert rans.histogram(np.full(3, 300, np.uint32)).constant_value == 300


# --------------------------------------------------------------------- API contract


def test_decode_into_out_and_from_unaligned_read_only_view():
    symbols = _geometric(np.random.default_rng(9), 5000, 0.3)
    section = rans.encode(symbols, chunk_size=1024)
    frame = np.zeros(section.size + 3, np.uint8)
    frame[1 : 1 + section.size] = section
    frame.flags.writeable = False
    view = frame[1 : 1 + section.size]
    out = np.empty(symbols.size, np.uint32)
    assert rans.decode(view, symbols.size, out) is out
    np.testing.assert_array_equal(out, symbols)
    np.testing.assert_array_equal(rans.decode(bytes(section), symbols.size), symbols)


def test_caller_mistakes_raise_builtin_errors():
    symbols = np.arange(10, dtype=np.uint32)
    section = rans.encode(symbols)
    with pytest.raises(TypeError):
        rans.encode(symbols.astype(np.int64))
    with pytest.raises(TypeError):
        rans.encode([1, 2, 3])
    with pytest.raises(ValueError):
        rans.encode(symbols.reshape(2, 5))
    for chunk_size in (100, 128, 2**25):
        with pytest.raises(ValueError):
            rans.encode(symbols, chunk_size=chunk_size)
    with pytest.raises(ValueError):
        rans.decode(section, -1)
    with pytest.raises(TypeError):
        rans.decode(section, 10, np.empty(10, np.int32))
    with pytest.raises(ValueError):
        rans.decode(section, 10, np.empty(11, np.uint32))


def test_docstring_examples():
    from embzip.stages.rans import _decoder, _encoder

    results = [doctest.testmod(module, verbose=False) for module in (_encoder, _decoder)]
    assert sum(r.attempted for r in results) >= 4 and sum(r.failed for r in results) == 0


# --------------------------------------------------------------------- hostile input


def _hostile_sections():
    rng = np.random.default_rng(12)
    mixed = _geometric(rng, 700, 0.3)
    mixed[rng.random(mixed.size) < 0.05] = 1 << 20
    mixed[3] = U32_MAX
    return {
        "constant": (np.full(9, 70000, np.uint32), {}),
        "one_lane": (_geometric(rng, 300, 0.4), {}),
        "escapes_multi_chunk": (mixed, dict(chunk_size=256, lanes=4)),
        "single_escape_token": (np.array([2**31 + 5, 2**31 + 9] * 40, np.uint32), {}),
    }


@pytest.mark.parametrize("name", list(_hostile_sections()))
def test_every_truncation_and_extension_raises(name):
    symbols, params = _hostile_sections()[name]
    section = rans._encode(symbols, **params)
    _round_trip(symbols, section)
    for length in range(section.size):
        with pytest.raises(CorruptFrameError):
            rans.decode(section[:length], symbols.size)
    for extra in (0, 1, 0x80):
        with pytest.raises(CorruptFrameError):
            rans.decode(np.append(section, np.uint8(extra)), symbols.size)


@pytest.mark.parametrize("name", ["one_lane", "escapes_multi_chunk", "single_escape_token"])
def test_wrong_count_raises(name):
    symbols, params = _hostile_sections()[name]
    section = rans._encode(symbols, **params)
    for count in (symbols.size - 1, symbols.size + 1, 0, symbols.size + 256):
        with pytest.raises(CorruptFrameError):
            rans.decode(section, count)


@pytest.mark.parametrize("name", list(_hostile_sections()))
def test_random_bit_flips_raise_or_keep_shape(name):
    symbols, params = _hostile_sections()[name]
    section = rans._encode(symbols, **params)
    rng = np.random.default_rng(13)
    for trial in range(400):
        damaged = section.copy()
        for _ in range(1 + trial % 3):
            damaged[rng.integers(damaged.size)] ^= np.uint8(1 << rng.integers(8))
        try:
            decoded = rans.decode(damaged, symbols.size)
        except CorruptFrameError:
            continue
        assert decoded.shape == symbols.shape and decoded.dtype == np.uint32


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 5000))
def test_random_bytes_raise_or_keep_shape(data, count):
    try:
        decoded = rans.decode(np.frombuffer(data, np.uint8), count)
    except CorruptFrameError:
        return
    assert decoded.shape == (count,)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=60), st.integers(1, 3000), st.binary(min_size=2, max_size=2))
def test_random_rans_bodies_raise_or_keep_shape(body, count, fields):
    """Random bytes behind a plausible header reach the table and chunk decoders."""
    data = np.frombuffer(bytes([rans.KIND_RANS]) + fields + body, np.uint8)
    try:
        decoded = rans.decode(data, count)
    except CorruptFrameError:
        return
    assert decoded.shape == (count,)


def test_huge_count_is_rejected_before_allocating():
    section = rans.encode(_geometric(np.random.default_rng(1), 1000, 0.3))
    with pytest.raises(CorruptFrameError, match="chunks"):
        rans.decode(section, 2**45)


def test_error_messages_name_expected_and_found():
    symbols = _geometric(np.random.default_rng(2), 1000, 0.3)
    section = rans.encode(symbols)
    with pytest.raises(CorruptFrameError, match="expected .* found"):
        rans.decode(section[:-2], symbols.size)
    bad_kind = section.copy()
    bad_kind[0] = 9
    with pytest.raises(CorruptFrameError, match="section kind: expected 1 or 2, found 9"):
        rans.decode(bad_kind, symbols.size)


# -------------------------------------------------------------------- kernel algebra


def test_encoder_reciprocal_division_is_exact():
    """The encoder replaces x // freq by a multiply-shift; check its state update for
    every frequency at the largest scale."""
    from embzip.cpu import rans as kernels

    freqs = np.arange(1, 2**15 + 1, dtype=np.int64)
    table = np.empty((freqs.size, 5), np.int64)
    kernels.build_encoder_table(freqs, 15, table)
    rng = np.random.default_rng(21)
    f = freqs[:, None].astype(np.uint64)
    x_max = np.minimum(f << np.uint64(16), np.uint64(2**31))  # states the encoder divides
    random_states = rng.integers(1, 2**31, (freqs.size, 24), dtype=np.uint64) % x_max
    x = np.concatenate([random_states, x_max - 1, f, f - 1, f + 1], axis=1)
    x = np.maximum(x, 1)
    rcp, shift, bias, complement = (table[:, k : k + 1].astype(np.uint64) for k in range(1, 5))
    quotient = ((x * rcp) >> np.uint64(32)) >> shift
    cum = (np.cumsum(freqs) - freqs)[:, None].astype(np.uint64)
    expected = ((x // f) << np.uint64(15)) + x % f + cum
    np.testing.assert_array_equal(x + bias + quotient * complement, expected)


@FAST
@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=300), st.integers(1, 15))
def test_normalized_frequencies_are_valid(counts, scale_bits):
    from embzip.cpu import rans_table

    counts = np.array(counts, np.int64)
    if counts.sum() == 0 or np.count_nonzero(counts) > 1 << scale_bits:
        return
    freqs = np.empty_like(counts)
    rans_table.normalize_frequencies(counts, scale_bits, freqs)
    assert freqs.sum() == 1 << scale_bits
    np.testing.assert_array_equal(freqs > 0, counts > 0)
