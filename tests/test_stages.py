"""Unit tests of the stages below the public API: checksum, bit-packer, dedup, step, cost model."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import embzip
from embzip import costmodel
from embzip.checksum import crc32c
from embzip.cpu.checksum import CRC_TABLES, crc32c_update
from embzip.errors import CorruptFrameError
from embzip.stages import bitpack, dedup, quantize


def _crc_reference(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@given(st.binary(max_size=300))
def test_crc32c_matches_bitwise_reference(data):
    assert crc32c(data) == _crc_reference(data)


@pytest.mark.parametrize("size", [(2 << 20) - 1, 2 << 20, (3 << 20) + 7])
def test_crc32c_parallel_chunks_equal_serial(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    serial = int(crc32c_update(np.uint32(0), data, CRC_TABLES))
    assert crc32c(data) == serial
    cut = size // 3
    assert crc32c(data[cut:], crc32c(data[:cut])) == serial


uint32_streams = hnp.arrays(np.uint32, st.integers(0, 2000),
                            elements=st.one_of(st.integers(0, 7), st.integers(0, 2**32 - 1)))


@given(uint32_streams)
@settings(max_examples=60)
def test_bitpack_round_trip_and_exact_plan(values):
    section = bitpack.encode(values)
    widths, size = bitpack.plan(values)
    assert size == section.size
    assert np.array_equal(bitpack.decode(section, values.size), values)


@given(uint32_streams, st.sampled_from([np.float32, np.float64]))
@settings(max_examples=30)
def test_bitpack_fused_dequantize_matches_two_steps(values, dtype):
    values = values & np.uint32(0x7FFFFFFF)
    step = dtype(0.125)
    section = bitpack.encode(values)
    fused = bitpack.decode(section, values.size, step=step)
    two_step = quantize.dequantize(values, step, np.empty(values.size, dtype))
    assert fused.tobytes() == two_step.tobytes()


def test_bitpack_rejects_inconsistent_sections():
    section = bitpack.encode(np.arange(1000, dtype=np.uint32))
    with pytest.raises(CorruptFrameError):
        bitpack.decode(section[:-1], 1000)
    with pytest.raises(CorruptFrameError):
        bitpack.decode(section, 999)
    bad = section.copy()
    bad[4] = 33  # a width above 32
    with pytest.raises(CorruptFrameError):
        bitpack.decode(bad, 1000)


def test_dedup_references_and_outlier_rows():
    codes = np.array([[1, 2], [3, 4], [1, 2], [1, 2], [3, 4], [1, 2]], dtype=np.uint32)
    mask = np.zeros_like(codes, dtype=np.uint8)
    mask[3, 0] = 1  # a row with an outlier is never matched: its verbatim value may differ
    found = dedup.deduplicate(codes, mask)
    assert found.refs.tolist() == [0, 0, 1, 0, 2, 1]
    assert found.unique_rows.tolist() == [0, 1, 3]
    assert dedup.resolve(found.refs, 3).tolist() == [0, 1, 0, 2, 1, 0]




def _flooding_codes(n: int, seed: int) -> np.ndarray:
    """n distinct one-column rows whose hashes under key ``seed`` all fall in the first n/32
    slots of the table: what an attacker who knows the key can build (found by search)."""
    from embzip.cpu import dedup as kernels

    table = 1 << (2 * n - 1).bit_length()
    found, start = [], 0
    while sum(map(len, found)) < n:
        codes = np.arange(start, start + (1 << 18), dtype=np.uint32).reshape(-1, 1)
        start += 1 << 18
        hashes = np.empty(codes.shape[0], np.uint64)
        kernels.row_hashes(codes, np.zeros(codes.shape, np.uint8), np.uint64(seed), hashes,
                           np.empty(codes.shape[0], np.uint8))
        found.append(codes[(hashes & np.uint64(table - 1)) < n // 32])
    return np.concatenate(found)[:n]


def test_dedup_hash_is_keyed_so_crafted_rows_do_not_share_slots():
    """Unkeyed, rows chosen to hash into n/32 slots made the linear probing quadratic (a 1 MiB
    array compressed in 46 s). Rows crafted for one key spread out under the process's key."""
    from embzip.cpu import dedup as kernels

    n = 1 << 12
    codes = _flooding_codes(n, seed=0)
    table = 1 << (2 * n - 1).bit_length()
    slots = {}
    for key in (0, int(dedup.HASH_SEED)):
        hashes = np.empty(n, np.uint64)
        kernels.row_hashes(codes, np.zeros(codes.shape, np.uint8), np.uint64(key), hashes, np.empty(n, np.uint8))
        slots[key] = np.unique(hashes & np.uint64(table - 1)).size
    assert slots[0] <= n // 32  # the attack, against the key it was built for
    assert slots[int(dedup.HASH_SEED)] > n // 2, slots  # ~0.88 n for a random key


