"""embzip.comm with GPU buffers, without a GPU or MPI: staging through host memory (a fake
cupy), asking MPI whether it is CUDA-aware, stream waits, the caller's GPU in threads, and
where the codec runs.

The GPU exchanges run under MPI (simulator) in test_comm_device.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from embzip.comm import _device


class _FakeDeviceArray:
    """Just enough of cupy's ndarray for the staging code (a host array behind a CUDA interface)."""

    def __init__(self, host, readonly=False):
        self.host = host
        self.__cuda_array_interface__ = {"shape": host.shape, "typestr": host.dtype.str,
                                         "data": (0, readonly), "version": 3}

    @property
    def flags(self):
        return self.host.flags

    strides = property(lambda self: self.host.strides)
    dtype = property(lambda self: self.host.dtype)
    shape = property(lambda self: self.host.shape)
    size = property(lambda self: self.host.size)

    def ravel(self, order="C"):
        return _FakeDeviceArray(self.host.ravel(order=order))

    def set(self, values):
        self.host[...] = values


@pytest.fixture
def fake_cupy(monkeypatch):
    module = types.SimpleNamespace(asarray=lambda a: a if isinstance(a, _FakeDeviceArray) else _FakeDeviceArray(a),
                                   asnumpy=lambda a: a.host.copy())
    monkeypatch.setitem(sys.modules, "cupy", module)
    return module


def test_device_staging_with_a_fake_cupy(fake_cupy):
    dev = _FakeDeviceArray(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert _device.is_device(dev) and not _device.is_device(np.zeros(3))
    flat, dtype = _device.device_flat(dev, True, "recvbuf")
    assert dtype == np.float32 and flat.shape == (12,)
    host = _device.to_host(flat)
    assert isinstance(host, np.ndarray) and host.tolist() == list(range(12))
    _device.to_device(host * 2, flat)
    assert dev.host.reshape(-1).tolist() == [2 * i for i in range(12)]
    with pytest.raises(ValueError, match="read-only"):
        _device.device_flat(_FakeDeviceArray(np.zeros(3), readonly=True), True, "recvbuf")
    with pytest.raises(ValueError, match="non-contiguous"):
        _device.device_flat(_FakeDeviceArray(np.zeros((4, 4))[:, ::2]), False, "sendbuf")


def test_device_buffer_without_cupy_is_a_type_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(TypeError, match="needs cupy"):
        _device.device_flat(_FakeDeviceArray(np.zeros(3)), False, "sendbuf")


class _FakeMPI:
    """What library_cuda_support reads of mpi4py.MPI: the extension's file, init state."""

    def __init__(self, path, initialized=True):
        self.__file__, self._initialized = str(path), initialized

    def Is_initialized(self):
        return self._initialized

    def Is_finalized(self):
        return False


def _library_answering(tmp_path, answer):
    """A shared library whose MPIX_Query_cuda_support returns ``answer`` (needs a C compiler)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a stand-in MPI library")
    src = tmp_path / f"q{answer}.c"
    src.write_text(f"int MPIX_Query_cuda_support(void) {{ return {answer}; }}\n")
    lib = tmp_path / f"libq{answer}.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True, capture_output=True)
    return lib


@pytest.mark.parametrize("answer", [0, 1])
def test_cuda_awareness_is_asked_of_the_mpi_library(monkeypatch, tmp_path, answer):
    from embzip.comm import _mpi

    monkeypatch.delenv("EMBZIP_CUDA_AWARE_MPI", raising=False)
    monkeypatch.setattr(_mpi, "_CUDA_SUPPORT", None)
    monkeypatch.setattr(_mpi, "load", lambda: _FakeMPI(_library_answering(tmp_path, answer)))
    assert _device.cuda_aware_mpi() is bool(answer)
    monkeypatch.setenv("EMBZIP_CUDA_AWARE_MPI", str(1 - answer))  # the setting overrides the library
    assert _device.cuda_aware_mpi() is not bool(answer)
    monkeypatch.setenv("EMBZIP_CUDA_AWARE_MPI", "auto")
    assert _device.cuda_aware_mpi() is bool(answer)
    for word, meaning in (("true", True), ("Off", False), (" yes ", True), ("no", False)):
        monkeypatch.setenv("EMBZIP_CUDA_AWARE_MPI", word)
        assert _device.cuda_aware_mpi() is meaning
    monkeypatch.setenv("EMBZIP_CUDA_AWARE_MPI", "maybe")
    with pytest.warns(UserWarning, match="not 1/0/auto"):
        assert _device.cuda_aware_mpi() is bool(answer)


def test_cuda_awareness_of_an_mpi_that_cannot_say(monkeypatch, tmp_path):
    """No query in the library (or MPI not initialized yet): not CUDA-aware, stage."""
    from embzip.comm import _mpi

    monkeypatch.delenv("EMBZIP_CUDA_AWARE_MPI", raising=False)
    monkeypatch.setattr(_mpi, "_CUDA_SUPPORT", None)
    monkeypatch.setattr(_mpi, "load", lambda: _FakeMPI(_library_answering(tmp_path, 1), initialized=False))
    assert not _device.cuda_aware_mpi()
    assert _mpi._CUDA_SUPPORT is None  # not kept: asked again once MPI is up
    libc = ctypes.util.find_library("c")
    monkeypatch.setattr(_mpi, "load", lambda: _FakeMPI(libc))
    assert not _device.cuda_aware_mpi()


def test_the_pypi_mpich_is_not_cuda_aware(monkeypatch):
    """The real library of this test run answers (MPICH and Open MPI from PyPI: built without CUDA)."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'embzip[mpi]')")
    from embzip.comm import _mpi

    monkeypatch.delenv("EMBZIP_CUDA_AWARE_MPI", raising=False)
    monkeypatch.setattr(_mpi, "_CUDA_SUPPORT", None)
    MPI = _mpi.load()
    assert hasattr(ctypes.CDLL(MPI.__file__), "MPIX_Query_cuda_support")  # found through mpi4py's module
    assert "--with-cuda" not in MPI.Get_library_version()  # (the wheel's configure line)
    assert not _device.cuda_aware_mpi()
    assert _mpi._CUDA_SUPPORT is False  # asked, and kept


