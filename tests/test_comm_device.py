"""embzip.comm with GPU buffers: under the numba-cuda simulator (no GPU needed), and on a GPU.

Like tests/test_cuda_sim.py, the simulator must be on before numba is imported, so the test
functions of the main process re-run this file in a subprocess with ``NUMBA_ENABLE_CUDASIM=1``
(segment-level tests), and launch ``mpiexec -n 2`` with the simulator on for the MPI case
(tests/mpi/worker_device.py). Simulated device arrays are numba's; cupy paths need a real GPU:
the cupy segment test and the 2-rank MPI exchange of cupy buffers below (and
tests/test_comm_gpu_units.py::test_real_cupy_staging_roundtrip) skip without one, and ran on an
H100 through bench/device_check.sh.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mpirun
import numpy as np
import pytest

IN_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = int(os.environ.get("EMBZIP_MPI_TEST_TIMEOUT", "150"))


def check_receive_view_of_fortran_buffer(cuda):
    """What is written through the flat view of an F-ordered numba receive buffer lands in the
    caller's buffer (on a GPU a numba transpose is a copy: a view made with one would not)."""
    from embzip.comm import _device

    for shape in ((4, 6), (2, 3, 4)):
        buf = cuda.to_device(np.zeros(shape, np.float32, order="F"))
        view, _ = _device.device_flat(buf, True, "recvbuf")
        _device.to_device(np.arange(24, dtype=np.float32), view)
        assert buf.copy_to_host().reshape(-1, order="F").tolist() == list(range(24))


