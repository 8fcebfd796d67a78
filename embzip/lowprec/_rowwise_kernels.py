"""numba kernels for FBGEMM's fused rowwise formats (no validation, no allocation).

Each kernel reproduces one FBGEMM AVX2 routine instruction by instruction where it matters for
the result (see docs/lowprec.md, "How exactness is achieved"):

* Row min/max use eight ``vminps``/``vmaxps`` lanes over the first ``d // 8 * 8`` columns, then
  ``std::min``/``std::max`` over the lanes and the tail. ``vminps(acc, x)`` returns ``x`` when
  either is NaN, so a NaN *resets* its lane: values earlier in that lane are forgotten. This is
  what torch does, so it is what we do (it also fixes the sign of a zero minimum).
* Codes come from ``vcvtps2dq`` + saturating packs over whole 32-column blocks, from
  ``vcvtps2dq`` + a byte shuffle (wrap-around) over 8-column blocks, and from ``lrintf`` + an
  integer cast over the tail. For finite rows all three agree; they differ only on the NaN and
  out-of-range values that the lane rule above can produce.
"""

from __future__ import annotations

import numpy as np

from embzip._jit import kernel, parallel_kernel, prange
from embzip.lowprec._bits import (
    bits_f32,
    cvtps_epi32,
    f16_bits_to_f32,
    f32_bits,
    f32_to_f16_bits,
    fma32,
    lanes_minmax8,
    lrint_i64,
    minmax_unordered,
    wide_vectors,
)

FLT_MAX = np.float32(3.4028234663852886e38)
F255 = np.float32(255.0)
EPS8 = np.float32(1e-8)  # FBGEMM's kEpsilon in the 8-bit inverse scale
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
TWO31 = np.float32(2147483648.0)
MAGIC = np.float32(8388608.0)  # 2**23: adding it leaves rint(v) in the low mantissa bits


@kernel
def _smin(a, b):
    # std::min(a, b): the first argument wins on ties and when b is NaN
    return b if b < a else a


@kernel
def _smax(a, b):
    return b if a < b else a


@kernel
def sat_code(v, hi):
    """``vcvtps2dq`` then saturating packs: NaN or >= 2**31 -> 0, else clamp(rint(v), 0, hi).

    Written on floats (same result as going through int32) so LLVM vectorizes it.
    """
    x = np.rint(v)
    x = x if x < TWO31 else ZERO  # out of int32 range -> INT32_MIN -> saturates to 0
    x = x if x >= ZERO else ZERO  # negative, and NaN (comparisons are false) -> 0
    return np.int32(min(x, hi))


@kernel
def round_small(v):
    """rint(v) mod 256 for v in [0, 2**23) by the 2**23 trick (the add rounds to nearest even).

    A NaN made by arithmetic (inf * 0, inf - inf) is the default NaN, low byte 0, so NaN -> 0.
    """
    return np.uint8(f32_bits(v + MAGIC) & np.uint32(0xFF))


