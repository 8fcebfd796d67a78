"""Vector IR for the pooled-lookup inner loop (numba cannot keep vector accumulators).

FBGEMM's generated kernels keep a block of output columns in vector registers while they walk the
rows of a bag. numba only vectorizes innermost loops, so the straightforward kernel reloads and
stores the output row for every table row; this intrinsic emits the FBGEMM loop directly:
for a block of ``width`` columns, ``acc = fma(splat(s), codes, acc + splat(b))`` over the bag's
rows, with ``llvm.fma`` on ``<width x float>`` (one rounding per element, exactly as before),
then one store. The arithmetic and its order are unchanged; only the schedule is.

``bag_block`` serves any dimension (runtime column blocks, masked tails); ``bag8_rows`` is the
8-bit lookup compiled for one embedding dimension, as FBGEMM's JIT does (constant stride, blocks
and prefetch lines: no per-row dispatch or masks), which is what makes it faster than torch's.

Index safety: both read row ``min(uint64(i), rows - 1)`` for an index ``i`` and return the
largest ``uint64(i)`` they saw. The clamp is branchless (a negative index wraps above every row
count and is clamped too), so no index can make them read outside the table, and they decide
nothing: the caller compares the returned maximum with the row count and discards the output
(raising its usual error) when an index was out of range. This replaces a separate pass over the
indices before the lookup (torch likewise checks inside its lookup loop). Callers must not pass
a table with no rows.
"""

from __future__ import annotations

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["bag_block"]

_CACHE = {}


def _concat(builder, ir, vecs):
    """Concatenate equal-length vectors (pairwise shufflevector)."""
    while len(vecs) > 1:
        nxt = []
        for i in range(0, len(vecs), 2):
            a, b = vecs[i], vecs[i + 1]
            n = a.type.count
            mask = ir.Constant(ir.VectorType(ir.IntType(32), 2 * n), list(range(2 * n)))
            nxt.append(builder.shuffle_vector(a, b, mask))
        vecs = nxt
    return vecs[0]


PREFETCH = 16  # rows ahead in bag_block, FBGEMM's default prefetch distance

# bag8_rows prefetches a distance in bytes of rows rather than in rows (16 rows is too short for
# narrow rows and too long for wide ones): on the 2-core dev box (8-bit lookups, 2 threads,
# 1M-row tables), 2048 bytes was the best or within noise of it at dims 32/64/128/300; 1024 and
# 3072 were each clearly worse somewhere.
PREFETCH_BYTES = 2048


