"""Rowwise 8/4/2-bit prepack and unpack: byte-identical to torch's quantized ops.

torch is the oracle (torch==2.13.0, CPU); tests that need it skip with a reason when absent.
Tables are adversarial: constant rows, huge and tiny ranges, subnormals, +-inf, NaN, empty
tables, zero-width and one-row tables, dims that are not multiples of the packing factor.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embzip.lowprec import dequantize_rowwise, packed_dim, packed_row_bytes, quantize_rowwise

F32 = np.float32
SPECIAL = np.array(
    [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-40, -3e-39, 1.1754944e-38,
     3.4028235e38, -3.4028235e38, 65504.0, 65520.0, -70000.0, 1e-7, 6.1e-5, 1.0, -1.0],
    dtype=F32,
)
NAN_BITS = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFA12345], np.uint32).view(F32)


def _torch():
    return pytest.importorskip("torch", reason="torch==2.13.0 is the oracle for bit-exactness")


def _prepack(torch, bits):
    q = torch.ops.quantized
    return {8: q.embedding_bag_byte_prepack, 4: q.embedding_bag_4bit_prepack,
            2: q.embedding_bag_2bit_prepack}[bits]


def _unpack(torch, bits):
    q = torch.ops.quantized
    return {8: q.embedding_bag_byte_unpack, 4: q.embedding_bag_4bit_unpack,
            2: q.embedding_bag_2bit_unpack}[bits]


def assert_same_floats(a, b):
    """Equal shapes, NaN in the same places, identical bits everywhere else."""
    assert a.shape == b.shape and a.dtype == b.dtype == F32
    na, nb = np.isnan(a), np.isnan(b)
    np.testing.assert_array_equal(na, nb)
    np.testing.assert_array_equal(a.view(np.uint32)[~na], b.view(np.uint32)[~nb])


@st.composite
def tables(draw, bits=None, multiple=True, finite=False):
    """Adversarial float32 tables; ``multiple`` keeps dim a multiple of 8 // bits."""
    bits = draw(st.sampled_from([8, 4, 2])) if bits is None else bits
    n = draw(st.integers(0, 6))
    d = draw(st.integers(0, 80))
    per = 1 if bits == 8 else 8 // bits
    if multiple:
        d -= d % per
    kind = draw(st.sampled_from(["normal", "scaled", "constant", "special", "subnormal", "mixed"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** draw(st.integers(-38, 37))
    w = (rng.standard_normal((n, d)) * scale + rng.standard_normal((n, 1)) * scale).astype(F32)
    if kind == "constant":
        w[:] = w[:, :1] if d else w
    elif kind == "special":
        pool = SPECIAL[np.isfinite(SPECIAL)] if finite else np.concatenate([SPECIAL, NAN_BITS])
        m = rng.random((n, d)) < draw(st.floats(0.05, 1.0))
        w[m] = rng.choice(pool, int(m.sum()))
    elif kind == "subnormal":
        w = (rng.integers(-(2**23), 2**23, (n, d)).astype(np.int64)).astype(np.int32)
        w = (np.abs(w).astype(np.uint32) | (np.sign(w) < 0).astype(np.uint32) << 31).view(F32)
    elif kind == "mixed":
        with np.errstate(over="ignore"):
            w[:, ::3] *= F32(1e30)
    if finite:
        w[~np.isfinite(w)] = F32(1.0)
    return bits, np.ascontiguousarray(w)


@given(tables())
def test_prepack_bytes_match_torch(case):
    torch = _torch()
    bits, w = case
    want = _prepack(torch, bits)(torch.from_numpy(w)).numpy()
    got = quantize_rowwise(w, bits)
    assert got.dtype == np.uint8 and got.shape == (w.shape[0], packed_row_bytes(w.shape[1], bits))
    np.testing.assert_array_equal(got, want)


@given(tables())
def test_unpack_matches_torch(case):
    torch = _torch()
    bits, w = case
    packed = _prepack(torch, bits)(torch.from_numpy(w))
    want = _unpack(torch, bits)(packed).numpy()
    assert_same_floats(dequantize_rowwise(packed.numpy(), bits), want)


@given(st.sampled_from([8, 4, 2]), st.integers(0, 5), st.integers(0, 300), st.integers(0, 2**31))
def test_arbitrary_packed_bytes_unpack_like_torch(bits, n, nbytes, seed):
    # any byte pattern is a valid packed row (NaN/inf scales included): unpack must agree
    torch = _torch()
    cols = nbytes + (8 if bits == 8 else 4)
    p = np.random.default_rng(seed).integers(0, 256, (n, cols), dtype=np.uint8)
    want = _unpack(torch, bits)(torch.from_numpy(p)).numpy()
    assert_same_floats(dequantize_rowwise(p, bits), want)


@given(st.sampled_from([4, 2]), st.data())
def test_dims_not_multiple_of_packing_factor(bits, data):
    # torch refuses these tables; pad each row by repeating its last value (min and max do not
    # change) and torch's codes for the real columns must be ours.
    torch = _torch()
    per = 8 // bits
    _, w = data.draw(tables(bits=bits, multiple=False, finite=True))
    d = w.shape[1]
    if d % per == 0:
        w = w[:, : max(d - 1, 0)].copy()
        d = w.shape[1]
    if d == 0:
        return
    pad = np.concatenate([w, np.repeat(w[:, -1:], per - d % per, axis=1)], axis=1)
    want = _prepack(torch, bits)(torch.from_numpy(pad)).numpy()
    got = quantize_rowwise(w, bits)
    nb = (d + per - 1) // per
    keep = (1 << (bits * (d % per))) - 1  # the used low bits of the last byte
    np.testing.assert_array_equal(got[:, : nb - 1], want[:, : nb - 1])
    np.testing.assert_array_equal(got[:, nb - 1], want[:, nb - 1] & keep)
    np.testing.assert_array_equal(got[:, nb:], want[:, -4:])
    deq = dequantize_rowwise(got, bits, dim=d)
    assert_same_floats(deq, _unpack(torch, bits)(torch.from_numpy(want)).numpy()[:, :d])


def test_nan_resets_an_fbgemm_lane():
    # FBGEMM's AVX2 min uses vminps lanes; a NaN in column 8 discards column 0 (same lane),
    # so -5 is not the row minimum, and column 0's code wraps (low byte of int32 -1384).
    torch = _torch()
    w = np.linspace(0, 1, 16, dtype=F32)[None, :].copy()
    w[0, 0], w[0, 8] = -5, np.nan
    got = quantize_rowwise(w, 8)
    np.testing.assert_array_equal(got, torch.ops.quantized.embedding_bag_byte_prepack(
        torch.from_numpy(w)).numpy())
    assert got[0, 0] == 152 and got[0, -4:].view(F32)[0] == F32(1 / 15)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_empty_and_zero_width(bits):
    assert quantize_rowwise(np.zeros((0, 8), F32), bits).shape == (0, packed_row_bytes(8, bits))
    p = quantize_rowwise(np.zeros((3, 0), F32), bits)
    assert p.shape == (3, packed_row_bytes(0, bits))
    assert dequantize_rowwise(p, bits).shape == (3, 0)


@given(tables(finite=True))
def test_roundtrip_error_bound(case):
    # no torch needed: each value decodes within half a step of the row's stored scale, or
    # within the distance to the clamped end of the code range (fp16 bias/scale rounding)
    bits, w = case
    if w.size == 0:
        return
    p = quantize_rowwise(w, bits)
    if bits == 8:
        scale, bias = (p[:, -8:].copy().view(F32).astype(np.float64).T)
    else:
        scale, bias = (p[:, -4:].copy().view(np.float16).astype(np.float64).T)
    lo, hi = w.min(1).astype(np.float64), w.max(1).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # rows with inf scales are skipped
        ok = np.isfinite(scale) & np.isfinite(bias) & np.isfinite(hi - lo)
        top = bias + ((1 << bits) - 1) * scale
        bound = np.maximum.reduce([scale / 2, bias - lo, hi - top])
        slack = 1e-6 * np.maximum.reduce([np.abs(lo), np.abs(hi), np.abs(top)]) + 1e-8
        back = dequantize_rowwise(p, bits, dim=w.shape[1]).astype(np.float64)
        err = np.abs(back - w).max(1)
    assert (err[ok] <= bound[ok] + slack[ok]).all()


def test_packed_dim_and_row_bytes():
    assert packed_row_bytes(64, 8) == 72 and packed_row_bytes(63, 4) == 36
    assert packed_dim(36, 4) == 64 and packed_dim(36, 4, dim=63) == 63
    with pytest.raises(ValueError, match=r"dim=62 does not fit 4-bit rows of 36 bytes"):
        packed_dim(36, 4, dim=62)
    with pytest.raises(ValueError, match="at least 8 bytes"):
        packed_dim(7, 8)
    for bad in (12.0, "12", True):  # (12.0 gave 4.0, "12" a TypeError from "<")
        with pytest.raises(TypeError, match="row_bytes must be an integer"):
            packed_dim(bad, 8)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_big_endian_tables_are_float32(bits):
    w = np.random.default_rng(0).standard_normal((5, 24)).astype(F32)
    np.testing.assert_array_equal(quantize_rowwise(w.astype(">f4"), bits), quantize_rowwise(w, bits))


@pytest.mark.parametrize("bits", [3, 0, 16, True, 8.0, "8"])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match=r"bits must be one of \(8, 4, 2\), found"):
        quantize_rowwise(np.zeros((2, 4), F32), bits)


def test_bad_tables():
    with pytest.raises(TypeError, match="float32 .* found dtype float64"):
        quantize_rowwise(np.zeros((2, 4)), 8)
    with pytest.raises(TypeError, match="found dtype int64"):
        quantize_rowwise(np.zeros((2, 4), np.int64), 8)
    with pytest.raises(ValueError, match=r"2-D .* found shape \(4,\)"):
        quantize_rowwise(np.zeros(4, F32), 8)
    with pytest.raises(TypeError, match="uint8 .* found dtype float32"):
        dequantize_rowwise(np.zeros((2, 12), F32), 8)
    with pytest.raises(ValueError, match="dim=3 does not fit"):
        dequantize_rowwise(np.zeros((2, 12), np.uint8), 8, dim=3)


def test_float16_tables_are_widened_exactly():
    torch = _torch()
    w = np.random.default_rng(0).standard_normal((5, 24)).astype(np.float16)
    np.testing.assert_array_equal(
        quantize_rowwise(w, 4),
        torch.ops.quantized.embedding_bag_4bit_prepack(torch.from_numpy(w.astype(F32))).numpy(),
    )


@pytest.mark.parametrize("d", [8, 16, 17, 63, 64, 65, 200, 300])
def test_signed_zero_and_nan_extremes_match_torch(d):
    # 8-bit prepack finds min/max in any order first and redoes rows in FBGEMM's lane order
    # only when the order can show: a NaN, or a zero min/max (-0.0 vs +0.0 ties).
    torch = _torch()
    rng = np.random.default_rng(d)
    rows = []
    for _ in range(40):
        r = np.abs(rng.standard_normal(d)).astype(F32) + F32(0.5)
        kind = rng.integers(0, 4)
        cols = rng.choice(d, size=min(d, int(rng.integers(1, 5))), replace=False)
        r[cols] = rng.choice(np.array([0.0, -0.0], F32), cols.size)
        if kind == 1:  # zero max
            r = np.where(r == 0, r, -r)
        elif kind == 2:  # a NaN somewhere, zero min
            r[rng.integers(0, d)] = np.nan
        elif kind == 3:  # no zero at all: the fast path
            r = rng.standard_normal(d).astype(F32)
        rows.append(r)
    w = np.stack(rows)
    want = torch.ops.quantized.embedding_bag_byte_prepack(torch.from_numpy(w)).numpy()
    np.testing.assert_array_equal(quantize_rowwise(w, 8), want)