@kernel
def row_minmax(w, r, d):
    """FBGEMM AVX2 min/max of row ``r`` (8 lanes, then lanes in order, then the scalar tail),
    and whether the row holds a NaN.

    Rows are indexed in place rather than sliced: a slice is a reference-counted view, and the
    atomic refcount traffic costs more than the arithmetic in these short loops.
    """
    nv = (d // 8) * 8
    mn, mx, anynan = lanes_minmax8(w, r, nv)
    for c in range(nv, d):
        x = w[r, c]
        mn = _smin(mn, x)
        mx = _smax(mx, x)
        anynan |= x != x
    return mn, mx, anynan


@kernel
def _put_u32(o, r, pos, u):
    o[r, pos] = np.uint8(u & np.uint32(0xFF))
    o[r, pos + 1] = np.uint8((u >> np.uint32(8)) & np.uint32(0xFF))
    o[r, pos + 2] = np.uint8((u >> np.uint32(16)) & np.uint32(0xFF))
    o[r, pos + 3] = np.uint8((u >> np.uint32(24)) & np.uint32(0xFF))


@kernel
def get_u32(o, r, pos):
    return (
        np.uint32(o[r, pos])
        | (np.uint32(o[r, pos + 1]) << np.uint32(8))
        | (np.uint32(o[r, pos + 2]) << np.uint32(16))
        | (np.uint32(o[r, pos + 3]) << np.uint32(24))
    )


@kernel
def get_u16(o, r, pos):
    return np.uint16(np.uint32(o[r, pos]) | (np.uint32(o[r, pos + 1]) << np.uint32(8)))


@parallel_kernel
def quantize8_kernel(w, out):
    """FloatOrHalfToFused8BitRowwiseQuantizedSBFloatAvx2: codes, fp32 scale, fp32 bias."""
    n, d = w.shape
    n32 = (d // 32) * 32
    nv = (d // 8) * 8
    for r in prange(n):
        wide_vectors()  # inside the loop: prange outlines its body into its own function
        # min/max without FBGEMM's lane order first (4x shorter dependency chains); the order
        # is only visible with a NaN or a zero min/max (signed-zero ties), so redo those rows
        mn, mx, anynan = minmax_unordered(w, r, d)
        if anynan or mn == ZERO or mx == ZERO:
            mn, mx, anynan = row_minmax(w, r, d)
        rng = mx - mn
        scale = rng / F255
        inv = F255 / (rng + EPS8)
        _put_u32(out, r, d, f32_bits(scale))
        _put_u32(out, r, d + 4, f32_bits(mn))
        if not anynan:
            # No NaN: min/max are the true ones, so v is in [0, 255.0001] or a default NaN
            # (from inf * 0); every code path of FBGEMM then gives rint(v), or 0 for the NaN.
            for c in range(d):
                out[r, c] = round_small((w[r, c] - mn) * inv)
            continue
        for c in range(n32):  # cvtps2dq + packs_epi32 + packus_epi16: saturate to [0, 255]
            out[r, c] = np.uint8(sat_code((w[r, c] - mn) * inv, F255))
        for c in range(n32, nv):  # cvtps2dq + byte shuffle: keep the low byte
            out[r, c] = np.uint8(cvtps_epi32((w[r, c] - mn) * inv) & 0xFF)
        for c in range(nv, d):  # lrintf, then an implicit cast to uint8: keep the low byte
            out[r, c] = np.uint8(lrint_i64((w[r, c] - mn) * inv) & 0xFF)


def _make_quantize_nbit(bits):
    # One kernel per bit width: with BITS a compile-time constant the per-element shifts and
    # divisions fold away (a runtime ``c // per_byte`` costs more than the whole quantizer).
    per_byte = 8 // bits
    qmax = (1 << bits) - 1
    levels = np.float32(qmax)

    @parallel_kernel
    def quantize_nbit(w, out):
        """FloatOrHalfToFusedNBitRowwiseQuantizedSBHalfAvx2: packed codes, fp16 scale and bias."""
        n, d = w.shape
        nbytes = (d + per_byte - 1) // per_byte
        body = d // 32 * 32 // per_byte  # bytes written by the 32-column vector body
        for r in prange(n):
            mn, mx, anynan = row_minmax(w, r, d)
            bias_h = f32_to_f16_bits(mn)
            mn = f16_bits_to_f32(bias_h)  # the bias is stored as fp16: quantize against it
            rng = mx - mn
            scale = ONE if rng == ZERO else rng / levels
            scale = f16_bits_to_f32(f32_to_f16_bits(scale))
            if scale == ZERO:
                scale = ONE
            inv = ONE / scale
            if np.isinf(inv):
                scale = ONE
                inv = ONE
            h = np.uint32(f32_to_f16_bits(scale)) | (np.uint32(bias_h) << np.uint32(16))
            _put_u32(out, r, nbytes, h)
            if not anynan:
                # No NaN: |v| stays far below 2**31 (see docs/lowprec.md), so all of FBGEMM's
                # code paths agree on clamp(rint(v), 0, qmax), NaN (from inf * 0) -> 0.
                for i in range(d // per_byte):
                    acc = np.uint32(0)
                    for j in range(per_byte):
                        v = (w[r, i * per_byte + j] - mn) * inv
                        v = v if v > ZERO else ZERO
                        acc |= np.uint32(round_small(min(v, levels))) << np.uint32(j * bits)
                    out[r, i] = np.uint8(acc)
                start = d // per_byte
            else:
                start = 0
                for i in range(body):  # vector body: cvtps2dq, saturating packs, min_epu8
                    acc = 0
                    for j in range(per_byte):
                        v = (w[r, i * per_byte + j] - mn) * inv
                        acc |= sat_code(v, levels) << (j * bits)
                    out[r, i] = np.uint8(acc)
            for i in range(max(start, body), nbytes):  # tail: max(0, min<int>(lrintf(v), qmax))
                acc = 0
                for j in range(per_byte):
                    c = i * per_byte + j
                    if c < d:
                        v = (w[r, c] - mn) * inv
                        acc |= min(max(np.int32(lrint_i64(v)), 0), qmax) << (j * bits)
                out[r, i] = np.uint8(acc)

    return quantize_nbit


def _make_dequantize_nbit(bits):
    per_byte = 8 // bits
    mask = (1 << bits) - 1

    @parallel_kernel
    def dequantize_nbit(packed, out):
        """FusedNBitRowwiseQuantizedSBHalfToFloatOrHalf: fma(scale, code, bias)."""
        n, d = out.shape
        nbytes = packed.shape[1] - 4
        full = d // per_byte
        for r in prange(n):
            scale = f16_bits_to_f32(get_u16(packed, r, nbytes))
            bias = f16_bits_to_f32(get_u16(packed, r, nbytes + 2))
            for i in range(full):
                byte = np.int32(packed[r, i])
                for j in range(per_byte):
                    q = np.float32((byte >> (j * bits)) & mask)
                    out[r, i * per_byte + j] = fma32(scale, q, bias)
            for c in range(full * per_byte, d):
                byte = np.int32(packed[r, c // per_byte])
                q = np.float32((byte >> ((c % per_byte) * bits)) & mask)
                out[r, c] = fma32(scale, q, bias)

    return dequantize_nbit


QUANTIZE_NBIT = {b: _make_quantize_nbit(b) for b in (4, 2)}
DEQUANTIZE_NBIT = {b: _make_dequantize_nbit(b) for b in (4, 2)}


@parallel_kernel
def dequantize8_kernel(packed, out):
    """Fused8BitRowwiseQuantizedSBFloatToFloatOrHalfAvx2: fma(code, scale, bias)."""
    n, d = out.shape
    for r in prange(n):
        scale = bits_f32(get_u32(packed, r, d))
        bias = bits_f32(get_u32(packed, r, d + 4))
        for c in range(d):
            out[r, c] = fma32(np.float32(packed[r, c]), scale, bias)
