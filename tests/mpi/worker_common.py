"""What the MPI worker cases share: the communicator, the case registry, payloads, checks.

The cases live in worker_forms.py, worker_costs.py, worker_calls.py and worker_errors.py;
worker.py runs them (see there).
"""

from __future__ import annotations

import os

import numpy as np
from mpi4py import MPI

COMM = MPI.COMM_WORLD
P, ME = COMM.Get_size(), COMM.Get_rank()
LAST = P - 1
CASES = {}
# Float types the compressing cases cover. Each one costs every rank seconds of numba
# compilation, so the launcher may narrow it for the launches with the most ranks.
DTYPES = [np.dtype(name).type for name in os.environ.get("EMBZIP_TEST_DTYPES", "float32,float64").split(",")]
PAIRWISE = os.environ.get("EMBZIP_TEST_PAIRWISE") == "1"
if PAIRWISE:  # the handshake used above 64 ranks, at this rank count
    from embzip.comm import _handshake

    _handshake.GATHER_MAX = 0
# the two MPIs whose C entry points the native express lane is known to resolve (CI: MPICH)
KNOWN_MPI = MPI.Get_library_version().startswith(("MPICH", "Open MPI"))
# EMBZIP_NATIVE_MPI: the compiled lane with the large-count payload call where MPI has it, with
# the C-int one (what Open MPI 5.0 offers), and mpi4py's calls
NATIVE_LANES = ("1", "int", "0")


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def uneven_counts(seed: int, scale: int = 37):
    """counts[src, dst]: uneven, with zeros (including some self counts), same on every rank."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, size=(P, P)) * scale
    counts[rng.random((P, P)) < 0.25] = 0
    return counts


def payload(n: int, dtype, seed: int):
    rng = np.random.default_rng(1000 * seed + ME)
    return (rng.normal(size=n) * 3).astype(dtype)


def reference(smsg, rmsg_builder):
    """What plain mpi4py Alltoallv puts in a receive buffer built by ``rmsg_builder``."""
    rmsg = rmsg_builder()
    COMM.Alltoallv(smsg, rmsg)
    return rmsg[0] if isinstance(rmsg, list) else rmsg


def assert_close(got, ref, bound, what):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    if got.size:
        err = float(np.abs(got - ref).max())
        assert err <= bound, f"{what}: max error {err} > bound {bound}"
