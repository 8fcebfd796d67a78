"""MPI worker cases: Ialltoallv, the Comm wrapper, communicators' lifetimes (forget, Free).

Run through worker.py (see there).
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

import embzip.comm as ec
from worker_common import COMM, DTYPES, ME, P, assert_close, case, payload, reference, uneven_counts  # (same directory)


@case
def pipelined():
    """Ialltoallv: chunks, uneven counts with zeros, tables, test(), bypass and pass-through."""
    counts = uneven_counts(10, scale=60)
    sc, rc = counts[ME], counts[:, ME]
    for dtype in DTYPES:
        send = payload(int(sc.sum()), dtype, 11)
        ref = reference([send, sc], lambda: [np.zeros(int(rc.sum()), dtype), rc])
        got = np.zeros(int(rc.sum()), dtype)
        req = ec.Ialltoallv(COMM, [send, sc], [got, rc], abs_error=1e-3, strategy="fast", bypass=False,
                            chunk_bytes=256)
        busy = np.ones(1000).sum()  # work while the chunks fly
        done, polled = req.test()
        while not done:
            assert polled is None
            done, polled = req.test()
        stats = req.wait()
        assert busy == 1000 and stats.mode == "compressed" and polled is stats
        assert_close(got, ref, 1e-3, f"pipelined {dtype.__name__}")
    rows = np.random.default_rng(ME).normal(size=(P * 12, 3 * 4)).astype(np.float32)
    ref = reference(rows, lambda: np.zeros_like(rows))
    got = np.zeros_like(rows)
    layout = ec.TableLayout(dim=4, bounds=[1e-3, 1e-1, 1e-2])
    ec.Ialltoallv(COMM, rows, got, abs_error=1e-3, bounds=layout, strategy="fast", bypass=False,
                  chunk_bytes=100).wait()
    for t, b in enumerate([1e-3, 1e-1, 1e-2]):
        assert_close(got[:, 4 * t:4 * t + 4], ref[:, 4 * t:4 * t + 4], b, f"pipelined table {t}")
    req = ec.Ialltoallv(COMM, rows, got, abs_error=1e-3, bypass=True)
    while not req.Test():  # mpi4py's spellings: Test() / Wait() -> True, the stats on the request
        pass
    assert req.Wait() is True and req.stats.bypassed and np.array_equal(got, ref)
    ints = np.arange(5 * P, dtype=np.int64) + ME
    iref = reference(ints, lambda: np.zeros_like(ints))
    igot = np.zeros_like(ints)
    assert ec.Ialltoallv(COMM, ints, igot).wait().mode == "passthrough" and np.array_equal(igot, iref)
    # a later call on the communicator completes the earlier request first
    first = ec.Ialltoallv(COMM, rows, got, abs_error=1e-3, strategy="fast", bypass=False, chunk_bytes=100)
    ec.Alltoallv(COMM, ints, igot)
    assert first.test() == (True, first.stats) and first.stats is not None
    assert_close(got, ref, 1e-3, "completed by the next call")
    threads_are_reused(rows, got, ref)


@case
def ialltoallv_returns_before_the_others_start():
    """As MPI's Ialltoallv, embzip's returns before the other ranks have called it: rank 0
    starts the exchange, then sends each rank the message it waits for before starting its
    own. It hung: the handshake (and, on a new communicator, its duplication) blocked."""
    rows = payload(P * 40, np.float32, 95).reshape(-1, 10)
    ref = reference(rows, lambda: np.zeros_like(rows))
    token = np.zeros(1)
    for first_call, bypass in ((True, False), (False, False), (False, True)):
        comm = COMM.Dup() if first_call else COMM
        got = np.zeros_like(rows)
        if ME == 0:
            req = ec.Ialltoallv(comm, rows, got, abs_error=1e-3, strategy="fast", bypass=bypass, chunk_bytes=400)
            for d in range(1, P):
                COMM.Send(token, dest=d, tag=95)
        else:
            COMM.Recv(token, source=0, tag=95)
            req = ec.Ialltoallv(comm, rows, got, abs_error=1e-3, strategy="fast", bypass=bypass, chunk_bytes=400)
        assert req.Wait() is True and req.stats.bypassed == bypass
        assert_close(got, ref, 0.0 if bypass else 1e-3, f"started in turn (first call {first_call}, bypass {bypass})")
        if first_call:
            comm.Free()


@case
def waitall_mixes_requests():
    """Request.Waitall / waitall / Testall / testall complete a list mixing embzip's requests
    and mpi4py's (which MPI.Request.Waitall refuses): statuses, received objects, the agreed
    error raised on every rank once everything is complete, a bad entry refused up front."""
    rows = payload(P * 30, np.float32, 96).reshape(-1, 6)
    ref = reference(rows, lambda: np.zeros_like(rows))
    right, left = (ME + 1) % P, (ME - 1) % P
    for kind in ("Waitall", "waitall", "Testall", "testall"):
        got, token = np.zeros_like(rows), np.zeros(3)
        reqs = [COMM.Irecv(token, source=left, tag=97), ec.Ialltoallv(COMM, rows, got, abs_error=1e-3,
                strategy="fast", bypass=False, chunk_bytes=100), COMM.Isend(np.full(3, ME + 0.5), dest=right, tag=97),
                COMM.irecv(source=left, tag=98), COMM.isend({"from": ME}, dest=right, tag=98)]
        mine = MPI.Status()
        statuses = [MPI.Status(), mine]  # extended to five; embzip's entry (index 1) left as it is
        if kind in ("Waitall", "waitall"):
            result = getattr(ec.Request, kind)(reqs, statuses)
        else:
            result = getattr(ec.Request, kind)(reqs, statuses)
            while result in (False, (False, None)):
                result = getattr(ec.Request, kind)(reqs, statuses)
        if kind in ("Waitall", "Testall"):
            assert result is True, result
        else:
            objects = result if kind == "waitall" else result[1]
            assert kind == "waitall" or result[0] is True
            assert objects[1] is reqs[1].stats and objects[1].mode == "compressed", objects
            assert objects[3] == {"from": left} and objects[0] is None and objects[2] is None, objects
        assert len(statuses) == 5 and statuses[1] is mine and mine.Get_source() == MPI.ANY_SOURCE
        assert statuses[0].Get_source() == left and statuses[0].Get_count(MPI.DOUBLE) == 3, kind
        assert all(r == MPI.REQUEST_NULL for k, r in enumerate(reqs) if k != 1), reqs
        assert np.array_equal(token, np.full(3, left + 0.5)) and reqs[1].wait() is reqs[1].stats
        assert_close(got, ref, 1e-3, f"Request.{kind}")
    # a bad entry is refused before anything waits: the requests are still there to complete
    got = np.zeros_like(rows)
    pending = ec.Ialltoallv(COMM, rows, got, abs_error=1e-3, strategy="fast", bypass=False, chunk_bytes=100)
    try:
        ec.Request.Waitall([pending, object()])
    except TypeError as exc:
        assert "requests[1] is a builtins.object" in str(exc), exc
    else:
        raise AssertionError("an object in the list was accepted")
    assert ec.Request.waitall([pending]) == [pending.stats]
    assert_close(got, ref, 1e-3, "after a refused list")
    if P > 1:  # (with one rank a raw Ialltoallv posts no MPI request to complete)
        # a failure on this rank alone while completing one request (injected: its copy-back
        # raises on rank 0) is raised once the others are complete, not before
        other = COMM.Dup()
        got, second, token = np.zeros_like(rows), np.zeros_like(rows), np.zeros(3)
        reqs = [ec.Ialltoallv(COMM, rows, got, abs_error=1e-3, bypass=True),
                ec.Ialltoallv(other, rows, second, abs_error=1e-3, strategy="fast", bypass=False, chunk_bytes=100),
                COMM.Irecv(token, source=left, tag=100), COMM.Isend(np.full(3, ME + 0.75), dest=right, tag=100)]
        if ME == 0:
            def failing_copy_back():
                raise RuntimeError("copy-back failed (injected)")
            if reqs[0]._work is not None:
                reqs[0]._work.result()  # (its thread sets _on_done: after it, the injection stays)
            assert reqs[0]._mpi_request is not None, "the raw call's MPI request, whose completion runs _on_done"
            reqs[0]._on_done = failing_copy_back
        try:
            ec.Request.Waitall(reqs)
            raised = None
        except RuntimeError as exc:
            raised = str(exc)
        assert raised == ("copy-back failed (injected)" if ME == 0 else None), raised
        assert reqs[1].stats is not None and reqs[2] == MPI.REQUEST_NULL and reqs[3] == MPI.REQUEST_NULL
        assert_close(second, ref, 1e-3, "beside a failed completion")
        assert np.array_equal(token, np.full(3, left + 0.75))
        reqs[0]._on_done = None  # (the failed one completes now: COMM's next call would complete it)
        assert reqs[0].wait() is reqs[0].stats and np.array_equal(got, ref)
        other.Free()
    # statuses: a tuple as long as the list works as in mpi4py; a shorter one cannot be extended
    extra = COMM.Ibarrier()
    assert ec.Request.Waitall([extra], (MPI.Status(),)) and extra == MPI.REQUEST_NULL
    barriers = [COMM.Ibarrier(), COMM.Ibarrier()]
    try:
        ec.Request.Waitall(barriers, (MPI.Status(),))
    except TypeError as exc:
        assert "statuses must be a list" in str(exc), exc
    else:
        raise AssertionError("a short tuple of statuses was accepted")
    MPI.Request.Waitall(barriers)  # (refused before waiting: they are still pending)
    if P > 1:  # the agreed error, on every rank, once the MPI request beside it is complete too
        token = np.zeros(3)
        reqs = [ec.Ialltoallv(COMM, rows, got, abs_error=1e-3, chunk_bytes=100 + ME),
                COMM.Irecv(token, source=left, tag=99), COMM.Isend(np.full(3, ME + 0.25), dest=right, tag=99)]
        for kind in ("Waitall", "Testall"):
            try:
                while not getattr(ec.Request, kind)(reqs):
                    pass
            except ec.CommValueError as exc:
                assert "disagree on chunk_bytes" in str(exc), exc
            else:
                raise AssertionError(f"Request.{kind}: a failed call raised nothing")
            # (then Testall: the completed requests, MPI's now null, raise the same error again)
            assert reqs[1] == MPI.REQUEST_NULL and np.array_equal(token, np.full(3, left + 0.25)), kind
        ec.Alltoallv(COMM, rows, got, abs_error=1e-3, strategy="fast", bypass=False)
        assert_close(got, ref, 1e-3, "after a failed Waitall")


def threads_are_reused(rows, got, ref):
    """A loop of pipelined calls reuses the same few threads: with MPICH, every thread started
    leaves ~290 bytes behind, and a thread pair per call grew a long training run by ~0.6 GB."""
    import threading

    started = []
    real_start = threading.Thread.start

    def counting_start(self):
        started.append(self.name)
        return real_start(self)

    threading.Thread.start = counting_start
    try:
        for k in range(20):
            ec.Ialltoallv(COMM, rows, got, abs_error=1e-3, strategy="fast", bypass=False, chunk_bytes=100).wait()
            assert_close(got, ref, 1e-3, f"pipelined call {k}")
    finally:
        threading.Thread.start = real_start
    assert len(started) <= 2, started  # (none when the earlier calls left the pool's threads idle)


@case
def forget_releases_buffers():
    """embzip keeps the last call's buffers alive (for cheap repeats), as documented;
    embzip.comm.forget lets go of them, and the next call still works."""
    import gc
    import weakref

    comm = COMM.Dup()
    send = np.arange(4 * P, dtype=np.float32) + ME
    ref = reference(send, lambda: np.zeros_like(send))
    recv = np.zeros_like(send)
    for bypass in (True, False, True):  # the full path, then a repeat (the express lane)
        ec.Alltoallv(comm, send, recv, abs_error=1e-3, bypass=bypass)
    kept = [weakref.ref(send), weakref.ref(recv)]
    del send, recv
    gc.collect()
    assert all(r() is not None for r in kept), "the last call's buffers were not kept"
    ec.forget(comm)
    gc.collect()
    assert all(r() is None for r in kept), "forget did not let go of the buffers"
    ec.forget(MPI.COMM_SELF)  # (a communicator embzip never saw: nothing to do)
    recv = np.zeros_like(ref)
    ec.Alltoallv(comm, np.arange(4 * P, dtype=np.float32) + ME, recv, abs_error=1e-3, bypass=True)
    assert np.array_equal(recv, ref)
    comm.Free()


@case
def comm_wrapper():
    """embzip.comm.Comm: compressed Alltoallv, mpi4py's other methods, defaults kept by Dup,
    Split, Split_type, Create and Create_group (mpi4py's own return a plain Intracomm)."""
    wrapped = ec.Comm(COMM, abs_error=1e-3, strategy="fast", bypass=False)
    assert isinstance(wrapped, MPI.Intracomm) and wrapped.Get_size() == P
    send = payload(16 * P, np.float32, 12)
    ref = reference(send, lambda: np.zeros_like(send))
    got = np.zeros_like(send)
    stats = wrapped.Alltoallv(send, got)
    assert_close(got, ref, 1e-3, "wrapper")
    assert stats.mode == "compressed" and wrapped.stats is stats
    assert wrapped.allreduce(ME) == P * (P - 1) // 2
    wrapped.Barrier()
    dup = wrapped.Dup()
    assert type(dup) is type(wrapped) and dup._embzip["abs_error"] == 1e-3
    dup.Alltoallv(send, got, abs_error=1e-2)  # per-call override
    assert_close(got, ref, 1e-2, "override")
    dup.Ialltoallv(send, got).wait()
    assert_close(got, ref, 1e-3, "wrapper Ialltoallv")
    dup.Free()
    derived = {"Split": wrapped.Split(0, ME), "Split_type": wrapped.Split_type(MPI.COMM_TYPE_SHARED),
               "Create": wrapped.Create(wrapped.Get_group()), "Create_group": wrapped.Create_group(wrapped.Get_group())}
    for name, sub in derived.items():  # every derived communicator is a Comm with the same defaults
        assert type(sub) is type(wrapped) and sub._embzip == wrapped._embzip, name
        stats = sub.Alltoallv(send[:16 * sub.size], got[:16 * sub.size])
        assert stats.mode == "compressed", (name, stats)
        sub.Free()
    assert wrapped.Split(MPI.UNDEFINED, ME) == MPI.COMM_NULL  # no communicator: nothing to wrap


@case
def subclasses_and_freed_comm():
    """ndarray subclasses are buffers as for mpi4py (a matrix stays 2-D when reshaped: it once
    made segment slices of rows and a decode wrote past the buffer), and a communicator freed
    while a pipelined call is in flight still completes the call (MPI allows it)."""
    send = np.asmatrix(payload(8 * P, np.float32, 21).reshape(P, 8))
    ref = reference(send.view(np.ndarray), lambda: np.zeros((P, 8), np.float32))
    for kwargs in (dict(rel_error=1e-3), dict(abs_error=1e-3, strategy="fast", bypass=False), dict(abs_error=1e-3, bypass=True)):
        got = np.asmatrix(np.zeros((P, 8), np.float32))
        ec.Alltoallv(COMM, send, got, **kwargs)
        widest = COMM.allreduce(float(np.ptp(np.asarray(send))), op=MPI.MAX)  # a frame's range is at most its sender's
        bound = 1e-3 * widest * 1.0001 if "rel_error" in kwargs else 1e-3
        assert_close(np.asarray(got), ref, bound if kwargs.get("bypass") is not True else 0.0, f"matrix {kwargs}")
    masked = np.ma.masked_array(np.zeros(8 * P, np.float32), mask=np.zeros(8 * P, bool))
    ec.Alltoallv(COMM, np.asarray(send).reshape(-1), masked, abs_error=1e-3, strategy="fast", bypass=False)
    assert_close(masked.data, ref.reshape(-1), 1e-3, "masked receive buffer")

    big = payload(4096 * P, np.float32, 22)
    expected = reference(big, lambda: np.zeros_like(big))
    for bypass in (False, True):
        got = np.zeros_like(big)
        dup = COMM.Dup()
        request = ec.Ialltoallv(dup, big, got, abs_error=1e-3, bypass=bypass, chunk_bytes=4096)
        dup.Free()
        assert request.wait().mode == ("raw" if bypass else "compressed")
        assert_close(got, expected, 0.0 if bypass else 1e-3, f"freed while in flight, bypass={bypass}")
    for bypass in (False, True):  # freed while the duplication of a first call waits for a late rank
        got = np.zeros_like(big)
        dup = COMM.Dup()
        if ME == P - 1:
            time.sleep(0.5)
        request = ec.Ialltoallv(dup, big, got, abs_error=1e-3, bypass=bypass, chunk_bytes=4096)
        if ME == 0:
            time.sleep(0.1)  # (its call's thread now waits for the late rank's Idup)
        dup.Free()  # (MPICH: it hung when the delete callback waited; Open MPI: it crashed when it did not)
        assert request.wait().mode == ("raw" if bypass else "compressed")
        assert_close(got, expected, 0.0 if bypass else 1e-3, f"freed while a late rank duplicates, bypass={bypass}")


@case
def interrupt_is_held():
    """Ctrl-C (SIGINT) inside a call is raised when the call is done, as mpi4py's blocking calls
    raise it once MPI returns: rank 0 is interrupted while it waits for the others (they arrive
    1 s late); its call completes with what mpi4py delivers, then raises KeyboardInterrupt, and
    the communicator's next calls work on every rank. Compressed, raw, a repeat of the raw call
    (the express lane), Ialltoallv's wait(), and Request.Waitall of two (held until both are
    complete, not raised after the first)."""
    import os
    import signal
    import threading

    if P == 1:  # nobody to wait for: the interrupt could not be timed to land inside the call
        return
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN, "mpiexec started this rank with SIGINT ignored"
    comm, other = COMM.Dup(), COMM.Dup()
    send = payload(3000 * P, np.float32, 97)
    ref = reference(send, lambda: np.zeros_like(send))
    try:
        for how in ("compressed", "raw", "raw", "Ialltoallv", "Waitall"):
            recv, second = np.zeros_like(send), np.zeros_like(send)
            comm.Barrier()
            if ME == 0:
                threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            else:  # (1 s: the timer still fires inside the call on a loaded machine)
                time.sleep(1.0)
            raised = False
            try:
                if how == "Ialltoallv":
                    ec.Ialltoallv(comm, send, recv, abs_error=1e-3, strategy="fast").wait()
                elif how == "Waitall":
                    ec.Request.Waitall([ec.Ialltoallv(comm, send, recv, abs_error=1e-3, strategy="fast"),
                                        ec.Ialltoallv(other, send, second, abs_error=1e-3, strategy="fast")])
                else:
                    ec.Alltoallv(comm, send, recv, abs_error=1e-3, strategy="fast", bypass=how == "raw")
            except KeyboardInterrupt:
                raised = True
            assert raised == (ME == 0), (how, raised)
            assert_close(recv, ref, 1e-3, f"{how}: interrupted call")
            if how == "Waitall":
                assert_close(second, ref, 1e-3, "Waitall: the second request of the interrupted list")
            again = np.zeros_like(send)
            ec.Alltoallv(comm, send, again, abs_error=1e-3, strategy="fast", bypass=False)
            assert_close(again, ref, 1e-3, f"{how}: the call after")
    finally:
        comm.Free()
        other.Free()
