"""Scalar building blocks for the lowprec kernels: exact FMA, bit casts, fp16 and x86 conversions.

Why this module exists: FBGEMM's numerics are defined by x86 instructions (``vfmadd``,
``vcvtps2dq``, ``vcvtps2ph``) and by C library calls (``lrintf``). numba has no scalar FMA and no
bit casts, so they are built here once from LLVM intrinsics, and the instruction semantics that
matter for bit-exactness (out-of-range conversions, NaN quieting) are spelled out in plain code.
Everything here is a jitted scalar helper; LLVM inlines them into the calling kernels.
"""

from __future__ import annotations

import math

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
    "lanes_minmax8",
    "wide_vectors",
    "minmax_unordered",
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
    big = np.float32(9.223372036854775808e18)  # 2**63
    if r != r or r >= big or r < -big:
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
    e = math.frexp(a)[1]  # a = m * 2**e, m in [0.5, 1)
    ulp_exp = max(e - 11, -24)  # half has 11 significant bits; subnormal quantum 2**-24
    q = math.ldexp(np.rint(math.ldexp(a, -ulp_exp)), ulp_exp)
    if q > 65504.0:
        q = np.inf
    return -q if v < 0 else q


@intrinsic
def lanes_minmax8(typingctx, arr, r, nv):
    """FBGEMM's AVX2 lane min/max over ``arr[r, 0:nv]`` (``nv`` a multiple of 8), reduced.

    Emits ``<8 x float>`` ``fcmp olt`` + ``select`` -- exactly ``vminps(acc, x)`` (``x`` wins on
    ties and NaN) -- so the loop runs as vector code; numba would otherwise keep the eight lanes
    scalar. The lanes are then reduced in order with ``std::min``/``std::max`` semantics
    starting from +-FLT_MAX, as FBGEMM does. Returns ``(min, max, any_nan)``.
    """
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.dtype == types.float32
            and arr.layout == "C"):
        return None
    sig = types.Tuple((types.float32, types.float32, types.boolean))(arr, r, nv)

    def codegen(context, builder, signature, args):
        from llvmlite import ir
        from numba.core import cgutils

        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, value=args[0])
        row = context.cast(builder, args[1], signature.args[1], types.intp)
        n = context.cast(builder, args[2], signature.args[2], types.intp)
        f32 = ir.FloatType()
        vty = ir.VectorType(f32, 8)
        big = float(np.float32(3.4028234663852886e38))
        vmin = cgutils.alloca_once_value(builder, ir.Constant(vty, [big] * 8))
        vmax = cgutils.alloca_once_value(builder, ir.Constant(vty, [-big] * 8))
        bty = ir.VectorType(ir.IntType(1), 8)
        vnan = cgutils.alloca_once_value(builder, ir.Constant(bty, [0] * 8))
        intp = context.get_value_type(types.intp)
        nblk = builder.udiv(n, intp(8))
        with cgutils.for_range(builder, nblk) as loop:
            col = builder.mul(loop.index, intp(8))
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [row, col],
                                           wraparound=False)
            x = builder.load(builder.bitcast(ptr, vty.as_pointer()), align=4)
            a = builder.load(vmin)
            builder.store(builder.select(builder.fcmp_ordered("<", a, x), a, x), vmin)
            b = builder.load(vmax)
            builder.store(builder.select(builder.fcmp_ordered(">", b, x), b, x), vmax)
            isnan = builder.fcmp_unordered("uno", x, x)
            builder.store(builder.or_(builder.load(vnan), isnan), vnan)
        a = builder.load(vmin)
        b = builder.load(vmax)
        mn = ir.Constant(f32, big)
        mx = ir.Constant(f32, -big)
        for i in range(8):  # std::min(mn, lane): lane wins only if strictly smaller
            la = builder.extract_element(a, ir.Constant(ir.IntType(32), i))
            mn = builder.select(builder.fcmp_ordered("<", la, mn), la, mn)
            lb = builder.extract_element(b, ir.Constant(ir.IntType(32), i))
            mx = builder.select(builder.fcmp_ordered("<", mx, lb), lb, mx)
        nanbits = builder.bitcast(builder.load(vnan), ir.IntType(8))
        anynan = builder.icmp_unsigned("!=", nanbits, ir.Constant(ir.IntType(8), 0))
        anynan = context.cast(builder, anynan, types.boolean, types.boolean)
        return context.make_tuple(builder, signature.return_type, [mn, mx, anynan])

    return sig, codegen


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM use 512-bit vectors in the calling kernel (no code is emitted).

    x86 LLVM prefers 256-bit vectors on AVX-512 CPUs unless a function asks otherwise; FBGEMM's
    kernels use zmm registers, so the kernels that race them call this first. It changes the
    instruction selection only, never the arithmetic; on CPUs without AVX-512 it is a no-op.
    """
    sig = types.void()

    def codegen(context, builder, signature, args):
        attrs = builder.function.attributes
        set.add(attrs, '"prefer-vector-width"="512"')
        set.add(attrs, '"min-legal-vector-width"="512"')
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def minmax_unordered(typingctx, arr, r, n):
    """min and max of ``arr[r, 0:n]`` in no particular order, and whether it holds a NaN.

    FBGEMM's single 8-lane ``vminps`` chain (``lanes_minmax8``) is bound by the latency of one
    dependent instruction per 8 values; here four independent 16-lane accumulators run side by
    side. The result agrees with FBGEMM's whenever the row has no NaN and its min (max) is not
    a zero: min and max are then the same values whatever the order, and only ``-0.0``/``+0.0``
    ties (or NaN) could make the order visible. Callers fall back to ``lanes_minmax8`` in those
    cases. Values start from +-FLT_MAX as FBGEMM's lanes do (an all-+inf row has min FLT_MAX).
    """
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and arr.dtype == types.float32
            and arr.layout == "C"):
        return None
    sig = types.Tuple((types.float32, types.float32, types.boolean))(arr, r, n)

    def codegen(context, builder, signature, args):
        from llvmlite import ir
        from numba.core import cgutils

        set.add(builder.function.attributes, '"min-legal-vector-width"="512"')
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, value=args[0])
        row = context.cast(builder, args[1], signature.args[1], types.intp)
        cnt = context.cast(builder, args[2], signature.args[2], types.intp)
        intp = context.get_value_type(types.intp)
        f32 = ir.FloatType()
        big = float(np.float32(3.4028234663852886e38))
        W, K = 16, 4
        vty = ir.VectorType(f32, W)
        bty = ir.VectorType(ir.IntType(1), W)
        base = cgutils.get_item_pointer(context, builder, aryty, ary, [row, intp(0)],
                                        wraparound=False)

        def vmin(a, x):
            return builder.select(builder.fcmp_ordered("<", a, x), a, x)

        def vmax(a, x):
            return builder.select(builder.fcmp_ordered(">", a, x), a, x)

        def load(col, width):
            p = builder.gep(base, [col])
            return builder.load(builder.bitcast(p, ir.VectorType(f32, width).as_pointer()),
                                align=4)

        mins = [cgutils.alloca_once_value(builder, ir.Constant(vty, [big] * W)) for _ in range(K)]
        maxs = [cgutils.alloca_once_value(builder, ir.Constant(vty, [-big] * W))
                for _ in range(K)]
        nan = cgutils.alloca_once_value(builder, ir.Constant(bty, [0] * W))

        def step(x, k):
            builder.store(vmin(builder.load(mins[k]), x), mins[k])
            builder.store(vmax(builder.load(maxs[k]), x), maxs[k])
            builder.store(builder.or_(builder.load(nan), builder.fcmp_unordered("uno", x, x)),
                          nan)

        big_blocks = builder.udiv(cnt, intp(W * K))
        with cgutils.for_range(builder, big_blocks) as loop:
            col0 = builder.mul(loop.index, intp(W * K))
            for k in range(K):
                step(load(builder.add(col0, intp(W * k)), W), k)
        done = builder.mul(big_blocks, intp(W * K))
        small = builder.udiv(builder.sub(cnt, done), intp(W))
        with cgutils.for_range(builder, small) as loop:
            step(load(builder.add(done, builder.mul(loop.index, intp(W))), W), 0)
        done = builder.add(done, builder.mul(small, intp(W)))
        a, b = builder.load(mins[0]), builder.load(maxs[0])
        for k in range(1, K):
            a, b = vmin(a, builder.load(mins[k])), vmax(b, builder.load(maxs[k]))
        mn_p = cgutils.alloca_once_value(builder, ir.Constant(f32, big))
        mx_p = cgutils.alloca_once_value(builder, ir.Constant(f32, -big))
        nan_s = cgutils.alloca_once_value(builder, ir.Constant(ir.IntType(1), 0))
        width = W
        while width > 1:  # halve: lanes i and i + width/2
            width //= 2
            lo = ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(width)))
            hi = ir.Constant(ir.VectorType(ir.IntType(32), width), list(range(width, 2 * width)))
            a = vmin(builder.shuffle_vector(a, a, lo), builder.shuffle_vector(a, a, hi))
            b = vmax(builder.shuffle_vector(b, b, lo), builder.shuffle_vector(b, b, hi))
        i0 = ir.Constant(ir.IntType(32), 0)
        builder.store(builder.extract_element(a, i0), mn_p)
        builder.store(builder.extract_element(b, i0), mx_p)
        with cgutils.for_range(builder, builder.sub(cnt, done)) as loop:  # scalar tail
            x = builder.load(builder.gep(base, [builder.add(done, loop.index)]))
            m = builder.load(mn_p)
            builder.store(builder.select(builder.fcmp_ordered("<", m, x), m, x), mn_p)
            m = builder.load(mx_p)
            builder.store(builder.select(builder.fcmp_ordered(">", m, x), m, x), mx_p)
            builder.store(builder.or_(builder.load(nan_s), builder.fcmp_unordered("uno", x, x)),
                          nan_s)
        nanbits = builder.bitcast(builder.load(nan), ir.IntType(W))
        anynan = builder.or_(builder.icmp_unsigned("!=", nanbits, ir.Constant(ir.IntType(W), 0)),
                             builder.load(nan_s))
        anynan = context.cast(builder, anynan, types.boolean, types.boolean)
        return context.make_tuple(builder, signature.return_type,
                                  [builder.load(mn_p), builder.load(mx_p), anynan])

    return sig, codegen