def test_real_cupy_staging_roundtrip():
    cupy = pytest.importorskip("cupy", reason="cupy is not installed")
    try:
        if not cupy.is_available():
            pytest.skip("cupy is installed but no CUDA device is available")
    except Exception as exc:  # a CUDA runtime without a device raises here
        pytest.skip(f"no usable CUDA device: {exc}")
    dev = cupy.arange(12, dtype=cupy.float32)
    flat, _ = _device.device_flat(dev, True, "recvbuf")
    host = _device.to_host(flat)
    _device.to_device(host + 1, flat)
    assert cupy.asnumpy(dev).tolist() == [i + 1.0 for i in range(12)]


def test_threads_adopt_the_callers_gpu(monkeypatch):
    """current_device names the caller's GPU (cupy's runtime when it answers); use_device makes
    it current in another thread; None (nothing to name) does nothing."""
    calls = []
    runtime = types.SimpleNamespace(getDevice=lambda: 2, setDevice=calls.append)
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime)))
    assert _device.current_device() == 2
    _device.use_device(5)
    _device.use_device(None)
    assert calls == [5]


def test_stream_waits_without_a_usable_numba_cuda(monkeypatch):
    """embzip.comm stages cupy buffers through the host when numba-cuda cannot run (missing, or
    no GPU); its stream waits must then use cupy, not fail in numba (they did: CudaSupportError).
    Here first for real (numba-cuda without a GPU, or with one: either way nothing may raise),
    then with a stand-in for cupy, which cannot run without a GPU."""
    from types import SimpleNamespace

    from embzip import _stream_order

    _stream_order.wait_for_producer(None, {"stream": 1})
    _stream_order.results_ready()

    calls = []
    cupy = SimpleNamespace(cuda=SimpleNamespace(
        runtime=SimpleNamespace(streamSynchronize=lambda handle: calls.append(("stream", handle))),
        Stream=SimpleNamespace(null=SimpleNamespace(synchronize=lambda: calls.append(("legacy",))))))
    monkeypatch.setattr(_stream_order, "_numba_cuda", lambda: None)
    monkeypatch.setattr(_stream_order, "_simulated", lambda: False)
    monkeypatch.setattr(_stream_order, "_cupy", lambda: cupy)
    _stream_order.wait_for_producer(None, {"stream": 2})
    _stream_order.wait_for_producer(None, {"shape": (3,)})  # no stream exported: nothing to wait for
    _stream_order.results_ready()
    assert calls == [("stream", 2), ("legacy",)]


