"""What the handshake and the argument memo may reuse from an earlier call, in one process
(MPI.COMM_SELF). The exchanges run under mpiexec in tests/mpi/worker_forms.py (``unremembered_calls``)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def MPI():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'embzip[mpi]')")
    from embzip.comm import _mpi

    return _mpi.load()


def _job(n, MPI):
    from embzip.comm import _protocol

    return _protocol.prepare(np.zeros(n, np.float32), np.zeros(n, np.float32), 1e-3, None, "fast", None, True, 1, 0,
                             MPI)


def test_the_handshake_reuses_a_row_only_for_the_memos_own_job(MPI, monkeypatch):
    """A call the memo does not keep (GPU, DLPack or bytes-like buffers, in place) frees its
    Spec afterwards, and a later call's Spec can take its id. The handshake's row cache was
    keyed on that id: the later call was judged on the earlier call's counts and type (seen
    in a 2-rank run: "rank 0 sends float64 data, rank 1 float32 data")."""
    from embzip.comm import _handshake, _reuse
    from embzip.comm._stats import MODE_CODES

    raw = MODE_CODES["raw"]
    built = []
    real = _handshake.build_row
    monkeypatch.setattr(_handshake, "build_row", lambda *args: built.append(args[0]) or real(*args))
    job = _job(4, MPI)
    memo = _reuse.Memo()
    stale = real(_job(8, MPI), raw, False, None, 1)
    memo.row_key, memo.row = (id(job.send), raw, False), stale  # what a freed Spec at the same address left
    _handshake._gathered(MPI.COMM_SELF, job, raw, None, None, MPI, None, memo)
    assert built == [job], "a row cached for another call's Spec was reused"
    memo.store("key", [], job)  # the memo's own Job: a repeat reuses its row
    remembered = memo.lookup("key")
    built.clear()
    _handshake._gathered(MPI.COMM_SELF, remembered, raw, None, None, MPI, None, memo)
    _handshake._gathered(MPI.COMM_SELF, memo.lookup("key"), raw, None, None, MPI, None, memo)
    assert len(built) == 1, "a repeat of the memo's Job rebuilt its row"