if not IN_SIMULATOR:
    def _need_numba_cuda():
        pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install 'embzip[cuda]')")

    def test_segments_under_the_simulator():
        """Run this file's simulator tests in a subprocess with the simulator switched on."""
        _need_numba_cuda()
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONWARNINGS="ignore::RuntimeWarning")
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                                 str(Path(__file__).resolve())], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"simulator tests failed:\n{result.stdout[-8000:]}\n{result.stderr[-4000:]}")

    def _device_worker(env_extra, cuda_aware="0"):
        """Run tests/mpi/worker_device.py on 2 ranks with ``env_extra``; fail on error or hang.
        ``cuda_aware``: EMBZIP_CUDA_AWARE_MPI for the ranks ("0": staging, which any MPI can
        do; None: unset, MPI is asked)."""
        mpiexec, why = mpirun.find()
        if mpiexec is None:
            pytest.skip(why)
        env = mpirun.environment(NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1", EMBZIP_COMM_WARMUP="0",
                                 PYTHONWARNINGS="ignore::RuntimeWarning")
        env.pop("EMBZIP_CUDA_AWARE_MPI", None)
        env["EMBZIP_COMM_CODEC"] = "gpu"  # (the worker's own placement case measures)
        if cuda_aware is not None:
            env["EMBZIP_CUDA_AWARE_MPI"] = cuda_aware
        env.update(env_extra)
        code, out = mpirun.run(mpirun.command(2, sys.executable, str(ROOT / "tests" / "mpi" / "worker_device.py")),
                               env, TIMEOUT_S, cwd=ROOT)
        assert code == 0, out[-8000:]
        assert out.count("DEVICE-OK") == 2, out[-8000:]

    def _need_cupy_gpu():
        cupy = pytest.importorskip("cupy", reason="cupy is not installed (cupy paths need a real GPU)")
        try:
            if not cupy.is_available():
                pytest.skip("cupy is installed but no CUDA device is available")
        except Exception as exc:
            pytest.skip(f"no usable CUDA device: {exc}")
        return cupy

    def test_mpi_two_ranks_device_buffers_under_the_simulator():
        """2 ranks, simulated GPUs: device/device, device/host and host/device exchanges match
        the host-only exchange bit for bit (blocking, per-table groups, pipelined, compact, raw)."""
        _need_numba_cuda()
        _device_worker({"NUMBA_ENABLE_CUDASIM": "1"})

    def test_mpi_two_ranks_device_buffers_cuda_aware_under_the_simulator():
        """The same exchanges with MPI handed device buffers (the CUDA-aware path: blobs
        assembled on and received into the device, the GPU synchronized first, nothing
        staged). The simulator's device memory is host memory, so the PyPI MPICH moves it as a
        CUDA-aware MPI moves device memory; the bits must match the host-only exchange."""
        _need_numba_cuda()
        _device_worker({"NUMBA_ENABLE_CUDASIM": "1"}, cuda_aware="1")

    def test_mpi_two_ranks_cupy_buffers_on_a_real_gpu():
        """The same exchanges with cupy arrays (~1 MB per destination) on a real GPU, frames
        staged through host memory: identical bits to the host-only exchange."""
        _need_numba_cuda()
        _need_cupy_gpu()
        env = {"EMBZIP_WORKER_ARRAYS": "cupy"}
        if os.environ.get("NUMBA_ENABLE_CUDASIM") is not None:
            env["NUMBA_ENABLE_CUDASIM"] = "0"
        _device_worker(env)

    def test_mpi_two_ranks_cupy_buffers_cuda_aware_on_a_real_gpu():
        """The cupy exchanges with a CUDA-aware MPI, detected (EMBZIP_CUDA_AWARE_MPI unset): MPI
        moves the device blobs and raw device buffers itself. Needs a GPU and such an MPI, named
        by EMBZIP_TEST_CUDA_AWARE_MPI=1 (bench/cuda_mpi.sh builds one; bench/device_check.sh's
        cudaaware step runs this with it); the worker fails if the MPI does not say it is."""
        _need_numba_cuda()
        _need_cupy_gpu()
        if os.environ.get("EMBZIP_TEST_CUDA_AWARE_MPI") != "1":
            pytest.skip("no CUDA-aware MPI named (EMBZIP_TEST_CUDA_AWARE_MPI=1; bench/cuda_mpi.sh builds one)")
        env = {"EMBZIP_WORKER_ARRAYS": "cupy", "EMBZIP_WORKER_EXPECT_CUDA_AWARE": "1"}
        if os.environ.get("NUMBA_ENABLE_CUDASIM") is not None:
            env["NUMBA_ENABLE_CUDASIM"] = "0"
        _device_worker(env, cuda_aware=None)

    def test_fortran_receive_view_on_a_real_gpu():
        """See check_receive_view_of_fortran_buffer: a numba device array on a real GPU."""
        _need_numba_cuda()
        from numba import config, cuda
        if config.ENABLE_CUDASIM or not cuda.is_available():
            pytest.skip("no CUDA GPU on this machine (the simulator version runs in test_device_flat_views)")
        check_receive_view_of_fortran_buffer(cuda)

    def test_cupy_segments_on_a_real_gpu():
        """cupy in, cupy blobs out: the same bytes as the CPU's (needs cupy and a GPU)."""
        cupy = _need_cupy_gpu()
        from embzip.comm import _device, _layout, _segment

        rng = np.random.default_rng(1)
        x = rng.standard_normal(4 * 3 * 8).astype(np.float32)
        plan = _layout.resolve(None, 0.01, _layout.TableLayout(dim=8, bounds=[0.01, 0.05, 0.01]), 2,
                               np.array([x.size, x.size]))
        dev = cupy.asarray(x)
        flat, _ = _device.device_flat(dev, False, "sendbuf")
        host_blob = _segment.encode(x, 0, plan, 1, 0, "fast")
        assert _segment.encode(flat, 0, plan, 1, 0, "fast").tobytes() == host_blob.tobytes()
        dev_blob = _segment.encode(flat, 0, plan, 1, 0, "fast", on_device=True)
        assert cupy.asnumpy(dev_blob).tobytes() == host_blob.tobytes()
        out = cupy.zeros_like(dev)
        _segment.decode(dev_blob, out)
        expected = np.empty_like(x)
        _segment.decode(host_blob, expected)
        assert cupy.asnumpy(out).view(np.uint32).tolist() == expected.view(np.uint32).tolist()

