"""A call ends as it would on a fresh communicator, across ranks: the multi-rank form of
tests/test_comm_lane_history.py.

Each rank draws its own change before each call (seeded by the step and the rank), most
often what a training loop does (nothing, new arrays, a new TableLayout), sometimes what a
careless caller does on one rank only (a count changed in place, a read-only receive buffer,
a resized send buffer, a numpy integer count, ``MPI.IN_PLACE``, a bool bound, aliased
buffers), undone after the call. The call then runs on a fresh duplicate of the
communicator and on the one that saw every call before (its argument memo and express lane):
on every rank, the same exception type, or the same received bytes. A rank whose history
path raises where the fresh path sends (or waits where it raises) would fail the comparison
or hang the launch (the launcher's timeout).
"""

from __future__ import annotations

import numpy as np

from worker_common import COMM, ME, P, case

WIDTH = 4  # values per row: 2 tables x dim 2
CHANGES = ["same"] * 6 + ["new arrays"] * 4 + ["new layout"] * 2 + [
    "count in place", "recv read-only", "resize send", "numpy count", "in place", "bool bound", "recv aliases send"]


class _Call:
    def __init__(self, dtype, form):
        from embzip.comm import TableLayout

        self.dtype, self.form, self.rows = np.dtype(dtype), form, 2
        n = self.rows * WIDTH * P
        self.send, self.recv = np.zeros((self.rows * P, WIDTH), self.dtype), np.zeros(n, self.dtype)
        self.counts = [self.rows * WIDTH] * P
        self.layout = TableLayout(2, bounds=[0.01, 0.05])
        self.numpy_count, self.in_place, self.bound = False, False, 0.02

    def arguments(self, MPI):
        counts = np.int64(self.counts[0]) if self.numpy_count else self.counts
        if self.form == "bare":
            send, recv = self.send, self.recv
        else:
            send, recv = [self.send, counts], [self.recv, counts]
        bounds = [self.bound] * P if self.form == "per destination" else self.layout
        return (MPI.IN_PLACE if self.in_place else send), recv, bounds

    def change(self, what):
        """Make the change; returns what undoes it (None: it stays)."""
        from embzip.comm import TableLayout

        send, recv = self.send, self.recv
        if what == "new arrays":
            self.send, self.recv = send.copy(), recv.copy()
        elif what == "new layout":
            self.layout = TableLayout(2, bounds=self.layout.bounds.copy())
        elif what == "count in place":  # this rank's count for one destination (others expect the old)
            kept = list(self.counts)
            self.counts[(ME + 1) % P] -= WIDTH
            return lambda: self.counts.__setitem__(slice(None), kept)
        elif what == "recv read-only":
            recv.flags.writeable = False
            return lambda: setattr(recv.flags, "writeable", True)
        elif what == "resize send":  # its memory moves; bare: a count every receiver disagrees with
            shape = send.shape
            send.resize((shape[0] + 1, WIDTH), refcheck=False)
            return lambda: send.resize(shape, refcheck=False)
        elif what == "numpy count":
            self.numpy_count = True
            return lambda: setattr(self, "numpy_count", False)
        elif what == "in place":
            self.in_place = True
            return lambda: setattr(self, "in_place", False)
        elif what == "bool bound":
            self.bound = True
            return lambda: setattr(self, "bound", 0.02)
        elif what == "recv aliases send":
            self.recv = send.reshape(-1)
            return lambda: setattr(self, "recv", recv)
        return None

    def refill(self, step):
        if self.send.flags.writeable:
            self.send.reshape(-1)[:] = (np.arange(self.send.size) * (step + 2) + 13 * ME) % 17 - 8
        if self.recv.flags.writeable and not np.shares_memory(self.recv, self.send):
            self.recv[:] = 100 + step


def _outcome(comm, call, MPI):
    import embzip.comm as ec

    send, recv, bounds = call.arguments(MPI)
    try:
        ec.Alltoallv(comm, send, recv, rel_error=0.01, bounds=bounds, bypass=True)
    except Exception as exc:
        return type(exc).__name__, call.recv.tobytes()
    return "ok", call.recv.tobytes()


def _put_back(arr, contents):
    writable = arr.flags.writeable
    arr.flags.writeable = True
    arr.view(np.uint8).reshape(-1)[:] = np.frombuffer(contents, np.uint8)
    arr.flags.writeable = writable


@case
def lane_history_matches_fresh():
    """See the module docstring: 3 forms x 2 dtypes x 24 steps, a fresh communicator each step."""
    from mpi4py import MPI

    seen_lane = 0
    for form in ("bare", "counts", "per destination"):
        for dtype in (np.float32, np.int32):
            call, seen = _Call(dtype, form), COMM.Dup()
            try:
                for _ in range(2):
                    _outcome(seen, call, MPI)
                for step in range(24):
                    rng = np.random.default_rng([step, ME, len(form), np.dtype(dtype).itemsize])
                    # one rank at a time departs from the loop's changes: the others keep theirs
                    what = str(rng.choice(CHANGES)) if step % P == ME else str(rng.choice(CHANGES[:12]))
                    undo = call.change(what)
                    call.refill(step)
                    before = call.recv.tobytes()
                    fresh = COMM.Dup()
                    try:
                        expected = _outcome(fresh, call, MPI)
                    finally:
                        fresh.Free()
                    _put_back(call.recv, before)
                    got = _outcome(seen, call, MPI)
                    seen_lane += got[0] == "ok"
                    assert got[0] == expected[0], \
                        f"{form}, {np.dtype(dtype)}, step {step} ({what} on rank {ME}): {got[0]} after the " \
                        f"history, {expected[0]} on a fresh communicator"
                    assert got[1] == expected[1], f"{form}, step {step} ({what}): other bytes received"
                    if undo is not None:
                        undo()
            finally:
                seen.Free()
    assert seen_lane > 0
