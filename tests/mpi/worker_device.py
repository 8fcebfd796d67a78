"""MPI worker for GPU buffers: ``NUMBA_ENABLE_CUDASIM=1 mpiexec -n 2 python tests/mpi/worker_device.py``.

Launched by tests/test_comm_device.py with the numba-cuda simulator on (numba device arrays
stand in for GPU buffers; MPI is not CUDA-aware here, so frames travel through host buffers).
Each exchange is done with host buffers on both ranks first, then with device buffers on
both ranks, on rank 0 only and on rank 1 only: every receive buffer must hold the same bits.
Sizes are tiny (the simulator runs one Python thread per GPU thread). Prints ``DEVICE-OK``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a source checkout

from mpi4py import MPI  # noqa: E402
from numba import cuda  # noqa: E402

import embzip.comm as ec  # noqa: E402
from embzip import _api, _backend  # noqa: E402

ON_DEVICE = {"compress": 0, "decompress": 0}  # codec calls that ran on the (simulated) device


def _counting(name):
    real = getattr(_api, name)

    def wrapper(data, **kwargs):
        if _backend.is_device(data) or _backend.is_device(kwargs.get("out")) or kwargs.get("device") == "cuda":
            ON_DEVICE[name] += 1
        return real(data, **kwargs)
    return wrapper


_api.compress, _api.decompress = _counting("compress"), _counting("decompress")

COMM = MPI.COMM_WORLD
P, ME = COMM.Get_size(), COMM.Get_rank()
N = 48  # elements per destination: 4 rows of 3 tables x dim 4


def payload():
    x = (np.random.default_rng(ME).standard_normal(P * N) * 3).astype(np.float32)
    x[1] = np.nan
    x[N + 2] = -np.inf
    return x


def run(call, device_ranks, **kwargs):
    """Receive buffer (on the host) after ``call`` with device buffers on ``device_ranks``."""
    send, recv = payload(), np.full(P * N, 9.0, np.float32)
    if ME in device_ranks:
        send, recv = cuda.to_device(send), cuda.to_device(recv)
    before = dict(ON_DEVICE)
    stats = call(send, recv, **kwargs)
    assert stats.mode == "compressed", stats
    if ME in device_ranks:  # the GPU compressed what this rank sent and decoded what it received
        assert ON_DEVICE["compress"] > before["compress"] and ON_DEVICE["decompress"] > before["decompress"]
    else:
        assert ON_DEVICE == before
    return recv.copy_to_host() if ME in device_ranks else recv


def blocking(send, recv, **kwargs):
    return ec.Alltoallv(COMM, send, recv, **kwargs)


def pipelined(send, recv, **kwargs):
    return ec.Ialltoallv(COMM, send, recv, chunk_bytes=64, **kwargs).wait()


def main():
    tables = ec.TableLayout(dim=4, bounds=[0.01, 0.1, 0.01])
    for name, call, kwargs in (("plain", blocking, dict(abs_error=1e-2)),
                               ("tables", blocking, dict(rel_error=0.01, bounds=tables)),
                               ("pipelined", pipelined, dict(abs_error=1e-2, bounds=tables))):
        kwargs.update(strategy="fast", bypass=False)
        expected = run(call, (), **kwargs)
        own = payload()[ME * N:(ME + 1) * N]
        assert expected[ME * N:(ME + 1) * N].tobytes() == own.tobytes(), name  # own segment: exact
        assert not np.array_equal(expected, np.full(P * N, 9.0, np.float32)), name
        for device_ranks in ((0, 1), (0,), (1,)):
            got = run(call, device_ranks, **kwargs)
            assert got.tobytes() == expected.tobytes(), (name, device_ranks, got, expected)
        print(f"rank {ME}: {name} ok", flush=True)
    print(f"DEVICE-OK rank {ME}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        COMM.Abort(1)
