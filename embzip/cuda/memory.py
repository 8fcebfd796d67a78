"""Device memory of the CUDA codec: allocation, and a per-call workspace.

A compress or decompress needs a few dozen arrays besides its frame: block widths, prefix
sums, hash tables, counters. On the GPUs we measured (docs/cuda.md) each allocation cost
26-114 us and each host read of a counter 18-35 us, more than the kernels of a 1 MiB call.
So inside :func:`workspace` (opened around every codec call), :func:`device_empty`
slices small arrays out of one chunk allocation, and :meth:`Workspace.counters` hands out
zeroed int64 slots from one region, so that the host reads several of them with one copy
(:meth:`Workspace.read`).

Why slicing is safe: every kernel and copy of a call runs on the legacy default stream
(embzip._stream_order), so work queued on a view is ordered after all work queued before
it; the workspace holds its chunks until the call ends, and cupy's pool then reuses them
only behind that work. Arrays that outlive the call (a frame, a decoded array) are allocated with
``for_caller=True`` and never come from the workspace.

Rule for counters: a slot is written only by kernels queued between :meth:`Workspace.counters`
and the :meth:`Workspace.read` that returns it; every read copies afresh.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading

import numpy as np
from numba import cuda

from .._stream_order import numba_view
from ._launch import SIMULATOR, THREADS, blocks, kernel

__all__ = ["device_empty", "to_device", "upload", "fill", "workspace", "in_workspace", "current_workspace", "Workspace", "Counters"]

#: Bytes of one workspace chunk; larger arrays get their own allocation.
CHUNK_BYTES = 1 << 20
#: Every array in a chunk starts at a multiple of this (cudaMalloc's alignment).
ALIGN = 256
#: int64 counter slots per zeroed region (one fill launch each).
COUNTER_SLOTS = 64


@kernel
def _fill(out, value):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = value


def fill(out, value) -> None:
    """Set every element of a 1-D device array to ``value`` (of the array's dtype)."""
    if out.shape[0]:
        _fill[blocks(out.shape[0]), THREADS](out, out.dtype.type(value))


_pool = None  # cupy, when its memory pool is usable: see allocate


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


def _shape(shape):
    return int(shape) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)


def allocate(shape, dtype, for_caller: bool = False):
    """A fresh uninitialized device array (no workspace); see :func:`device_empty`."""
    shape = _shape(shape)
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


class Counters:
    """``count`` zeroed int64 slots of a workspace: ``device`` for kernels, read on the host
    with :meth:`Workspace.read`."""

    __slots__ = ("device", "region", "start", "count")

    def __init__(self, device, region, start: int, count: int):
        self.device, self.region, self.start, self.count = device, region, start, count


