"""Fused quantize + bit-pack for the fast path: two passes over the input, no code array.

Materializing the codes costs a full-size write to fresh memory and a re-read; quantizing is
cheaper than that, so pass 1 quantizes to find each block's width and outlier count, and
pass 2 quantizes again and packs straight into the frame. Both use ``quantize_one``, the
same function as the materializing quantizer, so the frames are identical.
Full blocks only (256 values, the layout of cpu/bitpack.py); the caller handles the tail.
"""

from __future__ import annotations

import numpy as np

from .._jit import parallel_kernel, prange

#: Rows of the scratch array the caller passes to pack_blocks (a few per thread, for balance).
SCRATCH_ROWS = 64
from .bitpack import BLOCK_SIZE, pack_one_block
from .quantize import quantize_one_f32, quantize_one_f64


def _make_fused(quantize_one):
    @parallel_kernel
    def plan_blocks(values, inv_step, step, abs_error, widths, block_outliers):
        # widths[b], block_outliers[b] for every full block b.
        for b in prange(widths.size):
            start = b * BLOCK_SIZE
            acc = np.uint32(0)
            bad = 0
            for j in range(BLOCK_SIZE):
                code, ok = quantize_one(values[start + j], inv_step, step, abs_error)
                acc |= code
                bad += 0 if ok else 1
            width = 0
            while acc:
                acc >>= np.uint32(1)
                width += 1
            widths[b] = width
            block_outliers[b] = bad

    @parallel_kernel
    def pack_blocks(values, inv_step, step, abs_error, widths, word_offsets, words,
                    block_outliers, outlier_offsets, positions, scratch):
        # Pack full block b at words[word_offsets[b]:]; outlier indices of block b go to
        # positions[outlier_offsets[b]:], in increasing order. Each of the scratch.shape[0]
        # workers takes a contiguous run of blocks and quantizes one block at a time into
        # its scratch row: the quantizer loop then vectorizes and the packer's
        # read-modify-writes stay in L1 (measured ~3x faster than quantizing per lane).
        workers = scratch.shape[0]
        nblocks = widths.size
        per_worker = (nblocks + workers - 1) // workers
        for worker in prange(workers):
            codes = scratch[worker]
            for b in range(worker * per_worker, min((worker + 1) * per_worker, nblocks)):
                start = b * BLOCK_SIZE
                for j in range(BLOCK_SIZE):
                    code, ok = quantize_one(values[start + j], inv_step, step, abs_error)
                    codes[j] = code
                if block_outliers[b]:
                    at = outlier_offsets[b]
                    for j in range(BLOCK_SIZE):
                        code, ok = quantize_one(values[start + j], inv_step, step, abs_error)
                        if not ok:
                            positions[at] = start + j
                            at += 1
                pack_one_block(codes, widths[b], word_offsets[b], words)

    return plan_blocks, pack_blocks


plan_blocks_f32, pack_blocks_f32 = _make_fused(quantize_one_f32)
plan_blocks_f64, pack_blocks_f64 = _make_fused(quantize_one_f64)