else:
    import warnings

    from numba import cuda

    from embzip.comm import _device, _layout, _segment
    from embzip.errors import EmbzipError

    warnings.simplefilter("ignore", RuntimeWarning)

    def _plan(mode="abs", value=1e-3, bounds=None, counts=(96, 96)):
        return _layout.resolve(value if mode == "abs" else None, value if mode == "rel" else None, bounds, 2,
                               np.array(counts))

    def _bits(a):
        return np.ascontiguousarray(a).view(np.uint8).tobytes()

    def _data(n, dtype=np.float32, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(n).astype(dtype)
        x[3] = np.nan
        x[5] = -0.0
        x[7] = np.inf
        return x

    CASES = [  # (plan, row hint, dtype)
        (_plan(), 0, np.float32),
        (_plan("rel", 0.01), 8, np.float64),
        (_plan("rel", 0.02, bounds=_layout.TableLayout(dim=4)), 0, np.float32),
        (_plan("abs", 1e-2, bounds=_layout.TableLayout(dim=4, bounds=[0.01, 0.1, 0.01])), 0, np.float32),
        (_plan("rel", 0.01, bounds=_layout.TableLayout(dim=4, bounds=[0.01, 0.05, 0.2])), 0, np.float64),
    ]

    def test_device_flat_views():
        x = np.arange(24, dtype=np.float32).reshape(4, 6)
        flat, dtype = _device.device_flat(cuda.to_device(x), True, "recvbuf")
        assert dtype == np.float32 and flat.shape == (24,) and _device.is_device(flat)
        assert _device.to_host(flat).tolist() == x.reshape(-1).tolist()
        fflat, _ = _device.device_flat(cuda.to_device(np.asfortranarray(x)), False, "sendbuf")
        assert _device.to_host(fflat).tolist() == x.reshape(-1, order="F").tolist()  # memory order
        check_receive_view_of_fortran_buffer(cuda)
        with pytest.raises(ValueError, match="non-contiguous"):
            _device.device_flat(cuda.to_device(np.zeros((4, 6), np.float32))[:, ::2], False, "sendbuf")
        _device.to_device(np.ones(24, np.float32), flat)
        _device.copy(flat[:4], np.full(4, 2, np.float32))
        other = _device.empty(4, np.float32)
        _device.copy(other, flat[:4])
        assert _device.to_host(other).tolist() == [2.0] * 4

    @pytest.mark.parametrize("case", range(len(CASES)))
    def test_device_blob_is_the_cpu_blob(case):
        """A device segment's blob (host- or device-assembled) has the CPU blob's bytes, and
        every pairing of blob and segment side decodes to the same bits."""
        plan, row, dtype = CASES[case]
        x = _data(96, dtype, seed=case)
        cpu_blob = _segment.encode(x, 0, plan, 1, row, "fast")
        dev = cuda.to_device(x)
        host_blob = _segment.encode(dev, 0, plan, 1, row, "fast")
        assert isinstance(host_blob, np.ndarray) and host_blob.tobytes() == cpu_blob.tobytes()
        dev_blob = _segment.encode(dev, 0, plan, 1, row, "fast", on_device=True)
        assert _device.is_device(dev_blob) and _device.to_host(dev_blob).tobytes() == cpu_blob.tobytes()
        expected = np.zeros_like(x)
        assert _segment.decode(cpu_blob, expected) == (0, 96)
        for blob in (cpu_blob, dev_blob):
            out = cuda.to_device(np.zeros_like(x))
            assert _segment.decode(blob, out) == (0, 96)
            assert _bits(out.copy_to_host()) == _bits(expected)
        host_out = np.zeros_like(x)
        _segment.decode(dev_blob, host_out)  # device blob, host segment: decoded on the host
        assert _bits(host_out) == _bits(expected)

    def test_chunk_blob_lands_at_its_offset():
        plan = _plan("rel", 0.01, bounds=_layout.TableLayout(dim=4, bounds=[0.01, 0.1, 0.01]), counts=(72, 72))
        x = _data(72, seed=3)
        seg = cuda.to_device(np.full(72, 7, np.float32))
        blob = _segment.encode(cuda.to_device(x[24:48]), 24, plan, 0, 0, "compact")
        assert blob.tobytes() == _segment.encode(x[24:48], 24, plan, 0, 0, "compact").tobytes()
        assert _segment.decode(blob, seg) == (24, 24)
        host = seg.copy_to_host()
        expected = np.zeros(24, np.float32)
        _segment.decode(_segment.encode(x[24:48], 0, plan, 0, 0, "compact"), expected)
        assert (host[:24] == 7).all() and (host[48:] == 7).all() and _bits(host[24:48]) == _bits(expected)

    def test_hostile_device_blobs_raise_before_writing():
        x = _data(96)
        blob = _segment.encode(cuda.to_device(x), 0, _plan(), 1, 0, "fast", on_device=True)
        seg = cuda.to_device(np.full(96, 5, np.float32))
        with pytest.raises(EmbzipError):
            _segment.decode(blob[:blob.size - 8], seg)
        bad = blob.copy_to_host()
        bad[8 * 7 + 10] ^= 0xFF  # inside the frame's header
        with pytest.raises(EmbzipError):
            _segment.decode(cuda.to_device(bad), seg)
        with pytest.raises(EmbzipError):
            _segment.decode(blob, cuda.to_device(np.zeros(95, np.float32)))  # does not fit
        assert (seg.copy_to_host() == 5).all()

    def test_warm_up_and_scratch_on_the_device():
        plan = CASES[3][0]
        x = cuda.to_device(_data(96))
        _segment.warm_up(x, plan, 1, 0, "fast")
        scratch = _device.empty_like(x)
        assert _device.is_device(scratch) and scratch.shape == (96,)
