"""A call's outcome does not depend on the calls before it: the argument memo and the express
lane (which skip validation for what repeats) give what a first call on a fresh communicator
gives, whatever changed in between.

In one process (duplicates of MPI.COMM_SELF): hypothesis draws a call (buffer dtype, shape,
specification form, bounds) and a history of changes made between calls, the way a training
loop or a careless caller makes them: new arrays of the same layout, a new TableLayout, counts
changed in place or given as a numpy integer, a receive buffer made read-only and writable again, a send buffer resized
(its memory moves), a receive buffer reshaped in place, a layout's bounds changed in place,
a receive buffer that is a view of the send buffer, ``MPI.IN_PLACE``, a bool bound. After each
change the call runs on a communicator that saw the whole history and on a fresh one: the
same exception type, or the same received bytes (which, with ``bypass=True``, are the sent
segment's, exactly). The multi-rank behaviour of the same paths runs under mpiexec in
tests/mpi/worker_costs.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

DIM, TABLES = 2, 2
ACTIONS = ["same", "new arrays", "new layout", "counts in place", "numpy count", "list count", "recv read-only",
           "recv writable", "resize send",
           "reshape recv in place", "layout bounds in place", "recv aliases send", "in place", "not in place",
           "bool bound", "float bound"]
FORMS = ["bare", "counts", "counts displs", "counts displs type", "four items", "tuple"]


@pytest.fixture(scope="module")
def MPI():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'embzip[mpi]')")
    from embzip.comm import _mpi

    return _mpi.load()


class Call:
    """The arguments of one call, built from objects that the history changes."""

    def __init__(self, dtype, rows, form, bounds_kind):
        from embzip.comm import TableLayout

        self.dtype, self.form, self.bounds_kind = np.dtype(dtype), form, bounds_kind
        width = DIM * TABLES
        self.send = (np.arange(rows * width) % 7 - 3).astype(self.dtype).reshape(rows, width).copy()  # (owns it)
        self.recv = np.full((rows, width), 9, self.dtype)
        self.counts = [rows * width]  # one list object, in the send and the receive specification
        self.numpy_count = False  # a single numpy integer instead (mpi4py takes it for every rank)
        self.layout = TableLayout(DIM, bounds=[0.01, 0.05] if bounds_kind == "layout with bounds" else None)
        self.bound = 0.02
        self.in_place = False

    def bounds(self):
        if self.bounds_kind == "per destination":
            return [self.bound]
        return None if self.bounds_kind == "none" else self.layout

    def spec(self, buf, MPI):
        counts, displs = (np.int64(self.counts[0]) if self.numpy_count else self.counts), [0]
        datatype = {"f": MPI.FLOAT, "d": MPI.DOUBLE, "i": MPI.INT}[self.dtype.char]
        form = self.form
        if form == "bare":
            return buf
        if form == "counts":
            return [buf, counts]
        if form == "counts displs":
            return [buf, (counts, displs)]
        if form == "counts displs type":
            return [buf, (counts, displs), datatype]
        if form == "four items":
            return [buf, counts, displs, datatype]
        return (buf, counts, datatype)  # "tuple"

    def arguments(self, MPI):
        send = MPI.IN_PLACE if self.in_place else self.spec(self.send, MPI)
        return send, self.spec(self.recv, MPI), self.bounds()

    def refill(self, step):
        """New values in the send buffer and a marker in the receive buffer, where writable."""
        if self.send.flags.writeable:
            self.send.reshape(-1)[:] = (np.arange(self.send.size) * (step + 2) % 11 - 5).astype(self.dtype)
        if self.recv.flags.writeable and not np.shares_memory(self.recv, self.send):
            self.recv.reshape(-1)[:] = 100 + step

    def apply(self, action):
        """Make one change; False when it does not apply to this call."""
        from embzip.comm import TableLayout

        recv, send = self.recv, self.send
        if action == "new arrays":
            self.send, self.recv = send.copy(), recv.copy()
            self.recv.flags.writeable = recv.flags.writeable
        elif action == "new layout":
            self.layout = TableLayout(DIM, bounds=None if self.layout.bounds is None else self.layout.bounds.copy())
        elif action == "counts in place":  # (a count that is not whole rows of the layout: refused)
            self.counts[0] = self.counts[0] - DIM * TABLES if self.counts[0] > DIM * TABLES else self.counts[0] - 1
        elif action in ("numpy count", "list count"):
            self.numpy_count = action == "numpy count"
        elif action == "recv read-only":
            recv.flags.writeable = False
        elif action == "recv writable":
            if not recv.flags.owndata:
                return False
            recv.flags.writeable = True
        elif action == "resize send":  # the same object, its memory elsewhere
            if not send.flags.owndata or np.shares_memory(send, recv):
                return False  # (a view of it would point into freed memory: this test's own bug)
            send.resize((send.shape[0] + 3, send.shape[1]), refcheck=False)
        elif action == "reshape recv in place":
            recv.shape = (recv.size,) if recv.ndim == 2 else (-1, DIM * TABLES)
        elif action == "layout bounds in place":
            if self.layout.bounds is None:
                return False
            self.layout.bounds[0] = 0.2
        elif action == "recv aliases send":
            if self.in_place:
                return False
            self.recv = self.send.reshape(-1)[:self.recv.size].reshape(self.recv.shape)
        elif action == "in place":
            self.in_place = True
        elif action == "not in place":
            self.in_place = False
        elif action == "bool bound":
            self.bound = True
        elif action == "float bound":
            self.bound = 0.02
        return True


def _outcome(comm, call, MPI):
    """(exception type name or "ok", the receive buffer's bytes) of one call on ``comm``."""
    import embzip.comm as ec

    send, recv, bounds = call.arguments(MPI)
    try:
        stats = ec.Alltoallv(comm, send, recv, rel_error=0.01, bounds=bounds, bypass=True)
    except Exception as exc:  # (compared by type: both calls must fail alike)
        return type(exc).__name__, call.recv.tobytes()
    assert stats.mode in ("raw", "passthrough")
    return "ok", call.recv.tobytes()


def _restore(arr, contents):
    """Put ``contents`` back into ``arr`` (read-only or not), as the first call found it."""
    writable = arr.flags.writeable
    if not writable:
        if not arr.flags.owndata and arr.base is not None and not arr.base.flags.writeable:
            return  # (a view of a read-only array: nothing wrote into it)
        arr.flags.writeable = True
    arr.reshape(-1).view(np.uint8)[:] = np.frombuffer(contents, np.uint8)
    arr.flags.writeable = writable


@settings(max_examples=max(400, settings().max_examples))  # (~7 s: a change and a form must meet)
@given(dtype=st.sampled_from(["float32", "float64", "int32"]), rows=st.integers(1, 4),
       form=st.sampled_from(FORMS),
       bounds_kind=st.sampled_from(["none", "layout", "layout with bounds", "per destination"]),
       history=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=8))