class Workspace:
    """Scratch memory of one codec call (see the module docstring)."""

    def __init__(self):
        self._chunk = None
        self._chunks = []  # every chunk, held until the call ends (views alone might not hold them)
        self._free = 0  # first unused byte of _chunk
        self._region = None  # int64[COUNTER_SLOTS], zeroed
        self._region_used = 0

    def empty(self, shape, dtype):
        """An uninitialized array for this call: a slice of a chunk when it is small."""
        shape = _shape(shape)
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape if isinstance(shape, tuple) else (shape,)) * dtype.itemsize
        if nbytes == 0 or nbytes > CHUNK_BYTES // 4 or shape == ():  # (0-d: allocated as such)
            return allocate(shape, dtype)
        at = -(-self._free // ALIGN) * ALIGN
        if self._chunk is None or at + nbytes > self._chunk.shape[0]:
            self._chunk = allocate(CHUNK_BYTES, np.uint8)
            self._chunks.append(self._chunk)
            at = 0
        self._free = at + nbytes
        view = self._chunk[at:at + nbytes].view(dtype)
        return view.reshape(shape) if isinstance(shape, tuple) and len(shape) != 1 else view

    def counters(self, count: int) -> Counters:
        """``count`` int64 slots holding 0, for kernels to add or write into (more than
        COUNTER_SLOTS get a zeroed region of their own)."""
        if count > COUNTER_SLOTS:
            region = self.empty(count, np.int64)
            fill(region, 0)
            return Counters(region, region, 0, count)
        if self._region is None or self._region_used + count > COUNTER_SLOTS:
            self._region = self.empty(COUNTER_SLOTS, np.int64)
            fill(self._region, 0)
            self._region_used = 0
        start = self._region_used
        self._region_used += count
        return Counters(self._region[start:start + count], self._region, start, count)

    def read(self, *counters: Counters) -> list:
        """The values of ``counters`` as lists of Python ints, one host copy per region."""
        copies = {}
        out = []
        for c in counters:
            key = id(c.region)
            if key not in copies:
                used = max(k.start + k.count for k in counters if k.region is c.region)
                copies[key] = c.region[:used].copy_to_host()
            out.append([int(v) for v in copies[key][c.start:c.start + c.count]])
        return out


_local = threading.local()


def current_workspace() -> Workspace:
    """The calling thread's open workspace, or a fresh one used for this request only."""
    return getattr(_local, "workspace", None) or Workspace()


@contextlib.contextmanager
def workspace():
    """Open a workspace for this thread's codec call (nested opens share the outer one)."""
    if getattr(_local, "workspace", None) is not None:
        yield _local.workspace
        return
    _local.workspace = Workspace()
    try:
        yield _local.workspace
    finally:
        _local.workspace = None


def in_workspace(fn):
    """Decorate a codec entry point to run inside :func:`workspace`."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with workspace():
            return fn(*args, **kwargs)
    return call


def device_empty(shape, dtype, for_caller: bool = False):
    """An uninitialized device array (a numba device array); ``shape`` an int or a tuple.

    Inside :func:`workspace`, a small one is a slice of the call's chunk. Otherwise it comes
    from cupy's memory pool when cupy works here (``EMBZIP_CUDA_ALLOCATOR=numba`` turns that
    off), taken on the legacy default stream where the kernels using it run, and wrapped bound
    to no stream, so neither the allocation nor the array's copies wait on or run in the
    caller's current cupy stream (see embzip._stream_order).

    ``for_caller``: an array handed to the caller (a frame, a decoded array) is never from the
    workspace, and is taken on the caller's current cupy stream, so that when the caller
    drops it, cupy reuses the memory only behind the caller's own work on it; the block may
    come from work still queued on that stream, so the stream is drained first.
    """
    ws = getattr(_local, "workspace", None)
    if ws is not None and not for_caller:
        return ws.empty(shape, dtype)
    return allocate(shape, dtype, for_caller)


def upload(*hosts: np.ndarray) -> list:
    """Small host arrays on the device with one copy: views of one buffer, in order.

    A copy from pageable host memory first waits for all queued work, so several small
    uploads at one point cost several waits; packed, they cost one."""
    hosts = [np.ascontiguousarray(h) for h in hosts]
    starts, end = [], 0
    for h in hosts:
        end = -(-end // 8) * 8
        starts.append(end)
        end += h.nbytes
    packed = np.zeros(max(end, 1), np.uint8)
    for h, at in zip(hosts, starts):
        packed[at:at + h.nbytes] = h.reshape(-1).view(np.uint8)
    device = to_device(packed)
    return [device[at:at + h.nbytes].view(h.dtype).reshape(h.shape) if h.nbytes else device_empty(h.shape, h.dtype)
            for h, at in zip(hosts, starts)]


def to_device(host: np.ndarray):
    """Copy a small host array (metadata: tables, offsets) to the device."""
    host = np.ascontiguousarray(host)
    if not _cupy_pool() and getattr(_local, "workspace", None) is None:
        return cuda.to_device(host)
    out = device_empty(host.shape, host.dtype)
    out.copy_to_device(host)
    return out
