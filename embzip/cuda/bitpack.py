"""Per-block fixed-width bit-packing (CUDA twin of cpu/bitpack.py; layout in docs/format.md §5).

Work split: a *group* of 32 threads owns one 256-value block. Each thread loads 8 values
at a stride of 32 (a warp reads 128 contiguous bytes per load), the group ORs them into the
block's width with a shared-memory tree (``syncthreads`` only: no warp shuffles, so the
simulator runs the GPU code), and to pack, each thread builds whole output words from the
block's codes held in shared memory, so every word is written once, coalesced, without
atomics. Unpacking is one thread per value.

The kernels take a *loader* ``load(src, i, inv_step, step, abs_error) -> (code, ok)``: the
code stream here (:func:`load_code`), or the quantizer in fused.py, which then packs
straight from the float input and needs no code array. Word offsets are given as
``width_sums`` (exclusive prefix sums of the widths): block ``b`` starts at word
``8 * width_sums[b]``.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, int32, int64, uint8, uint32, uint64

from ..cpu.bitpack import BLOCK_SIZE, LANES
from ._launch import MAX_THREADS, device, kernel

__all__ = ["GROUP", "load_code", "make_plan", "make_pack", "make_pack_tail", "plan_codes", "pack_codes",
           "pack_tail_codes", "unpack_codes", "unpack_f32", "unpack_f64", "unpack_tail_codes",
           "unpack_tail_f32", "unpack_tail_f64", "write_head", "check_width_table"]

GROUP = 32  # threads per 256-value block
PER_THREAD = BLOCK_SIZE // GROUP
MAX_GROUPS = MAX_THREADS // GROUP
_SHARED_CODES = MAX_GROUPS * BLOCK_SIZE  # shared-array sizes must be plain globals


@device
def load_code(src, i, inv_step, step, abs_error):
    return src[i], True


@device
def bit_width(acc):
    return 32 - cuda.clz(uint32(acc))


@device
def pack_word(codes, base, w, t):
    """Word ``t`` (0 .. 8w-1) of a block of width ``w`` whose codes are ``codes[base:base+256]``."""
    lane = t & (LANES - 1)
    lo_bit = (t // LANES) * 32
    r0 = lo_bit // w
    r1 = min((lo_bit + 31) // w, 31)
    word = int64(0)
    for r in range(r0, r1 + 1):
        rel = r * w - lo_bit
        v = int64(codes[base + r * LANES + lane])
        if rel >= 0:
            word |= v << rel
        else:  # the value started in the lane's previous word
            word |= v >> (-rel)
    return uint32(word & 0xFFFFFFFF)


@device
def store_outlier(frame, positions_at, values_at, itemsize, index, position, bits):
    """Write outlier ``index``: its uint64 position and its value's bits, little-endian bytes
    (outlier sections have no alignment in a frame)."""
    p = positions_at + 8 * index
    for k in range(8):
        frame[p + k] = uint8((position >> (8 * k)) & 0xFF)
    p = values_at + itemsize * index
    wide = uint64(bits)
    for k in range(itemsize):
        frame[p + k] = uint8((wide >> uint64(8 * k)) & uint64(0xFF))


def make_plan(load):
    """Kernel ``plan(src, n, inv_step, step, abs_error, widths, block_outliers)``: the width and
    outlier count of every block of ``n`` values (the last may be partial)."""

    @kernel
    def plan_blocks(src, n, inv_step, step, abs_error, widths, block_outliers):
        acc = cuda.shared.array(MAX_THREADS, uint32)
        bad = cuda.shared.array(MAX_THREADS, int32)
        tid = cuda.threadIdx.x
        group = tid // GROUP
        lane = tid % GROUP
        groups = cuda.blockDim.x // GROUP
        nblocks = widths.shape[0]
        # Every thread of a CUDA block runs the same iterations: syncthreads inside is safe.
        for first in range(cuda.blockIdx.x * groups, nblocks, cuda.gridDim.x * groups):
            b = first + group
            a = uint32(0)
            count = 0
            if b < nblocks:
                start = b * BLOCK_SIZE
                for k in range(PER_THREAD):
                    i = start + lane + GROUP * k
                    if i < n:
                        code, ok = load(src, i, inv_step, step, abs_error)
                        a |= code
                        count += 0 if ok else 1
            acc[tid] = a
            bad[tid] = count
            cuda.syncthreads()
            s = GROUP // 2
            while s > 0:
                if lane < s:
                    acc[tid] |= acc[tid + s]
                    bad[tid] += bad[tid + s]
                cuda.syncthreads()
                s //= 2
            if lane == 0 and b < nblocks:
                widths[b] = bit_width(acc[tid])
                block_outliers[b] = bad[tid]
            cuda.syncthreads()

    return plan_blocks


def make_pack(load, itemsize):
    """Kernel packing every *full* block into ``words`` and writing its outliers (positions in
    increasing order from ``outlier_offsets[b]``) into the frame's outlier sections."""

    @kernel
    def pack_blocks(src, inv_step, step, abs_error, widths, width_sums, words,
                    block_outliers, outlier_offsets, frame, positions_at, values_at, src_bits):
        codes = cuda.shared.array(_SHARED_CODES, uint32)
        flags = cuda.shared.array(_SHARED_CODES, uint8)
        tid = cuda.threadIdx.x
        group = tid // GROUP
        lane = tid % GROUP
        groups = cuda.blockDim.x // GROUP
        base = group * BLOCK_SIZE
        nfull = widths.shape[0]
        for first in range(cuda.blockIdx.x * groups, nfull, cuda.gridDim.x * groups):
            b = first + group
            start = b * BLOCK_SIZE
            if b < nfull:
                for k in range(PER_THREAD):
                    j = lane + GROUP * k
                    code, ok = load(src, start + j, inv_step, step, abs_error)
                    codes[base + j] = code
                    flags[base + j] = 0 if ok else 1
            cuda.syncthreads()
            if b < nfull:
                w = int64(widths[b])
                at = LANES * width_sums[b]
                for t in range(lane, LANES * w, GROUP):
                    words[at + t] = pack_word(codes, base, w, t)
                if lane == 0 and block_outliers[b] > 0:
                    index = outlier_offsets[b]
                    for j in range(BLOCK_SIZE):
                        if flags[base + j]:
                            store_outlier(frame, positions_at, values_at, itemsize, index,
                                          start + j, src_bits[start + j])
                            index += 1
            cuda.syncthreads()

    return pack_blocks


