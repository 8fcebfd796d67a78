"""MPI error case: send and receive counts that disagree where one side of the pair is 0.

Kept apart from worker_errors.py (which holds the other error cases) for size only; the
runner imports both, and ``expect`` is shared.
"""

from __future__ import annotations

import numpy as np

import embzip.comm as ec

from worker_common import COMM, LAST, ME, P, case  # (same directory)
from worker_errors import expect


@case
def error_mismatch_with_an_empty_segment():
    """MPI sends no message for a count of 0, so an uncompressed call that posted its payload
    with the handshake (fused) never learned of this mismatch from MPI: a receiver expecting
    data from a sender of 0 waited forever; a sender of data to a receiver expecting 0 left
    its message queued, and every later call on the communicator received the call before's
    data (found by a fuzzing review). Every rank must raise, and later calls get their own."""
    n = 4
    good = [n] * P
    calls = (("blocking", ec.Alltoallv), ("pipelined", lambda *a, **k: ec.Ialltoallv(*a, **k).wait()))
    for dtype, kwargs in ((np.int32, {}), (np.float32, dict(abs_error=1e-3, bypass=True))):
        for direction in ("sends 0", "expects 0"):
            for warm in (False, True):  # True: the express lane is open for the good call
                for label, call in calls:
                    where = f"{np.dtype(dtype).name}, rank 0 {direction}, warm={warm}, {label}"
                    send = (np.arange(n * P) + 100 * ME).astype(dtype)
                    recv = np.zeros(n * P, dtype)
                    if warm:
                        for _ in range(3):
                            ec.Alltoallv(COMM, [send, good], [recv, good], **kwargs)
                    sc, rc = list(good), list(good)
                    if direction == "sends 0" and ME == 0:
                        sc[LAST] = 0  # rank 0 sends LAST nothing, LAST expects n
                    if direction == "expects 0" and ME == LAST:
                        rc[0] = 0  # LAST expects nothing from rank 0, which sends n
                    sent, expected = (0, n) if direction == "sends 0" else (n, 0)
                    expect(lambda: call(COMM, [send, sc], [recv, rc], **kwargs), ec.CommValueError,
                           f"rank 0 sends {sent} elements", f"rank {LAST} expects {expected} elements")
                    for k in range(3):  # nothing left queued: each call receives its own data
                        send = (np.arange(n * P) + 1000 * k + 100 * ME).astype(dtype)
                        got, ref = np.full(n * P, -1, dtype), np.full(n * P, -1, dtype)
                        ec.Alltoallv(COMM, [send, good], [got, good], **kwargs)
                        COMM.Alltoallv([send, good], [ref, good])
                        assert np.array_equal(got, ref), (where, k, got, ref)


@case
def error_own_segment_mismatch():
    """A rank that sends itself other than it expects from itself (0 on one side: MPI posts a
    receive with no matching send): the same verdict on every rank, no hang, and 0 to itself
    on both sides is no error (such calls still fuse: worker_costs.express_lane)."""
    n = 4
    good = [n] * P
    for own in ((0, n), (n, 0), (n, n - 1)):
        send = (np.arange(n * P) + 100 * ME).astype(np.int32)
        recv = np.zeros(n * P, np.int32)
        sc, rc = list(good), list(good)
        if ME == LAST:
            sc[LAST], rc[LAST] = own
        expect(lambda: ec.Alltoallv(COMM, [send, sc], [recv, rc]), ec.CommValueError,
               f"rank {LAST} sends {own[0]} elements", f"rank {LAST} expects {own[1]} elements")
    sc = [0 if dst == ME else n for dst in range(P)]
    send, got, ref = np.arange(n * P, dtype=np.int32) + ME, np.zeros(n * P, np.int32), np.zeros(n * P, np.int32)
    ec.Alltoallv(COMM, [send, sc], [got, sc])
    COMM.Alltoallv([send, sc], [ref, sc])
    assert np.array_equal(got, ref)


@case
def error_mismatch_after_a_sequenced_lane():
    """Repeats of a call with an empty segment (rank 0 sends LAST nothing) take sequenced
    express lanes (the gather, then the payload only if the table is the agreed one); then one
    rank changes its counts so that a 0 meets a count: rank 0 starts sending LAST data LAST
    does not expect, or LAST starts expecting data rank 0 does not send. After one warm call
    only ranks 0 and LAST have lanes and the others are on the full path; after three, every
    rank has one. A fresh communicator's first call: the others fuse (nothing told them to
    wait yet) while ranks 0 and LAST wait; the mismatch then comes from a fused rank. In
    every case each rank must learn it from the table, the waiting ones make the filler that
    completes any fused rank's exchange: every rank raises, none hangs, and later calls get
    their own data. Eager and rendezvous sizes, the compiled lane and mpi4py's."""
    import os

    from embzip.comm import _mpi
    from worker_common import NATIVE_LANES, PAIRWISE

    if P == 1:
        return  # no pair of ranks
    try:
        for native in NATIVE_LANES:
            os.environ["EMBZIP_NATIVE_MPI"] = native
            for n in (4, 50_000):
                fresh = COMM.Dup()
                good = [n] * P
                # the warm call: rank 0 sends LAST nothing, LAST expects nothing from rank 0
                warm_s = [0 if ME == 0 and dst == LAST else n for dst in range(P)]
                warm_r = [0 if ME == LAST and src == 0 else n for src in range(P)]
                for direction, warm in (("sends", 0), ("expects", 0), ("sends", 1), ("expects", 1), ("sends", 3),
                                        ("expects", 3)):
                    if not warm:  # a fresh communicator: its first call
                        fresh.Free()
                        fresh = COMM.Dup()
                    send = (np.arange(n * P) % 1000 + 1000 * ME).astype(np.float32)
                    recv = np.zeros(n * P, np.float32)
                    for _ in range(warm):
                        ec.Alltoallv(fresh, [send, warm_s], [recv, warm_r], abs_error=1e-3, bypass=True)
                    state = _mpi.peek_state(fresh)  # (None before a communicator's first call)
                    lane = None if state is None else state.memo.lane
                    sequenced = warm == 3 or warm == 1 and ME in (0, LAST)  # (see the docstring)
                    assert PAIRWISE or (lane is not None and lane.sequenced) == sequenced, ("lane", warm, lane)
                    sc, rc = list(warm_s), list(warm_r)
                    if direction == "sends" and ME == 0:
                        sc[LAST] = n  # LAST still expects 0
                    if direction == "expects" and ME == LAST:
                        rc[0] = n  # rank 0 still sends 0
                    sent, expected = (n, 0) if direction == "sends" else (0, n)
                    expect(lambda: ec.Alltoallv(fresh, [send, sc], [recv, rc], abs_error=1e-3, bypass=True),
                           ec.CommValueError, f"rank 0 sends {sent} elements", f"rank {LAST} expects {expected} elements")
                    for k in range(3):  # nothing left queued: each call receives its own data
                        send = (np.arange(n * P) % 1000 + 1000 * k + 100 * ME).astype(np.float32)
                        got, ref = np.full(n * P, -1, np.float32), np.full(n * P, -1, np.float32)
                        ec.Alltoallv(fresh, [send, good], [got, good], abs_error=1e-3, bypass=True)
                        COMM.Alltoallv([send, good], [ref, good])
                        assert np.array_equal(got, ref), (native, n, direction, k)
                fresh.Free()
    finally:
        os.environ.pop("EMBZIP_NATIVE_MPI", None)