def rows_ahead(row_bytes: int) -> int:
    """Rows ``bag8_rows`` prefetches ahead for rows of ``row_bytes`` bytes (2 to 64)."""
    return max(2, min(64, PREFETCH_BYTES // max(row_bytes, 1)))


def _umin(builder, a, b):
    return builder.select(builder.icmp_unsigned("<", a, b), a, b)


def _umax(builder, a, b):
    return builder.select(builder.icmp_unsigned("<", a, b), b, a)


def bag_block(bits: int, width: int, weighted: bool, masked: bool = False):
    """Intrinsic ``f(packed, indices, weights, out, b, t0, t1, j0, meta, pf, rem) -> uint64``.

    Accumulates rows ``indices[t0:t1]`` of a packed ``bits``-bit table into
    ``out[b, j0:j0 + width]``; ``meta`` is the byte offset of the row's scale/bias. With ``pf``
    true, each step also prefetches the row ``PREFETCH`` indices ahead (as FBGEMM does), so
    cache misses overlap instead of queueing; pass it on the first column block only.

    ``masked`` blocks finish a row's last ``rem < width`` columns in one pass: masked loads read
    only the code bytes that exist (never past the row), all lanes are computed, and a masked
    store writes the first ``rem``. No column is ever done one at a time.

    Returns the largest index of the bag read as unsigned; rows are read at indices clamped to
    the table (see the module docstring).
    """
    key = (bits, width, weighted, masked)
    if key in _CACHE:
        return _CACHE[key]
    per_byte = 8 // bits

    @intrinsic
    def _block(typingctx, packed, indices, weights, out, b, t0, t1, j0, meta, pf, rem):
        sig = types.uint64(packed, indices, weights, out, b, t0, t1, j0, meta, pf, rem)

        def codegen(context, builder, signature, args):
            from llvmlite import ir

            # x86 treats 512-bit vectors as illegal unless a function asks for them; FBGEMM's
            # JIT uses zmm registers, so ask (a no-op on targets without AVX-512).
            set.add(builder.function.attributes, '"min-legal-vector-width"="512"')
            pk_ty, idx_ty, w_ty, out_ty = signature.args[:4]
            pk, ix, wt, ot = (context.make_array(t)(context, builder, value=v)
                              for t, v in zip(signature.args[:4], args[:4]))
            intp = context.get_value_type(types.intp)
            i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
            i8p = i8.as_pointer()
            vf = ir.VectorType(f32, width)
            bb, tt0, tt1, jj0, mm = (context.cast(builder, v, t, types.intp)
                                     for v, t in zip(args[4:9], signature.args[4:9]))
            do_pf = context.cast(builder, args[9], signature.args[9], types.boolean)
            n_rem = context.cast(builder, args[10], signature.args[10], types.intp)

            def item(aryty, ary, idx):
                return cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)

            def index_at(t):
                return context.cast(builder, builder.load(item(idx_ty, ix, [t])), idx_ty.dtype,
                                    types.intp)

            def splat(x):
                v = builder.insert_element(ir.Constant(vf, ir.Undefined), x, i32(0))
                zeros = ir.Constant(ir.VectorType(i32, width), [0] * width)
                return builder.shuffle_vector(v, v, zeros)

            pf_ty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            pf_fn = cgutils.get_or_insert_function(builder.module, pf_ty, "llvm.prefetch.p0")
            fma_ty = ir.FunctionType(vf, [vf, vf, vf])
            fma = cgutils.get_or_insert_function(builder.module, fma_ty, f"llvm.fma.v{width}f32")

            def prefetch(addr):
                builder.call(pf_fn, [builder.inttoptr(addr, i8p), i32(0), i32(3), i32(1)])

            n_idx = builder.extract_value(ix.shape, 0)
            last_row = builder.sub(builder.extract_value(pk.shape, 0), intp(1))
            hi_p = cgutils.alloca_once_value(builder, intp(0))
            last_col = builder.sub(builder.extract_value(pk.shape, 1), intp(1))
            n_lines = builder.add(builder.udiv(last_col, intp(64)), intp(1))
            acc_p = cgutils.alloca_once_value(builder, ir.Constant(vf, [0.0] * width))
            stride = builder.extract_value(pk.strides, 0)
            base = builder.ptrtoint(pk.data, intp)
            nbytes_blk = width // per_byte
            vb = ir.VectorType(i8, nbytes_blk)
            code_off = jj0 if bits == 8 else builder.udiv(jj0, intp(per_byte))

            def lanes_below(n, count):  # <count x i1>: lane index < n
                lanes = ir.Constant(ir.VectorType(intp, count), list(range(count)))
                nv = builder.insert_element(ir.Constant(ir.VectorType(intp, count), ir.Undefined),
                                            n, i32(0))
                nv = builder.shuffle_vector(nv, nv, ir.Constant(ir.VectorType(i32, count),
                                                                [0] * count))
                return builder.icmp_signed("<", lanes, nv)

            if masked:
                valid_bytes = builder.udiv(builder.add(n_rem, intp(per_byte - 1)), intp(per_byte))
                byte_mask = lanes_below(valid_bytes, nbytes_blk)
                mask_ty = ir.VectorType(ir.IntType(1), nbytes_blk)
                ml_ty = ir.FunctionType(vb, [vb.as_pointer(), i32, mask_ty, vb])
                ml = cgutils.get_or_insert_function(builder.module, ml_ty,
                                                    f"llvm.masked.load.v{nbytes_blk}i8.p0")

            with cgutils.for_range(builder, builder.sub(tt1, tt0)) as loop:
                t = builder.add(tt0, loop.index)
                i = index_at(t)
                builder.store(_umax(builder, builder.load(hi_p), i), hi_p)
                row = builder.add(base, builder.mul(_umin(builder, i, last_row), stride))
                with builder.if_then(do_pf, likely=True):
                    ta = builder.add(t, intp(PREFETCH))
                    ta = builder.select(builder.icmp_signed("<", ta, n_idx), ta,
                                        builder.sub(n_idx, intp(1)))
                    rowa = builder.add(base, builder.mul(
                        _umin(builder, index_at(ta), last_row), stride))
                    # every cache line of the row, PREFETCH rows ahead (FBGEMM prefetches rows
                    # ahead too); later column blocks of the same row then hit the cache
                    with cgutils.for_range(builder, n_lines) as pl:
                        prefetch(builder.add(rowa, builder.mul(pl.index, intp(64))))
                    prefetch(builder.add(rowa, last_col))
                if bits == 8:
                    sp = builder.inttoptr(builder.add(row, mm), f32.as_pointer())
                    s = builder.load(sp, align=1)
                    bias = builder.load(builder.gep(sp, [i32(1)]), align=1)
                else:
                    hp = builder.inttoptr(builder.add(row, mm), ir.HalfType().as_pointer())
                    s = builder.fpext(builder.load(hp, align=1), f32)
                    bias = builder.fpext(builder.load(builder.gep(hp, [i32(1)]), align=1), f32)
                if weighted:
                    wv = builder.load(item(w_ty, wt, [t]))
                    s = builder.fmul(s, wv)
                    bias = builder.fmul(bias, wv)
                code_p = builder.inttoptr(builder.add(row, code_off), vb.as_pointer())
                if masked:
                    raw = builder.call(ml, [code_p, i32(1), byte_mask, ir.Constant(vb, None)])
                else:
                    raw = builder.load(code_p, align=1)
                if bits == 8:
                    codes = raw
                else:
                    fields = []
                    for k in range(per_byte):
                        sh = builder.lshr(raw, ir.Constant(vb, [k * bits] * nbytes_blk))
                        mask = ir.Constant(vb, [(1 << bits) - 1] * nbytes_blk)
                        fields.append(builder.and_(sh, mask))
                    cat = _concat(builder, ir, fields)  # field-major: k * nbytes_blk + byte
                    perm = [k * nbytes_blk + byte
                            for byte in range(nbytes_blk) for k in range(per_byte)]
                    codes = builder.shuffle_vector(
                        cat, cat, ir.Constant(ir.VectorType(i32, width), perm))
                q = builder.uitofp(codes, vf)
                acc = builder.load(acc_p)
                acc = builder.call(fma, [splat(s), q, builder.fadd(acc, splat(bias))])
                builder.store(acc, acc_p)
            optr = builder.bitcast(item(out_ty, ot, [bb, jj0]), vf.as_pointer())
            if masked:
                mask = lanes_below(n_rem, width)
                bool_v = ir.VectorType(ir.IntType(1), width)
                ms_ty = ir.FunctionType(ir.VoidType(), [vf, vf.as_pointer(), i32, bool_v])
                ms = cgutils.get_or_insert_function(builder.module, ms_ty,
                                                    f"llvm.masked.store.v{width}f32.p0")
                builder.call(ms, [builder.load(acc_p), optr, i32(4), mask])
            else:
                builder.store(builder.load(acc_p), optr, align=4)
            return builder.load(hi_p)

        return sig, codegen

    _CACHE[key] = _block
    return _block


_CACHE8 = {}

ZMM = 16  # float32 lanes in one AVX-512 register
MAX_ACC = 24  # accumulator registers per pass over a bag's rows (of 32 zmm; FBGEMM's limit too)


def _blocks8(dim: int):
    """Column blocks ``(start, width)`` covering ``dim`` columns with no masks.

    Full 16-wide blocks, then one more block ending exactly at ``dim`` that overlaps the last
    full one (both compute the same columns identically, so the overlap is harmless); rows
    narrower than 8 use one exact ``dim``-wide block.
    """
    if dim < 8:
        return [(0, dim)]
    if dim < ZMM:
        return [(0, 8)] + ([(dim - 8, 8)] if dim > 8 else [])
    blocks = [(c, ZMM) for c in range(0, dim - ZMM + 1, ZMM)]
    rem = dim % ZMM
    if rem:
        w = 8 if rem <= 8 else ZMM
        blocks.append((dim - w, w))
    return blocks


def bag8_rows(dim: int, weighted: bool):
    """Intrinsic ``f(packed, indices, weights, out, b, t0, t1, pf_last) -> uint64`` for ``dim``.

    The whole bag ``indices[t0:t1]`` is pooled into ``out[b, :]`` by code specialized for one
    embedding dimension, as FBGEMM's JIT does: the row stride (``dim + 8``), the column blocks,
    the scale/bias offset and the cache lines to prefetch are compile-time constants, so a row
    costs one index load, its prefetches, and per 16 columns one ``vpmovzxbd``, ``vcvtdq2ps``,
    ``vaddps``, ``vfmadd231ps`` -- the same ``acc = fma(s, code, acc + b)`` as everywhere else.
    Rows wider than ``MAX_ACC`` registers are done in several passes over the bag.

    Prefetches go to the row's start and every 64 bytes after it; ``pf_last`` adds one for the
    row's last byte, which the caller asks for only when, given the table's alignment, a row can
    end in a line those miss (an always-redundant prefetch costs ~10% on 64-wide rows).
    ``packed`` must be C-contiguous with ``dim + 8`` columns and at least one row (the wrapper
    checks both). Returns the bag's largest index read as unsigned; rows are read at indices
    clamped to the table, prefetches too (see the module docstring).
    """
    key = (dim, weighted)
    if key in _CACHE8:
        return _CACHE8[key]
    row_bytes = dim + 8
    blocks = _blocks8(dim)
    passes = [blocks[i:i + MAX_ACC] for i in range(0, len(blocks), MAX_ACC)]
    lines = list(range(0, row_bytes, 64))
    ahead = rows_ahead(row_bytes)
    # prefetchnta (locality 0) when one pass over the bag does every column: each looked-up row
    # is then read once, right after its prefetch, so keeping it out of L2 costs nothing, and on
    # the dev box it made lookups at dims 32-300 1.3-1.5x faster than prefetcht0 (t1/t2 were
    # 5-10% slower than t0). Rows done in several passes are read again by the later passes,
    # which then miss: there nta was 2x slower (dims 512, 1024), so they keep t0.
    locality = 0 if len(passes) == 1 else 3

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        set.add(builder.function.attributes, '"min-legal-vector-width"="512"')
        pk_ty, idx_ty, w_ty, out_ty = signature.args[:4]
        pk, ix, wt, ot = (context.make_array(t)(context, builder, value=v)
                          for t, v in zip(signature.args[:4], args[:4]))
        intp = context.get_value_type(types.intp)
        i8, i32, f32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
        i8p = i8.as_pointer()
        bb, tt0, tt1 = (context.cast(builder, v, t, types.intp)
                        for v, t in zip(args[4:7], signature.args[4:7]))
        pf_last = context.cast(builder, args[-1], signature.args[-1], types.boolean)

        def item(aryty, ary, idx):
            return cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)

        def index_at(t):
            return context.cast(builder, builder.load(item(idx_ty, ix, [t])), idx_ty.dtype,
                                types.intp)

        def splat(x, width):
            vt = ir.VectorType(f32, width)
            v = builder.insert_element(ir.Constant(vt, ir.Undefined), x, i32(0))
            return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, width),
                                                            [0] * width))

        pf_ty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        pf_fn = cgutils.get_or_insert_function(builder.module, pf_ty, "llvm.prefetch.p0")

        def fma_fn(width):
            vt = ir.VectorType(f32, width)
            return cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{width}f32")

        n_idx = builder.extract_value(ix.shape, 0)
        last_row = builder.sub(builder.extract_value(pk.shape, 0), intp(1))
        hi_p = cgutils.alloca_once_value(builder, intp(0))
        base = builder.ptrtoint(pk.data, intp)
        out_row = builder.ptrtoint(item(out_ty, ot, [bb, intp(0)]), intp)

        def prefetch(addr):
            builder.call(pf_fn, [builder.inttoptr(addr, i8p), i32(0), i32(locality), i32(1)])

        def step(t, group, accs, do_pf, track):
            i = index_at(t)
            if track:  # the first pass over the bag sees every index
                builder.store(_umax(builder, builder.load(hi_p), i), hi_p)
            row = builder.add(base, builder.mul(_umin(builder, i, last_row), intp(row_bytes)))
            if do_pf:  # the row `ahead` indices ahead, every line of it
                ia = _umin(builder, index_at(builder.add(t, intp(ahead))), last_row)
                rowa = builder.add(base, builder.mul(ia, intp(row_bytes)))
                for off in lines:
                    prefetch(builder.add(rowa, intp(off)))
                with builder.if_then(pf_last):
                    prefetch(builder.add(rowa, intp(row_bytes - 1)))
            sp = builder.inttoptr(builder.add(row, intp(dim)), f32.as_pointer())
            s = builder.load(sp, align=1)
            bias = builder.load(builder.gep(sp, [i32(1)]), align=1)
            if weighted:
                wv = builder.load(item(w_ty, wt, [t]))
                s = builder.fmul(s, wv)
                bias = builder.fmul(bias, wv)
            for (col, w), acc_p in zip(group, accs):
                vb = ir.VectorType(i8, w)
                code_p = builder.inttoptr(builder.add(row, intp(col)), vb.as_pointer())
                q = builder.uitofp(builder.load(code_p, align=1), ir.VectorType(f32, w))
                acc = builder.fadd(builder.load(acc_p), splat(bias, w))
                builder.store(builder.call(fma_fn(w), [splat(s, w), q, acc]), acc_p)

        def new_accs(group):
            return [cgutils.alloca_once_value(
                builder, ir.Constant(ir.VectorType(f32, w), [0.0] * w)) for _, w in group]

        def store(group, accs, orow):
            for (col, w), acc_p in zip(group, accs):
                optr = builder.inttoptr(builder.add(orow, intp(4 * col)),
                                        ir.VectorType(f32, w).as_pointer())
                builder.store(builder.load(acc_p), optr, align=4)

        def smin(a, b_):
            return builder.select(builder.icmp_signed("<", a, b_), a, b_)

        def smax(a, b_):
            return builder.select(builder.icmp_signed("<", a, b_), b_, a)

        # rows t with t + ahead < len(indices) prefetch, the few after them do not: two
        # loops instead of a clamp on every row
        lim = builder.sub(n_idx, intp(ahead))

        def run(ts, te, group, accs):
            mid = smax(smin(lim, te), ts)
            with cgutils.for_range(builder, builder.sub(mid, ts)) as loop:
                step(builder.add(ts, loop.index), group, accs, True, True)
            with cgutils.for_range(builder, builder.sub(te, mid)) as loop:
                step(builder.add(mid, loop.index), group, accs, False, True)

        for k, group in enumerate(passes):
            accs = new_accs(group)
            if k == 0:
                run(tt0, tt1, group, accs)
            else:
                with cgutils.for_range(builder, builder.sub(tt1, tt0)) as loop:
                    step(builder.add(tt0, loop.index), group, accs, False, False)
            store(group, accs, out_row)
        return builder.load(hi_p)


    @intrinsic
    def _rows(typingctx, packed, indices, weights, out, b, t0, t1, pf_last):
        return types.uint64(packed, indices, weights, out, b, t0, t1, pf_last), codegen

    _CACHE8[key] = _rows
    return _rows