def make_pack_tail(load, itemsize):
    """Single-thread kernel: the last partial block as a plain little-endian bit stream at
    ``out[out_at:]``, and its outliers (from outlier index ``index``)."""

    @kernel
    def pack_tail(src, start, count, inv_step, step, abs_error, width, out, out_at,
                  frame, positions_at, values_at, index, src_bits):
        if cuda.grid(1) != 0:
            return
        acc = int64(0)
        filled = 0
        pos = out_at
        for j in range(count):
            code, ok = load(src, start + j, inv_step, step, abs_error)
            if not ok:
                store_outlier(frame, positions_at, values_at, itemsize, index, start + j,
                              src_bits[start + j])
                index += 1
            acc |= int64(code) << filled
            filled += width
            while filled >= 8:
                out[pos] = uint8(acc & 0xFF)
                pos += 1
                acc >>= 8
                filled -= 8
        if filled > 0:
            out[pos] = uint8(acc & 0xFF)

    return pack_tail


plan_codes = make_plan(load_code)
pack_codes = make_pack(load_code, 4)
pack_tail_codes = make_pack_tail(load_code, 4)


def _make_unpack(dequantize, cast):
    @kernel
    def unpack_full(words, widths, width_sums, step, out):
        # One thread per value of the full blocks; inputs were validated.
        total = widths.shape[0] * BLOCK_SIZE
        for i in range(cuda.grid(1), total, cuda.gridsize(1)):
            b = i // BLOCK_SIZE
            j = i % BLOCK_SIZE
            w = int64(widths[b])
            lane = j % LANES
            bit = (j // LANES) * w
            k = LANES * width_sums[b] + (bit // 32) * LANES + lane
            shift = bit % 32
            v = int64(0)
            if w > 0:
                v = int64(words[k]) >> shift
                if shift + w > 32:  # the value continues in the lane's next word
                    v |= int64(words[k + LANES]) << (32 - shift)
                v &= (int64(1) << w) - 1
            if dequantize:
                out[i] = cast((v >> 1) ^ -(v & 1)) * step
            else:
                out[i] = uint32(v)

    @kernel
    def unpack_tail(data, at, width, step, out, out_at, count):
        # Value j of the tail bit stream at data[at:] -> out[out_at + j].
        for j in range(cuda.grid(1), count, cuda.gridsize(1)):
            bit = j * width
            byte = at + bit // 8
            v = int64(0)
            need = (bit % 8 + width + 7) // 8
            for k in range(need):
                v |= int64(data[byte + k]) << (8 * k)
            v = (v >> (bit % 8)) & ((int64(1) << width) - 1)
            if dequantize:
                out[out_at + j] = cast((v >> 1) ^ -(v & 1)) * step
            else:
                out[out_at + j] = uint32(v)

    return unpack_full, unpack_tail


unpack_codes, unpack_tail_codes = _make_unpack(False, np.float64)
unpack_f32, unpack_tail_f32 = _make_unpack(True, np.float32)
unpack_f64, unpack_tail_f64 = _make_unpack(True, np.float64)


@kernel
def write_head(section, widths, head_end):
    """The section head: u32 block size, the width table, zero padding up to ``head_end``."""
    nblocks = widths.shape[0]
    for p in range(cuda.grid(1), head_end, cuda.gridsize(1)):
        if p < 4:
            section[p] = uint8((BLOCK_SIZE >> (8 * p)) & 0xFF)
        elif p < 4 + nblocks:
            section[p] = widths[p - 4]
        else:
            section[p] = 0


@kernel
def check_width_table(data, widths_at, nblocks, head_end, stats):
    """``stats[0]`` = max width, ``stats[1]`` = 1 if the padding after the table is not zero,
    ``stats[2]`` = the block size before the table (``stats`` starts at 0)."""
    top = 0
    for b in range(cuda.grid(1), nblocks, cuda.gridsize(1)):
        top = max(top, int64(data[widths_at + b]))
    if top:
        cuda.atomic.max(stats, 0, top)
    if cuda.grid(1) == 0:
        for p in range(widths_at + nblocks, head_end):
            if data[p]:
                stats[1] = 1
        size = int64(0)
        for k in range(4):
            size |= int64(data[widths_at - 4 + k]) << (8 * k)
        stats[2] = size