def test_a_call_ends_as_on_a_fresh_communicator(MPI, dtype, rows, form, bounds_kind, history):
    call = Call(dtype, rows, form, bounds_kind)
    seen = MPI.COMM_SELF.Dup()
    try:
        for _ in range(2):  # a lane opens after the first call: later ones may take it
            _outcome(seen, call, MPI)
        for step, action in enumerate(["same"] + history):
            if not call.apply(action):
                continue
            call.refill(step)  # (new values each step: a stale buffer shows)
            before = call.recv.tobytes()
            fresh = MPI.COMM_SELF.Dup()
            try:
                expected = _outcome(fresh, call, MPI)
            finally:
                fresh.Free()
            _restore(call.recv, before)  # (when it is a view of the send buffer, that is restored too)
            got = _outcome(seen, call, MPI)
            note(f"step {step}: {action}: fresh {expected[0]}, after the history {got[0]}")
            assert got[0] == expected[0], f"step {step} ({action}): {got[0]} after the history, {expected[0]} fresh"
            assert got[1] == expected[1], f"step {step} ({action}): other bytes received after the history"
            if got[0] == "ok" and not call.in_place and call.recv.flags.writeable:
                sent = np.asarray(call.send).reshape(-1)[:call.counts[0]]
                assert call.recv.reshape(-1)[:call.counts[0]].tobytes() == sent.tobytes()
    finally:
        seen.Free()


def test_the_histories_reach_the_express_lane(MPI, monkeypatch):
    """The property above is about the lane: the common changes (none, new arrays, a new
    layout) must be taken by it, or the comparison proves nothing."""
    lanes = _counting_lane_calls(monkeypatch)
    for form in FORMS:
        call = Call("float32", 3, form, "layout with bounds")
        seen = MPI.COMM_SELF.Dup()
        try:
            before = lanes[0]
            for action in ["same", "same", "new arrays", "new layout", "new arrays"]:
                call.apply(action)
                assert _outcome(seen, call, MPI)[0] == "ok"
            assert lanes[0] - before == 4, (form, lanes[0] - before)
        finally:
            seen.Free()


def _counting_lane_calls(monkeypatch):
    """[how many embzip.comm.Alltoallv calls took the express lane] from now on."""
    from embzip.comm import _express

    lanes, real = [0], _express.try_call

    def counting(*args):
        got = real(*args)
        lanes[0] += got is not None
        return got

    monkeypatch.setattr(_express, "try_call", counting)
    return lanes
