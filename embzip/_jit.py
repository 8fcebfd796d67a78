"""The one place that builds numba jit decorators.

Why one place: every kernel must be compiled with the same numerics. ``fastmath`` is never
enabled (it would let LLVM reassociate or contract the quantizer's multiply and break the
error bound), ``error_model="numpy"`` keeps division semantics IEEE, and on-disk caching is
opt-in through ``EMBZIP_NUMBA_CACHE=1`` because concurrent cache writes from several MPI
ranks are a known crash source (numba issues 4807, 10128).
"""

from __future__ import annotations

import contextlib
import os

import numba

__all__ = ["kernel", "parallel_kernel", "prange", "for_size", "threads_for", "PARALLEL_MIN_BYTES"]

_CACHE = os.environ.get("EMBZIP_NUMBA_CACHE", "0") == "1"

prange = numba.prange


def kernel(fn=None, **overrides):
    """Serial ``@njit`` kernel with embzip's fixed numerics options."""
    opts = dict(nogil=True, cache=_CACHE, fastmath=False, error_model="numpy", boundscheck=False)
    opts.update(overrides)
    if fn is None:
        return lambda f: numba.njit(**opts)(f)
    return numba.njit(**opts)(fn)


def parallel_kernel(fn=None, **overrides):
    """``@njit(parallel=True)`` kernel; use ``prange`` for the outer loop.

    The dispatcher carries a serial twin, ``.serial`` (the same function without
    ``parallel``: prange runs as range, same results), compiled lazily on first use. Calling
    a parallel kernel costs ~2 us more than a serial one even on one thread (numba's
    scheduler), a third of a small frame's Python overhead; :func:`for_size` picks the twin.
    """
    if fn is None:
        return lambda f: parallel_kernel(f, **overrides)
    dispatcher = kernel(fn, parallel=True, **overrides)
    dispatcher.serial = kernel(fn, **overrides)
    return dispatcher


#: Inputs smaller than this run the parallel kernels on one thread. Waking numba's worker
#: threads costs ~10-50 us per parallel region on an idle machine and ~10 ms when every
#: core is busy (measured: a 1.6 MB batch took 184 ms on 2 threads under load, 3.4 ms on 1),
#: and small inputs gain little from a second core anyway.
PARALLEL_MIN_BYTES = int(os.environ.get("EMBZIP_PARALLEL_MIN_BYTES", 4 << 20))


class _OneThread:
    """Context manager behind :func:`threads_for`: a class, not a generator, and no
    ``set_num_threads`` calls when the count is already 1 (each costs ~1 us, and the small
    frames of a compressed all-to-all are encoded by the hundred per step)."""

    __slots__ = ("previous",)

    def __enter__(self):
        self.previous = numba.get_num_threads()
        if self.previous != 1:
            numba.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        if self.previous != 1:
            numba.set_num_threads(self.previous)
        return False


_ALL_THREADS = contextlib.nullcontext()


def for_size(parallel, nbytes: int):
    """``parallel`` (a :func:`parallel_kernel`) for inputs of at least PARALLEL_MIN_BYTES,
    else its serial twin: the same cut as :func:`threads_for`, without the scheduler."""
    return parallel if nbytes >= PARALLEL_MIN_BYTES else parallel.serial


def threads_for(nbytes: int):
    """Run the enclosed kernels on one thread when ``nbytes`` is small (see PARALLEL_MIN_BYTES)."""
    if nbytes >= PARALLEL_MIN_BYTES:
        return _ALL_THREADS
    return _OneThread()
