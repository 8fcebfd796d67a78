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
