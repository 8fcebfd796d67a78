"""Quantized linear layers: bit-identical to torch's dynamic int8 Linear and fp16-weight Linear.

int8: ``torch.ao.nn.quantized.dynamic.Linear`` built by ``from_float`` with the default
(per-tensor) or per-channel dynamic qconfig, called through ``quantized::linear_dynamic``.
fp16: ``quantized::linear_prepack_fp16`` + ``quantized::linear_dynamic_fp16``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from embzip.lowprec import (
    activation_qparams,
    flush_to_zero,
    linear_dynamic_int8,
    linear_fp16_weight,
    quantize_weight_int8,
)

F32 = np.float32


def _torch():
    return pytest.importorskip("torch", reason="torch==2.13.0 is the oracle for bit-exactness")


def _vnni():
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_vnni" in f.read()
    except OSError:
        return False


@st.composite
def layers(draw, max_k=70):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m = draw(st.integers(1, 12))
    k = draw(st.integers(1, max_k))
    n = draw(st.integers(1, 40))
    xs = 10.0 ** draw(st.integers(-9, 5))
    x = rng.standard_normal((m, k)) * xs
    shape = draw(st.sampled_from(["centered", "shifted", "positive", "negative", "zeros", "const"]))
    if shape == "shifted":
        x += xs * 3
    elif shape == "positive":
        x = np.abs(x)
    elif shape == "negative":
        x = -np.abs(x)
    elif shape == "zeros":
        x[:] = 0
    elif shape == "const":
        x[:] = xs
    w = rng.standard_normal((n, k)) * 10.0 ** draw(st.integers(-6, 2))
    if draw(st.booleans()):
        w[:, 0] = 0  # a zero column, and possibly an all-zero row below
    if draw(st.booleans()):
        w[0] = 0
    b = rng.standard_normal(n).astype(F32) if draw(st.booleans()) else None
    return x.astype(F32), w.astype(F32), b


def _torch_int8(torch, x, w, b, reduce_range, per_channel, engine):
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao import quantization as tq

    torch.backends.quantized.engine = engine
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        if b is not None:
            lin.bias.copy_(torch.from_numpy(b))
    lin.qconfig = tq.per_channel_dynamic_qconfig if per_channel else tq.default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = nnqd.Linear.from_float(lin)
        y = torch.ops.quantized.linear_dynamic(torch.from_numpy(x), q._packed_params._packed_params,
                                               reduce_range)
    return y.numpy(), q.weight()


def _pairs_saturate(x, w, reduce_range):
    # FBGEMM's AVX2 u8*s8 kernel sums adjacent k pairs in int16 with saturation (vpmaddubsw);
    # VNNI hardware does not. reduce_range=True keeps every pair below 2**15 by construction.
    scale, zp = activation_qparams(x, reduce_range)
    qx = np.clip(np.rint(x.astype(np.float64) / scale + zp), 0, 255)
    qw, _ = quantize_weight_int8(w)
    k = x.shape[1] + x.shape[1] % 2
    prod = np.zeros((x.shape[0], w.shape[0], k))
    prod[:, :, : x.shape[1]] = qx[:, None, :] * qw[None, :, :].astype(np.float64)
    pairs = prod[:, :, 0::2] + prod[:, :, 1::2]
    return np.abs(pairs).max(initial=0) > 32767


@given(layers(), st.booleans(), st.booleans(), st.sampled_from(["fbgemm", "x86"]))
def test_int8_dynamic_linear_matches_torch(layer, reduce_range, per_channel, engine):
    torch = _torch()
    x, w, b = layer
    if not reduce_range and not _vnni():
        assume(not _pairs_saturate(x, w, reduce_range))
    want, qweight = _torch_int8(torch, x, w, b, reduce_range, per_channel, engine)
    got = linear_dynamic_int8(x, w, b, reduce_range=reduce_range, per_channel=per_channel)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    q, scales = quantize_weight_int8(w, per_channel=per_channel)
    np.testing.assert_array_equal(q, qweight.int_repr().numpy())
    want_s = qweight.q_per_channel_scales().numpy() if per_channel else [qweight.q_scale()]
    np.testing.assert_array_equal(scales.astype(np.float64), np.asarray(want_s, np.float64))


@given(layers(max_k=1200))
def test_fp16_weight_linear_matches_torch(layer):
    torch = _torch()
    x, w, b = layer
    w = w * F32(1e3)  # reach fp16 overflow: torch clamps weights to +-65504 (with a warning)
    packed = torch.ops.quantized.linear_prepack_fp16(torch.from_numpy(w),
                                                     None if b is None else torch.from_numpy(b))
    want = torch.ops.quantized.linear_dynamic_fp16(torch.from_numpy(x), packed).numpy()
    got = linear_fp16_weight(x, w, b)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def _torch_fp16(torch, x, w, b=None):
    packed = torch.ops.quantized.linear_prepack_fp16(torch.from_numpy(w), None if b is None else torch.from_numpy(b))
    return torch.ops.quantized.linear_dynamic_fp16(torch.from_numpy(x), packed).numpy()


# (M, K, N): whole 32- and 16-column blocks beside leftovers, K across 512-row blocks, M past
# FBGEMM's 120-row batches; random draws rarely combine N >= 32 with K > 512
FP16_SHAPES = [(1, 513, 32), (3, 1030, 33), (2, 600, 64), (4, 1600, 70), (2, 1025, 16), (1, 700, 17),
               (121, 520, 40), (2, 512, 32), (1, 1, 1), (5, 3, 35)]


@pytest.mark.parametrize("columns", [None, 16, 32], ids=["host", "16", "32"])
def test_fp16_weight_column_blocks_chain_across_k_blocks(columns):
    """Whole kernel column blocks are one FMA chain over all of K; leftover columns restart per
    512 rows. Built so that the two disagree: a 1 then tiny terms past row 512."""
    from embzip.lowprec import fbgemm_columns

    torch = _torch()
    width = fbgemm_columns() if columns is None else columns
    x = np.ones((1, 514), F32)
    w = np.zeros((width + 3, 514), F32)
    w[:, 0] = 1
    w[:, 512:] = 2.0**-24  # each tiny term is lost against 1, but their block sum is not
    got = linear_fp16_weight(x, w, fbgemm_columns=columns)
    assert (got[0, :width] == 1.0).all() and (got[0, width:] == F32(1 + 2.0**-23)).all(), got
    if width == fbgemm_columns():  # this CPU's FBGEMM: the oracle
        np.testing.assert_array_equal(got.view(np.uint32), _torch_fp16(torch, x, w).view(np.uint32))


@pytest.mark.parametrize("shape", FP16_SHAPES, ids=str)
@pytest.mark.parametrize("data", ["normal", "zeros", "wide"])
def test_fp16_weight_linear_matches_torch_across_blocks(shape, data):
    torch = _torch()
    m, k, n = shape
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    x = rng.standard_normal((m, k)).astype(F32)
    w = rng.standard_normal((n, k)).astype(F32)
    if data == "zeros":  # products of +-0: the first term is the plain product, so -0 stays
        x[:] = 0
        x[:, ::3] = -0.0
        w[: n // 2] = -np.abs(w[: n // 2])
    elif data == "wide":
        x *= F32(10.0) ** rng.integers(-20, 20, size=(m, k)).astype(F32)
    for b in (None, rng.standard_normal(n).astype(F32)):
        got = linear_fp16_weight(x, w, b)
        np.testing.assert_array_equal(got.view(np.uint32), _torch_fp16(torch, x, w, b).view(np.uint32))


def test_fp16_weight_negative_zero_product_stays():
    torch = _torch()
    x, w = np.array([[1.0]], F32), np.array([[-0.0]], F32)
    got = linear_fp16_weight(x, w)
    assert got.view(np.uint32)[0, 0] == 0x80000000
    np.testing.assert_array_equal(got.view(np.uint32), _torch_fp16(torch, x, w).view(np.uint32))


@pytest.mark.parametrize("bad", [8, 0, True, 32.0, "32"])
def test_fp16_weight_columns_are_16_or_32(bad):
    with pytest.raises(ValueError, match="fbgemm_columns"):
        linear_fp16_weight(np.ones((1, 2), F32), np.ones((1, 2), F32), fbgemm_columns=bad)


def test_requantize_rounds_once():
    # float(raw) * scale + bias with one rounding: 2**24 - 1 times (1 + 2**-23) plus 1 is
    # 2**24 + 2 - 2**-23 exactly -> 2**24 + 2; rounding the product first would give 2**24.
    from embzip.lowprec.linear import _requantize_for_float

    out = np.empty((1, 1), F32)
    acc, colsum = np.array([[2.0**24 + 99]]), np.array([1], np.int64)  # raw = acc - 100 * 1
    mult, bias = np.array([1 + 2**-23], F32), np.array([1.0], F32)
    _requantize_for_float(acc, colsum, np.int64(100), mult, bias, True, out)
    assert out[0, 0] == 2**24 + 2
    acc = np.array([[2.0**31 + 5]])  # int32 wrap-around: 2**31 + 5 - 0 -> -2**31 + 5
    _requantize_for_float(acc, colsum, np.int64(0), np.ones(1, F32), np.zeros(1, F32), False, out)
    assert out[0, 0] == F32(-(2**31) + 5)


def test_batch_shapes_and_empty():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 5)).astype(F32)
    x = rng.standard_normal((2, 4, 5)).astype(F32)
    y = linear_dynamic_int8(x, w)
    assert y.shape == (2, 4, 3)
    np.testing.assert_array_equal(y.reshape(8, 3), linear_dynamic_int8(x.reshape(8, 5), w))
    assert linear_dynamic_int8(np.zeros((0, 5), F32), w).shape == (0, 3)
    assert linear_fp16_weight(np.zeros((0, 5), F32), w).shape == (0, 3)
    assert linear_fp16_weight(x[0, 0], w).shape == (3,)


@pytest.mark.parametrize("shape", [(2, 0), (2, 4, 0), (0,)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_no_input_features_is_the_bias(shape, with_bias):
    """K = 0: the empty sum plus the bias, as F.linear gives (torch's quantized ops return
    uninitialised memory there, no oracle). reshape(-1, 0) raised before."""
    torch = _torch()
    w = np.zeros((3, 0), F32)
    b = np.array([1.5, -0.0, -2.25], F32) if with_bias else None
    expected = torch.nn.functional.linear(torch.zeros(shape), torch.from_numpy(w),
                                          None if b is None else torch.from_numpy(b)).numpy()
    for y in (linear_dynamic_int8(np.zeros(shape, F32), w, b), linear_fp16_weight(np.zeros(shape, F32), w, b),
              linear_fp16_weight(np.zeros(shape, F32), w, b, accumulate="fp16")):
        assert y.shape == shape[:-1] + (3,) and y.dtype == F32
        np.testing.assert_array_equal(y, expected)


def test_big_endian_float32_is_float32():
    rng = np.random.default_rng(0)
    x, w, b = (rng.standard_normal(s).astype(F32) for s in ((4, 5), (3, 5), (3,)))
    swapped = [a.astype(a.dtype.newbyteorder(">")) for a in (x, w, b)]
    np.testing.assert_array_equal(linear_dynamic_int8(*swapped), linear_dynamic_int8(x, w, b))
    np.testing.assert_array_equal(linear_fp16_weight(*swapped), linear_fp16_weight(x, w, b))


def test_activation_qparams_refuses_what_it_cannot_quantize():
    with pytest.raises(ValueError, match="finite"):
        activation_qparams(np.array([1.0, np.nan], F32))
    with pytest.raises(ValueError, match="finite"):
        activation_qparams(np.array([1.0, np.inf], F32))
    with pytest.raises(TypeError, match="float32"):  # (1e300 became inf with a warning)
        activation_qparams(np.array([1.0, 1e300]))


@given(layers())
def test_fp16_accumulation_emulation(layer):
    # independent reference: halves in, each k step rounded to fp16 (exact in float64 first)
    x, w, b = layer
    got = linear_fp16_weight(x, w, b, accumulate="fp16")
    with np.errstate(over="ignore"):
        xh = x.astype(np.float16).astype(np.float64)
    wh = np.clip(w, -65504, 65504).astype(np.float16).astype(np.float64)
    acc = np.zeros((x.shape[0], w.shape[0]))
    with np.errstate(over="ignore", invalid="ignore"):  # fp16 overflow to inf is the point
        for k in range(x.shape[1]):
            acc = (xh[:, k:k + 1] * wh[None, :, k] + acc).astype(np.float16).astype(np.float64)
        if b is not None:
            acc = (acc + b.astype(np.float16).astype(np.float64)).astype(np.float16)
    np.testing.assert_array_equal(got, acc.astype(F32))
    assert np.array_equal(got.astype(np.float16).astype(F32), got, equal_nan=True)


@given(layers(), st.sampled_from(["fp32", "fp16"]))
def test_flush_subnormals_leaves_no_subnormal(layer, accumulate):
    x, w, b = layer
    tiny = 2.0**-126 if accumulate == "fp32" else 2.0**-14
    got = linear_fp16_weight(x, w, b, accumulate=accumulate, flush_subnormals=True)
    assert not ((np.abs(got) < tiny) & (got != 0)).any()
    i8 = linear_dynamic_int8(x, w, b, flush_subnormals=True)
    assert not ((np.abs(i8) < 2.0**-126) & (i8 != 0)).any()


@given(st.integers(1, 6), st.integers(1, 60), st.integers(1, 9), st.integers(0, 2**31),
       st.sampled_from(["fp32", "fp16"]))
def test_flush_subnormals_changes_nothing_without_subnormals(m, k, n, seed, accumulate):
    # small integers: every input, partial sum and output is 0 or far from the subnormal range
    rng = np.random.default_rng(seed)
    x = rng.integers(-8, 9, (m, k)).astype(F32)
    w = rng.integers(-8, 9, (n, k)).astype(F32)
    b = rng.integers(-8, 9, n).astype(F32)
    plain = linear_fp16_weight(x, w, b, accumulate=accumulate)
    np.testing.assert_array_equal(
        linear_fp16_weight(x, w, b, accumulate=accumulate, flush_subnormals=True), plain)
    np.testing.assert_array_equal(linear_dynamic_int8(x, w, b, flush_subnormals=True),
                                  linear_dynamic_int8(x, w, b))


def test_flush_subnormals_flushes_partial_sums():
    # 2**-120 * 2**-10 = 2**-130 is subnormal in fp32: kept without FTZ, flushed with it
    x = np.array([[2.0**-120, 1.0]], F32)
    w = np.array([[2.0**-10, 0.0]], F32)
    assert linear_fp16_weight(x, w)[0, 0] == F32(2.0**-130)
    assert linear_fp16_weight(x, w, flush_subnormals=True)[0, 0] == 0.0


def test_flush_to_zero_keeps_sign():
    out = flush_to_zero(np.array([1e-40, -1e-40, 1e-30, 3e-5], F32), "fp16")
    assert out.tolist()[:2] == [0.0, 0.0] and np.signbit(out[1]) and out[3] == 0
    with pytest.raises(ValueError, match=r"fmt must be one of \('fp32', 'fp16'\), found 'bf16'"):
        flush_to_zero(np.ones(1, F32), "bf16")


def test_bad_arguments():
    w = np.ones((3, 4), F32)
    with pytest.raises(ValueError, match=r"x has 5 features but weight expects in_features=4"):
        linear_dynamic_int8(np.ones((2, 5), F32), w)
    with pytest.raises(ValueError, match="x must be finite"):
        linear_dynamic_int8(np.full((2, 4), np.nan, F32), w)
    with pytest.raises(ValueError, match="weight must be finite"):
        linear_fp16_weight(np.ones((2, 4), F32), np.full((3, 4), np.inf, F32))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\), found \(4,\)"):
        linear_fp16_weight(np.ones((2, 4), F32), w, np.ones(4, F32))
    with pytest.raises(TypeError, match="x must be a float32 .* found dtype float64"):
        linear_fp16_weight(np.ones((2, 4)), w)
    with pytest.raises(ValueError, match=r"accumulate must be one of .*, found 'bf16'"):
        linear_fp16_weight(np.ones((2, 4), F32), w, accumulate="bf16")
    with pytest.raises(TypeError, match="reduce_range must be a bool, found int 1"):
        linear_dynamic_int8(np.ones((2, 4), F32), w, reduce_range=1)
    with pytest.raises(ValueError, match=r"weight must be 2-D .* found shape \(4,\)"):
        linear_fp16_weight(np.ones((2, 4), F32), np.ones(4, F32))