def test_torch_tensors_wait_for_torchs_current_stream(monkeypatch):
    """torch exports no stream in ``__cuda_array_interface__`` (version 2), and its side streams
    do not wait for the legacy stream embzip works on: embzip must wait for torch's current
    stream on the tensor's device before reading (or, as ``out=``, writing) a CUDA tensor.
    torch's CUDA streams need a GPU, so a stand-in for torch.cuda records the calls."""
    from embzip import _stream_order

    calls = []

    class Stream:
        def __init__(self, device):
            self.device = device

        def synchronize(self):
            calls.append(self.device)

    fake_torch = types.ModuleType("torch")
    fake_torch.Tensor = type("Tensor", (), {"device": "cuda:1"})
    fake_torch.cuda = types.SimpleNamespace(current_stream=Stream)
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setattr(_stream_order, "_simulated", lambda: False)
    Parameter = type("Parameter", (fake_torch.Tensor,), {"__module__": "mylib"})  # a subclass made elsewhere
    _stream_order.wait_for_producer(fake_torch.Tensor(), {"shape": (3,), "version": 2})
    _stream_order.wait_for_producer(Parameter(), {"shape": (3,), "version": 2})
    assert calls == ["cuda:1", "cuda:1"]
    _stream_order.wait_for_producer(object(), {"shape": (3,), "version": 2})  # not torch, no stream: no wait
    assert calls == ["cuda:1", "cuda:1"]


def test_codec_placement_measures_both_places_then_keeps_the_faster(monkeypatch):
    """EMBZIP_COMM_CODEC=auto: two calls on the GPU, two on the CPU (the first of each is
    dropped: compilation), then the place with the smaller median; the other is tried again
    after 16 calls, then 32, ... up to 1024, and a faster probe switches the choice. gpu / cpu
    force a place; another value warns and measures."""
    from embzip.comm._placement import CodecPlacement

    monkeypatch.delenv("EMBZIP_COMM_CODEC", raising=False)
    seconds = {"gpu": 0.05, "cpu": 0.02}
    place = CodecPlacement()

    def calls(n):
        out = []
        for _ in range(n):
            out.append(place.choose())
            place.record(out[-1], 10.0 if place.calls[out[-1]] == 0 else seconds[out[-1]])  # a slow first call
        return out

    assert calls(4) == ["gpu", "gpu", "cpu", "cpu"] and place.best == "cpu"
    assert calls(17) == ["cpu"] * 16 + ["gpu"]  # the probe after 16 calls on the CPU
    assert calls(33) == ["cpu"] * 32 + ["gpu"]  # still slower: the interval doubled
    seconds["gpu"] = 0.001  # the GPU got faster (larger segments, say)
    assert calls(65) == ["cpu"] * 64 + ["gpu"] and place.best == "cpu"  # 1 fast sample of 3: the median holds
    assert calls(129) == ["cpu"] * 128 + ["gpu"] and place.best == "gpu"  # 2 of 3: switched
    assert place.interval == 16 and calls(17) == ["gpu"] * 16 + ["cpu"]
    for forced in ("gpu", "cpu"):
        monkeypatch.setenv("EMBZIP_COMM_CODEC", forced.upper())
        assert CodecPlacement().choose() == forced
    monkeypatch.setenv("EMBZIP_COMM_CODEC", "tpu")
    with pytest.warns(UserWarning, match="EMBZIP_COMM_CODEC='tpu'"):
        assert CodecPlacement().choose() == "gpu"
