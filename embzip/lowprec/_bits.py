"""Scalar building blocks for the lowprec kernels: exact FMA, bit casts, fp16 and x86 conversions.

Why this module exists: FBGEMM's numerics are defined by x86 instructions (``vfmadd``,
``vcvtps2dq``, ``vcvtps2ph``) and by C library calls (``lrintf``). numba has no scalar FMA and no
bit casts, so they are built here once from LLVM intrinsics, and the instruction semantics that
matter for bit-exactness (out-of-range conversions, NaN quieting) are spelled out in plain code.
Everything here is a jitted scalar helper; LLVM inlines them into the calling kernels.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import intrinsic

from embzip._jit import kernel

__all__ = [
    "fma32",
    "f32_bits",
    "bits_f32",
    "f32_to_f16_bits",
    "f16_bits_to_f32",
    "cvtps_epi32",
    "lrint_i64",
    "round_f64_to_f16",
]

F32 = np.float32
INT32_MIN = np.int32(-(2**31))
INT64_MIN = np.int64(-(2**63))


@intrinsic
def fma32(typingctx, a, b, c):
    """``fmaf(a, b, c)``: one rounding, as ``vfmadd`` computes it (LLVM ``llvm.fma.f32``)."""
    if not all(isinstance(t, types.Float) and t.bitwidth == 32 for t in (a, b, c)):
        return None
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@intrinsic
def f32_bits(typingctx, x):
    """Reinterpret a float32 as uint32 (no conversion)."""
    if not (isinstance(x, types.Float) and x.bitwidth == 32):
        return None
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))

    return sig, codegen


@intrinsic
def bits_f32(typingctx, u):
    """Reinterpret the low 32 bits of an integer as float32 (no conversion)."""
    if not (isinstance(u, types.Integer) and u.bitwidth >= 32):
        return None
    sig = types.float32(u)

    def codegen(context, builder, signature, args):
        v = args[0]
        if u.bitwidth > 32:
            v = builder.trunc(v, context.get_value_type(types.uint32))
        return builder.bitcast(v, context.get_value_type(types.float32))

    return sig, codegen


@kernel
def f32_to_f16_bits(x):
    """float32 -> IEEE half bits, round-to-nearest-even, as ``vcvtps2ph`` (F16C) does it.

    Overflow goes to +-inf, tiny values to (signed) subnormals or zero, and a NaN keeps its sign
    and the top 10 payload bits with the quiet bit set (the hardware rule; the scalar c10 helper
    would return the canonical 0x7E00 instead, which is the same for ordinary quiet NaNs).
    """
    u = f32_bits(x)
    sign = np.uint32((u >> np.uint32(16)) & np.uint32(0x8000))
    a = u & np.uint32(0x7FFFFFFF)
    if a >= np.uint32(0x7F800000):
        if a == np.uint32(0x7F800000):
            return np.uint16(sign | np.uint32(0x7C00))
        return np.uint16(sign | np.uint32(0x7E00) | ((a >> np.uint32(13)) & np.uint32(0x3FF)))
    if a >= np.uint32(0x477FF000):  # >= 65520: rounds to inf
        return np.uint16(sign | np.uint32(0x7C00))
    if a < np.uint32(0x38800000):  # below the smallest normal half 2**-14: subnormal or zero
        if a < np.uint32(0x33000000):  # <= 2**-25 rounds to zero (2**-25 is the tie, even = 0)
            return np.uint16(sign)
        e = a >> np.uint32(23)
        mant = (a & np.uint32(0x7FFFFF)) | np.uint32(0x800000)
        shift = np.uint32(126) - e  # 14 + 13 - (e - 127) ... shift of the 24-bit significand
        q = mant >> shift
        rem = mant & ((np.uint32(1) << shift) - np.uint32(1))
        half = np.uint32(1) << (shift - np.uint32(1))
        if rem > half or (rem == half and (q & np.uint32(1)) == np.uint32(1)):
            q += np.uint32(1)
        return np.uint16(sign | q)
    # normal range: rebias exponent, round the 13 dropped bits to nearest even
    h = a - np.uint32(0x38000000)  # exponent 127 -> 15
    lsb = (h >> np.uint32(13)) & np.uint32(1)
    h = h + np.uint32(0xFFF) + lsb
    return np.uint16(sign | (h >> np.uint32(13)))


@kernel
def f16_bits_to_f32(h):
    """IEEE half bits -> float32 (exact; NaN payload shifted up, as ``vcvtph2ps`` does)."""
    h32 = np.uint32(h)
    sign = (h32 & np.uint32(0x8000)) << np.uint32(16)
    e = (h32 >> np.uint32(10)) & np.uint32(0x1F)
    m = h32 & np.uint32(0x3FF)
    if e == np.uint32(0x1F):
        return bits_f32(sign | np.uint32(0x7F800000) | (m << np.uint32(13)))
    if e == np.uint32(0):
        # subnormal half: m * 2**-24, exact in float32
        v = np.float32(m) * np.float32(5.9604644775390625e-08)
        return -v if sign != np.uint32(0) else v
    return bits_f32(sign | ((e + np.uint32(112)) << np.uint32(23)) | (m << np.uint32(13)))


@kernel
def cvtps_epi32(v):
    """``vcvtps2dq``: round to nearest even; NaN or out of int32 range gives INT32_MIN."""
    r = np.rint(v)
    if r != r or r >= np.float32(2147483648.0) or r < np.float32(-2147483648.0):
        return INT32_MIN
    return np.int32(r)


@kernel
def lrint_i64(v):
    """glibc ``lrintf`` on x86-64 (returns long): NaN or out of int64 range gives INT64_MIN."""
    r = np.rint(v)
    if r != r or r >= np.float32(9.223372036854775808e18) or r < np.float32(-9.223372036854775808e18):
        return INT64_MIN
    return np.int64(r)


@kernel
def round_f64_to_f16(v):
    """Round a float64 to the nearest-even IEEE half value, returned as float64.

    Used for fp16 accumulation: an fp16 FMA is exact in float64 then rounded once here, which is
    correct because a product of two halves has 22 significant bits (see docs/lowprec.md).
    """
    if v != v or v == 0.0 or np.isinf(v):
        return v
    a = abs(v)
    m, e = np.frexp(a)  # a = m * 2**e, m in [0.5, 1)
    ulp_exp = max(e - 11, -24)  # half has 11 significant bits; subnormal quantum 2**-24
    q = np.ldexp(np.rint(np.ldexp(a, -ulp_exp)), ulp_exp)
    if q > 65504.0:
        q = np.inf
    return -q if v < 0 else q
