"""fp16 / bf16 casts: bit-identical to torch's CPU conversions; FBGEMM's bf16 rounding."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from embzip.lowprec import bf16_bits, bf16_to_f32, to_bf16, to_fp16

F32 = np.float32

# every float32 bit pattern is fair game: NaNs with payloads, subnormals, +-inf, ties
bit_arrays = hnp.arrays(np.uint32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=40),
                        elements=st.integers(0, 2**32 - 1))
TIES = np.array([0x3F808000, 0x3F818000, 0xBF808000, 0x7F7F8000, 0x7F7FFFFF, 0x00008000,
                 0x00018000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFFFFFFF, 0x7F800001,
                 0x477FEFFF, 0x477FF000, 0x33000000, 0x33000001, 0x387FE000], np.uint32)


def _torch():
    return pytest.importorskip("torch", reason="torch==2.13.0 is the oracle for bit-exactness")


@given(bit_arrays)
def test_bf16_bits_match_torch(u):
    torch = _torch()
    x = u.view(F32)
    want = torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).view(torch.int16)
    got = bf16_bits(x)
    assert got.dtype == np.uint16 and got.shape == x.shape
    np.testing.assert_array_equal(got, want.numpy().view(np.uint16))


@pytest.mark.parametrize("shape", [(), (1,), (1, 1), (3,), (2, 1, 1)], ids=str)
@pytest.mark.parametrize("bits", [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF], ids=hex)
def test_bf16_nan_pattern_matches_torch_for_every_shape(shape, bits):
    # torch converts 0-d tensors with its scalar code (NaN -> 0x7FC0) and others with its
    # vectorized code (NaN -> 0xFFFF); random bit patterns are NaN 1 time in 256, too rarely
    torch = _torch()
    x = np.full(shape, bits, np.uint32).view(F32)
    want = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_bits(x), want)
    assert bf16_bits(x).shape == shape


@st.composite
def laid_out(draw):
    """A float32 array with NaNs (and finite values), laid out as a caller's array may be:
    sliced with steps, transposed, broadcast, with dimensions of size 1 (torch refuses
    negative strides, so none)."""
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    base = np.full(shape, np.nan, F32)
    base.flat[:: draw(st.integers(2, 4))] = 1.5
    steps = tuple(slice(None, None, draw(st.integers(1, 3))) for _ in shape)
    x = base[steps]
    if draw(st.booleans()):
        x = x.transpose(draw(st.permutations(range(x.ndim))))
    if draw(st.booleans()):
        x = np.broadcast_to(x, (draw(st.integers(1, 3)),) + x.shape)
        x = x.transpose(draw(st.permutations(range(x.ndim))))
    return x


@settings(max_examples=300, deadline=None)
@given(laid_out())
def test_bf16_nan_pattern_matches_torch_for_every_layout(x):
    """torch converts with its scalar code (NaN -> 0x7FC0) when its copy loop cannot run
    vectorized over the innermost dimension (strided, broadcast), else 0xFFFF; a strided
    slice gave 0xFFFF here."""
    torch = _torch()
    with warnings.catch_warnings():  # (a broadcast array is read-only: torch warns)
        warnings.simplefilter("ignore", UserWarning)
        want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_bits(x), want, err_msg=f"shape {x.shape} strides {x.strides}")
    np.testing.assert_array_equal(bf16_to_f32(bf16_bits(x)).view(np.uint32) >> 16, want)


@given(bit_arrays)
def test_fp16_bits_match_torch(u):
    torch = _torch()
    x = u.view(F32)
    want = torch.from_numpy(np.ascontiguousarray(x)).half().view(torch.int16).numpy()
    got = to_fp16(x)
    assert got.dtype == np.float16 and got.shape == x.shape
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def test_ties_overflow_and_nan_match_torch():
    torch = _torch()
    x = TIES.view(F32)
    t = torch.from_numpy(x.copy())
    bf = t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    half = t.half().view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_bits(x), bf)
    np.testing.assert_array_equal(to_fp16(x).view(np.uint16), half)


@given(bit_arrays)
def test_to_bf16_is_rne_with_nan_kept(u):
    # independent of torch: exact round-to-nearest-even on the bit pattern, computed in Python
    x = u.reshape(-1).view(F32)
    got = to_bf16(x)
    for xi, gi in zip(x.tolist(), got.tolist()):
        if xi != xi:
            assert gi != gi
            continue
        bits = np.float32(xi).view(np.uint32).item()
        hi, lo = bits >> 16, bits & 0xFFFF
        if lo > 0x8000 or (lo == 0x8000 and hi & 1):
            hi += 1
        want = np.uint32((hi << 16) & 0xFFFFFFFF).view(F32)
        assert want.view(np.uint32) == np.float32(gi).view(np.uint32)


@given(bit_arrays)
def test_fbgemm_bf16_rounding_is_add_and_shift(u):
    # FBGEMM's FloatToBfloat16: (bits + 0x8000) >> 16 on the raw uint32, wrapping at 2**32
    x = u.view(F32)
    want = ((u.astype(np.uint64) + 0x8000) % 2**32 >> 16).astype(np.uint16)
    np.testing.assert_array_equal(bf16_bits(x, rounding="fbgemm"), want)


def test_fbgemm_rounds_ties_away_rne_to_even():
    x = np.array([1.00390625, -1.00390625, 1.01171875], F32)  # ties between bf16 neighbours
    assert bf16_bits(x).tolist() == [0x3F80, 0xBF80, 0x3F82]
    assert bf16_bits(x, rounding="fbgemm").tolist() == [0x3F81, 0xBF81, 0x3F82]


def test_roundtrip_and_types():
    b = np.arange(0, 2**16, 7, dtype=np.uint16)
    assert (bf16_bits(bf16_to_f32(b)) == np.where(np.isnan(bf16_to_f32(b)), 0xFFFF, b)).all()
    assert to_bf16(np.float64(1 / 3)).dtype == F32  # float64 is first rounded to float32
    with pytest.raises(ValueError, match=r"one of \('rne', 'fbgemm'\), found 'up'"):
        to_bf16(np.ones(2, F32), rounding="up")
    with pytest.raises(TypeError, match="real numeric array, found dtype bool"):
        to_fp16(np.ones(2, bool))
    with pytest.raises(TypeError, match="uint16 array, found dtype int32"):
        bf16_to_f32(np.ones(2, np.int32))
