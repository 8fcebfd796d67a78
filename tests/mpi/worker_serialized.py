"""``mpiexec -n K python tests/mpi/worker_serialized.py``: embzip.comm when MPI gives less than
MPI_THREAD_MULTIPLE (mpi4py.rc.thread_level = "serialized"): Ialltoallv then runs to completion
inside the call, still pipelined (a bypassed one is MPI's Ialltoallv), and an error agreed in its handshake is raised by wait() on
every rank, as with THREAD_MULTIPLE. Prints ``SERIALIZED-OK <rank>``."""

from __future__ import annotations

import sys
from pathlib import Path

import mpi4py
import numpy as np

mpi4py.rc.thread_level = "serialized"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a source checkout

from mpi4py import MPI  # noqa: E402

import embzip.comm as ec  # noqa: E402

COMM = MPI.COMM_WORLD
P, ME = COMM.Get_size(), COMM.Get_rank()
assert MPI.Query_thread() < MPI.THREAD_MULTIPLE, MPI.Query_thread()

send = np.random.default_rng(ME).normal(size=(P * 30, 10)).astype(np.float32)
ref = np.zeros_like(send)
COMM.Alltoallv(send, ref)
for bypass in (False, True):
    got = np.zeros_like(send)
    req = ec.Ialltoallv(COMM, send, got, abs_error=1e-3, strategy="fast", bypass=bypass, chunk_bytes=256)
    assert bypass or req.test()[0], "below THREAD_MULTIPLE a compressed call returns complete"
    stats = req.wait()
    assert stats.bypassed == bypass and float(np.abs(got - ref).max()) <= (0.0 if bypass else 1e-3)
req = ec.Ialltoallv(COMM, send, np.zeros_like(send), abs_error=-1.0 if ME == P - 1 else 1e-3)
try:
    req.wait()
except ec.CommValueError as exc:
    assert f"rank {P - 1}" in str(exc) and "abs_error" in str(exc), exc
else:
    raise AssertionError("the agreed error was not raised by wait()")
assert ec.last_stats(COMM) is not None
print(f"SERIALIZED-OK {ME}", flush=True)
