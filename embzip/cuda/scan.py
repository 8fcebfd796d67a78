"""Prefix sums and small helpers every stage shares (CUDA).

The codec needs exclusive prefix sums in many places (word offsets of bit-packed blocks,
outlier offsets, unique-row numbers): :func:`exclusive_scan` does one with a block-wide
Hillis-Steele scan in shared memory per tile, a recursive scan of the tile totals, and a
pass that adds them back. It uses ``syncthreads`` only (no warp shuffles), so the simulator
runs the same code as the GPU.
"""

from __future__ import annotations

import os

import numpy as np
from numba import cuda, int64

from .._stream_order import numba_view
from ._launch import MAX_THREADS, SIMULATOR, THREADS, blocks, kernel

__all__ = ["exclusive_scan", "fill", "copy_bytes", "device_empty", "to_device", "scalars", "collect"]


#: Values each thread sums serially before the block-wide scan: fewer barriers per value.
ITEMS = 8


@kernel
def _scan_tiles(values, out, tile_sums):
    # Tiles of blockDim * ITEMS values: out[i + 1] = sum(values[tile start .. i]) and
    # tile_sums[t] = the tile's total. out[0] is written by the caller.
    buf = cuda.shared.array(MAX_THREADS, int64)
    local = cuda.local.array(ITEMS, int64)
    tid = cuda.threadIdx.x
    width = cuda.blockDim.x
    n = values.shape[0]
    for tile in range(cuda.blockIdx.x, tile_sums.shape[0], cuda.gridDim.x):
        first = (tile * width + tid) * ITEMS
        total = int64(0)
        for k in range(ITEMS):
            i = first + k
            total += int64(values[i]) if i < n else int64(0)
            local[k] = total
        buf[tid] = total
        cuda.syncthreads()
        step = 1
        while step < width:  # Hillis-Steele inclusive scan of the thread totals
            add = buf[tid - step] if tid >= step else int64(0)
            cuda.syncthreads()
            buf[tid] += add
            cuda.syncthreads()
            step *= 2
        before = buf[tid] - total
        for k in range(ITEMS):
            i = first + k
            if i < n:
                out[i + 1] = before + local[k]
        if tid == width - 1:
            tile_sums[tile] = buf[tid]
        cuda.syncthreads()


@kernel
def _add_tile_offsets(out, offsets, width):
    n = out.shape[0] - 1
    start = cuda.grid(1)
    for i in range(start, n, cuda.gridsize(1)):
        out[i + 1] += offsets[i // width]


@kernel
def _fill(out, value):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = value


@kernel
def _copy_bytes(src, dst, dst_offset):
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        dst[dst_offset + i] = src[i]


@kernel
def _collect3(out, a, ia, b, ib, c, ic):
    if cuda.grid(1) == 0:
        out[0] = a[ia]
        out[1] = b[ib]
        out[2] = c[ic]


def collect(a, ia, b, ib, c, ic) -> list:
    """``[a[ia], b[ib], c[ic]]`` from three device arrays in one host read (one sync)."""
    out = device_empty(3, np.int64)
    _collect3[1, 1](out, a, int(ia), b, int(ib), c, int(ic))
    return scalars(out)


_pool = None  # cupy, when its memory pool is usable: see device_empty


def _cupy_pool():
    global _pool
    if _pool is None:
        _pool = False
        if not SIMULATOR and os.environ.get("EMBZIP_CUDA_ALLOCATOR", "cupy") == "cupy":
            try:
                import cupy
                if cupy.is_available():
                    _pool = cupy
            except Exception:  # no cupy, or cupy without a GPU: numba allocates
                pass
    return _pool


def device_empty(shape, dtype, for_caller: bool = False):
    """An uninitialized device array (a numba device array); ``shape`` an int or a tuple.

    A compress makes a few dozen small arrays; numba allocates each with cudaMalloc, tens of
    microseconds apiece. When cupy works here they come from cupy's memory pool instead
    (wrapped zero-copy; ``EMBZIP_CUDA_ALLOCATOR=numba`` turns that off), taken on the legacy
    default stream where the kernels using them run, and wrapped bound to no stream, so
    neither the allocation nor the array's copies wait on or run in the caller's current
    cupy stream (see embzip._stream_order).

    ``for_caller``: an array handed to the caller (a frame, a decoded array) is taken on the
    caller's current cupy stream instead, so that when the caller drops it, cupy reuses the
    memory only behind the caller's own work on it; the block may come from work still queued
    on that stream, so the stream is drained first (once per call).
    """
    shape = int(shape) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
    cupy = _cupy_pool()
    if cupy and np.prod(shape) > 0:  # a size-0 cupy array has a null pointer: numba allocates
        if for_caller:
            memory = cupy.empty(shape, dtype=np.dtype(dtype))
            cupy.cuda.get_current_stream().synchronize()
        else:
            with cupy.cuda.Stream.null:
                memory = cupy.empty(shape, dtype=np.dtype(dtype))
        return numba_view(memory)
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def to_device(host: np.ndarray):
    """Copy a small host array (metadata: tables, offsets) to the device."""
    host = np.ascontiguousarray(host)
    if not _cupy_pool():
        return cuda.to_device(host)
    out = device_empty(host.shape, host.dtype)
    out.copy_to_device(host)
    return out


def fill(out, value) -> None:
    """Set every element of a 1-D device array to ``value`` (of the array's dtype)."""
    if out.shape[0]:
        _fill[blocks(out.shape[0]), THREADS](out, out.dtype.type(value))


def copy_bytes(src, dst, dst_offset: int) -> None:
    """``dst[dst_offset:dst_offset + len(src)] = src`` for 1-D uint8 device arrays."""
    if src.shape[0]:
        _copy_bytes[blocks(src.shape[0]), THREADS](src, dst, int(dst_offset))


def exclusive_scan(values, out=None):
    """``out[0] = 0, out[i + 1] = values[0] + ... + values[i]`` (int64, length n + 1).

    ``values`` is a 1-D device array of integers; the total is ``out[n]``.
    """
    n = values.shape[0]
    if out is None:
        out = device_empty(n + 1, np.int64)
    _fill[1, 1](out[:1], int64(0))
    if n == 0:
        return out
    tile = THREADS * ITEMS
    tiles = -(-n // tile)
    tile_sums = device_empty(tiles, np.int64)
    _scan_tiles[blocks(tiles, 1), THREADS](values, out, tile_sums)
    if tiles > 1:
        offsets = exclusive_scan(tile_sums)
        _add_tile_offsets[blocks(n), THREADS](out, offsets, tile)
    return out


def scalars(array) -> list:
    """A small device array's elements as Python numbers (one copy, one host sync)."""
    return [v.item() for v in array.copy_to_host()]
