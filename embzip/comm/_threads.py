"""Long-lived threads for the pipelined calls: one pool per process, threads reused.

Why not a new thread per call: with MPICH initialised, every Python thread started and joined
leaves ~290 bytes behind (measured with the PyPI MPICH 5.0: 0 bytes without MPI), and a
pipelined call used two, so a training loop of a million ``Ialltoallv`` calls grew ~0.6 GB
per rank. A pool starts a thread only when none is idle, so a loop reuses the same few.

The pool never caps concurrency in practice (``MAX_THREADS``): a pipelined call's MPI thread
waits for its compressing thread, and calls in flight on different communicators may need
each other's progress, so a small cap could deadlock. Once the interpreter starts shutting
down (the main thread has returned) the pool takes no new work, yet a call may still need a
thread then (a call whose compressing thread starts late, or one made from another non-daemon
thread): such work gets a thread of its own, not a daemon, which Python waits for before it
finalizes MPI, as it waits for the pool's. A forked child starts with no pool.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading

__all__ = ["start", "MAX_THREADS"]

MAX_THREADS = 1024
_POOL = None
_POOL_LOCK = threading.Lock()


def _pool():
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="embzip-idle")
        return _POOL


def _forget_pool():  # (in a forked child: the parent's threads did not come along)
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _own_thread(name: str, fn, args) -> concurrent.futures.Future:
    future = concurrent.futures.Future()

    def body():
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    threading.Thread(target=body, name=name, daemon=False).start()
    return future


def _named(name, fn, args):
    thread = threading.current_thread()
    thread.name = name  # (what a traceback or a debugger shows while the work runs)
    try:
        return fn(*args)
    finally:
        thread.name = "embzip-idle"


def start(name: str, fn, *args) -> concurrent.futures.Future:
    """Run ``fn(*args)`` on a pool thread named ``name`` while it runs; its Future."""
    try:
        return _pool().submit(_named, name, fn, args)
    except RuntimeError:  # the interpreter is shutting down (see above)
        return _own_thread(name, fn, args)
