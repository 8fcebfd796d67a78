"""Prefix sums and small helpers every stage shares (CUDA).

The codec needs exclusive prefix sums in many places (word offsets of bit-packed blocks,
outlier offsets, unique-row numbers): :func:`exclusive_scan` does one with a block-wide
Hillis-Steele scan in shared memory per tile, a recursive scan of the tile totals, and a
pass that adds them back. It uses ``syncthreads`` only (no warp shuffles), so the simulator
runs the same code as the GPU. The scan also writes its total and last value into two
counter slots (embzip.cuda.memory), so that callers read sizes with their other counters in
one host copy instead of a launch and a copy of their own.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, int64

from ._launch import MAX_THREADS, THREADS, blocks, kernel
from .memory import _fill, current_workspace, device_empty, fill, to_device

__all__ = ["exclusive_scan", "fill", "copy_bytes", "device_empty", "to_device"]


#: Values each thread sums serially before the block-wide scan: fewer barriers per value.
ITEMS = 8


@kernel
def _scan_tiles(values, out, tile_sums, total):
    # Tiles of blockDim * ITEMS values: out[0] = 0, out[i + 1] = sum(values[tile start .. i])
    # and tile_sums[t] = the tile's total. With one tile, total = [out[n], values[n - 1]].
    buf = cuda.shared.array(MAX_THREADS, int64)
    local = cuda.local.array(ITEMS, int64)
    tid = cuda.threadIdx.x
    width = cuda.blockDim.x
    n = values.shape[0]
    if cuda.grid(1) == 0:
        out[0] = 0
    for tile in range(cuda.blockIdx.x, tile_sums.shape[0], cuda.gridDim.x):
        first = (tile * width + tid) * ITEMS
        mine = int64(0)
        for k in range(ITEMS):
            i = first + k
            mine += int64(values[i]) if i < n else int64(0)
            local[k] = mine
        buf[tid] = mine
        cuda.syncthreads()
        step = 1
        while step < width:  # Hillis-Steele inclusive scan of the thread totals
            add = buf[tid - step] if tid >= step else int64(0)
            cuda.syncthreads()
            buf[tid] += add
            cuda.syncthreads()
            step *= 2
        before = buf[tid] - mine
        for k in range(ITEMS):
            i = first + k
            if i < n:
                out[i + 1] = before + local[k]
        if tid == width - 1:
            tile_sums[tile] = buf[tid]
            if tile_sums.shape[0] == 1:
                total[0] = buf[tid]
                total[1] = int64(values[n - 1])
        cuda.syncthreads()


@kernel
def _add_tile_offsets(out, offsets, width, values, total):
    n = out.shape[0] - 1
    start = cuda.grid(1)
    for i in range(start, n, cuda.gridsize(1)):
        out[i + 1] += offsets[i // width]
        if i == n - 1:
            total[0] = out[n]
            total[1] = int64(values[n - 1])


@kernel
def _copy_bytes(src, dst, dst_offset):
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        dst[dst_offset + i] = src[i]


def copy_bytes(src, dst, dst_offset: int) -> None:
    """``dst[dst_offset:dst_offset + len(src)] = src`` for 1-D uint8 device arrays."""
    if src.shape[0]:
        _copy_bytes[blocks(src.shape[0]), THREADS](src, dst, int(dst_offset))


def exclusive_scan(values, out=None, total=None):
    """``out[0] = 0, out[i + 1] = values[0] + ... + values[i]`` (int64, length n + 1).

    ``values`` is a 1-D device array of integers. ``total``: int64 counter slots (a
    :class:`~embzip.cuda.memory.Counters` of 2) that receive ``[out[n], values[n - 1]]``
    (left at 0 when n == 0).
    """
    n = values.shape[0]
    if out is None:
        out = device_empty(n + 1, np.int64)
    if n == 0:
        _fill[1, 1](out[:1], int64(0))
        return out
    total = (total or current_workspace().counters(2)).device
    tile = THREADS * ITEMS
    tiles = -(-n // tile)
    tile_sums = device_empty(tiles, np.int64)
    _scan_tiles[blocks(tiles, 1), THREADS](values, out, tile_sums, total)
    if tiles > 1:
        offsets = exclusive_scan(tile_sums)
        _add_tile_offsets[blocks(n), THREADS](out, offsets, tile, values, total)
    return out