def test_frames_do_not_depend_on_the_hash_key(monkeypatch):
    x = np.random.default_rng(9).normal(size=(300, 8)).astype(np.float32)
    x[::3] = x[1]
    frames = set()
    for key in (0, 1, 2**63 + 12345):
        monkeypatch.setattr(dedup, "HASH_SEED", np.uint64(key))
        frame = embzip.compress(x, abs_error=1e-3, dedup=True)
        assert "dedup" in embzip.inspect(frame).stages
        frames.add(frame.tobytes())
    assert len(frames) == 1


@pytest.mark.parametrize("refs,unique", [([0, 2], 1), ([1], 1), ([0, 0], 1), ([0], 2)])
def test_dedup_resolve_rejects_inconsistent_streams(refs, unique):
    with pytest.raises(CorruptFrameError):
        dedup.resolve(np.array(refs, dtype=np.uint32), unique)


@given(st.floats(min_value=1e-45, max_value=1e300, allow_nan=False), st.sampled_from([np.float32, np.float64]))
def test_step_never_exceeds_twice_the_bound(abs_error, dtype):
    step = quantize.choose_step(abs_error, np.dtype(dtype))
    if step is None:  # the bound underflows the dtype: the caller stores raw
        assert float(dtype(2 * abs_error)) == 0 or np.nextafter(dtype(2 * abs_error), dtype(0)) == 0
        return
    assert step.dtype == dtype and step > 0 and np.isfinite(step)
    assert float(step) <= 2 * abs_error or float(step) == 2.0 ** (np.finfo(dtype).maxexp - 1)


def test_zero_bound_step_makes_the_constant_exact():
    assert quantize.choose_step(0.0, np.dtype(np.float32), constant=2.25) == np.float32(2.25)
    assert quantize.choose_step(0.0, np.dtype(np.float64), constant=0.0) == 1.0


def test_cost_model_pays_and_choose():
    fast = costmodel.EncoderCost(2e9, 3e9)
    assert costmodel.pays(10, 125e6, fast)  # 1 Gbit/s: 0.1 + 0.1 < 1
    assert costmodel.pays(1.2, 125e6, fast)  # 0.833 + 0.104 < 1
    assert not costmodel.pays(1.1, 125e6, fast)  # 0.909 + 0.104 > 1
    assert not costmodel.pays(100, 10e9, fast)  # a link faster than the codec
    sizes = {"bitpack": 1000, "rans": 800}
    assert costmodel.choose(100_000, sizes) == "rans"  # saves 20 %
    assert costmodel.choose(100_000, {"bitpack": 1000, "rans": 990}) == "bitpack"  # saves 1 %
    # On a fast link the slower encoder's time outweighs its bytes.
    assert costmodel.choose(100_000_000, {"bitpack": 20_000_000, "rans": 15_000_000}, bandwidth=25e9) == "bitpack"
    assert costmodel.choose(100_000_000, {"bitpack": 20_000_000, "rans": 15_000_000}, bandwidth=10e6) == "rans"


@given(hnp.arrays(np.float32, st.integers(0, 1500), elements=st.floats(-1e3, 1e3, width=32)),
       st.sampled_from([1e-3, 0.5, 1e-9]))
@settings(max_examples=40, deadline=None)
def test_fused_fast_path_writes_the_same_frame_as_the_staged_path(values, abs_error):
    """The fused quantize+pack path must be an optimization only: same bytes as the stages."""
    from embzip import _codec
    from embzip.format import FrameHeader
    from embzip.format.ids import DTypeId, ErrorMode, Flags, Strategy

    values[::7] = np.nan
    base = FrameHeader(DTypeId.FLOAT32, values.shape, ErrorMode.ABS, int(Strategy.FAST), Flags.NONE,
                       abs_error, abs_error, 0.0, ())
    step = quantize.choose_step(abs_error, values.dtype)
    if values.size == 0 or step is None:
        return
    fused = _codec._encode_fast(values, base, step)
    staged = _codec._encode_materialized(values, base, step, Strategy.FAST, None, try_dedup=False)
    assert fused.tobytes() == staged.tobytes()


def test_frame_declaring_more_memory_than_exists_raises_embzip_error():
    """A constant rANS section lets a 90-byte frame declare 2**47 elements: a clean error."""
    import hostile_frames

    with pytest.raises(embzip.FrameTooLargeError, match="more than can be allocated"):
        embzip.decompress(hostile_frames.declaring(2**47))


@given(uint32_streams, st.sampled_from([np.float32, np.float64]))
@settings(max_examples=30, deadline=None)
def test_rans_fused_dequantize_matches_two_steps(values, dtype):
    from embzip.stages import rans

    values = values & np.uint32(0x7FFFFFFF)
    step = dtype(0.375)
    section = rans.encode(values)
    fused = rans.decode(section, values.size, step=step)
    two_step = quantize.dequantize(values, step, np.empty(values.size, dtype))
    assert fused.dtype == dtype and fused.tobytes() == two_step.tobytes()
