"""MPI worker for GPU buffers: ``mpiexec -n 2 python tests/mpi/worker_device.py``.

Launched by tests/test_comm_device.py twice: with the numba-cuda simulator on
(``NUMBA_ENABLE_CUDASIM=1``; numba device arrays stand in for GPU buffers, sizes tiny since the
simulator runs one Python thread per GPU thread), and on a real GPU with
``EMBZIP_WORKER_ARRAYS=cupy`` (cupy arrays, ~1 MB per destination; all ranks share the GPU).
Each exchange is done with host buffers on both ranks first, then with device buffers on
both ranks, on rank 0 only and on rank 1 only: every receive buffer must hold the same bits.
Frames travel through host buffers unless MPI is CUDA-aware (``EMBZIP_CUDA_AWARE_MPI=1``, or
the library says so); then blobs are assembled on and received into the device, and MPI gets
device buffers. Under the simulator, device memory is host memory, so any MPI can run that
path (tests/test_comm_device.py does). Prints ``DEVICE-OK``.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from pathlib import Path

import os

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a source checkout

from mpi4py import MPI  # noqa: E402
from numba import cuda  # noqa: E402

import embzip.comm as ec  # noqa: E402
from embzip import _api, _backend  # noqa: E402
from embzip.comm import _device, _mpi, _pipeline, _placement, _segment  # noqa: E402

ON_DEVICE = {"compress": 0, "decompress": 0}  # codec calls that ran on the (simulated) device


def _counting(name):
    real = getattr(_api, name)

    def wrapper(data, **kwargs):
        if _backend.is_device(data) or _backend.is_device(kwargs.get("out")) or kwargs.get("device") == "cuda":
            ON_DEVICE[name] += 1
        return real(data, **kwargs)
    return wrapper


_api.compress, _api.decompress = _counting("compress"), _counting("decompress")

# How frames and raw buffers met MPI, counted per rank:
# - downloaded / uploaded: a device segment encoded into a host blob / a host blob decoded into
#   a device segment (frames staged through host memory, the non-CUDA-aware way);
# - staged: a device array copied to the host other than a blob header (raw staging);
# - handed: MPI read or wrote a device buffer (simulator only: mpi4py takes a simulated device
#   array through __dlpack__, which is intercepted below; cupy goes to MPI in C);
# - unsynced: of those, buffers written by embzip (allocated, copied into) or by this worker
#   and not followed by a GPU synchronize before MPI got them: must stay empty.
MET = {"downloaded": 0, "uploaded": 0, "staged": 0, "handed": 0}
UNSYNCED = []
_PENDING = []  # (start, end) byte ranges of device memory written since the last synchronize
_GUARD = threading.Lock()  # (the pipelined call's compressing thread writes too)


def _span(arr):
    """The device bytes ``arr`` covers (simulated arrays: their host memory)."""
    host = getattr(arr, "_ary", None)
    if host is None:
        return None
    start = host.__array_interface__["data"][0]
    return start, start + host.nbytes


def _written(arr):
    span = _span(arr)
    if span is not None:
        with _GUARD:
            _PENDING.append(span)


def _wrap(module, name, before=None, after=None):
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        if before is not None:
            before(*args, **kwargs)
        got = real(*args, **kwargs)
        if after is not None:
            after(got, *args, **kwargs)
        return got
    setattr(module, name, wrapper)


def _count(key):
    MET[key] += 1


def _synchronized():
    with _GUARD:
        _PENDING.clear()


_wrap(_device, "empty", after=lambda got, *a, **k: _written(got))
_wrap(_device, "copy", before=lambda dst, src: _written(dst))
_wrap(_device, "to_device", before=lambda host, view: _written(view))
_wrap(_device, "synchronize", after=lambda got: _synchronized())
_wrap(_segment, "encode", after=lambda blob, region, *a, **k: _backend.is_device(region)
      and not _backend.is_device(blob) and _count("downloaded"))
_wrap(_segment, "decode", before=lambda blob, seg: blob.size and _backend.is_device(seg)
      and not _backend.is_device(blob) and _count("uploaded"))
_wrap(_device, "to_host", before=lambda *a: READING_HEADER or _count("staged"))  # (headers are read on the host)
READING_HEADER = False
_read_header = _segment._header


def _header(*args):
    global READING_HEADER
    READING_HEADER = True
    try:
        return _read_header(*args)
    finally:
        READING_HEADER = False


_segment._header = _header

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    _forward = FakeCUDAArray.__getattr__

    def _handed_to_mpi(self, attr):
        if attr == "__dlpack__":  # how mpi4py takes a simulated device array
            MET["handed"] += 1
            span = _span(self)
            with _GUARD:
                if any(lo < span[1] and span[0] < hi for lo, hi in _PENDING):
                    UNSYNCED.append(f"{self._ary.nbytes} bytes at {span[0]:#x}")
        return _forward(self, attr)

    FakeCUDAArray.__getattr__ = _handed_to_mpi

    # The simulator has one GPU and no device ids: pretend the caller made device 3 current, and
    # record which threads make it current again (the pipelined call's threads must).
    SIMULATED_GPU = 3
    USED = []
    _real_use_device = _device.use_device
    _device.current_device = lambda: SIMULATED_GPU

    def _use_device(device):
        USED.append((threading.current_thread().name, device))
        if device != SIMULATED_GPU:
            _real_use_device(device)

    _device.use_device = _use_device

COMM = MPI.COMM_WORLD
P, ME = COMM.Get_size(), COMM.Get_rank()
CUDA_AWARE = _device.cuda_aware_mpi()  # EMBZIP_CUDA_AWARE_MPI=1 under the simulator: its device memory is host memory
if os.environ.get("EMBZIP_WORKER_EXPECT_CUDA_AWARE") == "1":  # a run meant for a CUDA-aware MPI
    assert CUDA_AWARE, f"MPI does not say it is CUDA-aware: {MPI.Get_library_version().splitlines()[0]}"
ARRAYS = os.environ.get("EMBZIP_WORKER_ARRAYS", "numba")  # "numba" (simulator or GPU) or "cupy" (GPU)
ROWS = 4 if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else 20_000
N = ROWS * 12  # elements per destination: ROWS rows of 3 tables x dim 4

if ARRAYS == "cupy":
    import cupy

    def to_device(x):
        return cupy.asarray(x)

    def to_host(x):
        return cupy.asnumpy(x)
else:
    def to_device(x):
        return cuda.to_device(x)

    def to_host(x):
        return x.copy_to_host()


def payload(rank=ME):
    x = (np.random.default_rng(rank).standard_normal(P * N) * 3).astype(np.float32)
    x[1] = np.nan
    x[N + 2] = -np.inf
    return x


def run(call, device_ranks, **kwargs):
    """Receive buffer (on the host) after ``call`` with device buffers on ``device_ranks``."""
    send, recv = payload(), np.full(P * N, 9.0, np.float32)
    if ME in device_ranks:
        send, recv = to_device(send), to_device(recv)
    if ME in device_ranks:
        _written(send)  # (the caller's last writes: a CUDA-aware exchange must synchronize first)
        _written(recv)
    before, met = dict(ON_DEVICE), dict(MET)
    place = _placement.CodecPlacement.choose(_mpi.peek_state(COMM).placement) if _mpi.peek_state(COMM) else "gpu"
    stats = call(send, recv, **kwargs)
    raw = kwargs.get("bypass") is True
    assert stats.mode == ("raw" if raw else "compressed"), stats
    assert stats.codec == (place if ME in device_ranks and not raw else None), (stats, place)
    if ME in device_ranks and not raw and place == "gpu":  # the GPU compressed what this rank sent and decoded what it received
        assert ON_DEVICE["compress"] > before["compress"] and ON_DEVICE["decompress"] > before["decompress"]
    else:
        assert ON_DEVICE == before
    assert not UNSYNCED, f"MPI got device memory written after the last synchronize: {UNSYNCED}"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" and ME in device_ranks and stats.overlapped and not raw:
        assert ("embzip-compress", SIMULATED_GPU) in USED, USED  # the compressing thread is on the caller's GPU
        USED.clear()
    grew = {key: MET[key] > met[key] for key in MET}
    simulated = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if ME not in device_ranks:
        assert not any(grew.values()), (MET, met)
    elif place == "cpu" and not raw:  # the buffers staged whole, the CPU codec, host frames for MPI
        assert grew["staged"] and not (grew["downloaded"] or grew["uploaded"] or grew["handed"]), (MET, met)
    elif CUDA_AWARE:  # frames (or raw segments) stay on the device both ways; MPI moves device memory
        assert not (grew["downloaded"] or grew["uploaded"] or grew["staged"]), (MET, met)
        assert grew["handed"] or not simulated, (MET, met)
    else:  # frames (or raw segments) through host memory both ways; MPI never sees device memory
        assert (grew["staged"] if raw else grew["downloaded"] and grew["uploaded"]), (MET, met)
        assert not grew["handed"], (MET, met)
    return to_host(recv) if ME in device_ranks else recv


def blocking(send, recv, **kwargs):
    return ec.Alltoallv(COMM, send, recv, **kwargs)


def pipelined(send, recv, **kwargs):
    return ec.Ialltoallv(COMM, send, recv, chunk_bytes=64 if ROWS == 4 else 256 * 1024, **kwargs).wait()


def streamed(send, recv, **kwargs):
    """A blocking call on a slow link, which streams (the pipelined exchange, one chunk per
    destination). The agreed cost state is pinned alike on every rank: 1 B/s, and a codec
    that pays (this worker's frames are too small to pay on their own)."""
    from embzip.comm import _mpi

    costs = _mpi.peek_state(COMM).costs
    for _ in range(5):  # whole windows
        costs.add_bandwidth(2, 1.0)
        costs._record("fast", (0.1, 1e-9, 1e-9))
    stats = ec.Alltoallv(COMM, send, recv, **kwargs)
    assert stats.overlapped and stats.model["pays"], stats
    return stats


DEFERRED = [0]  # GPU chunk decodes the pipeline put off because the codec lock was taken
_real_run = _pipeline._Pipeline.run


def _counting_run(self, request):
    try:
        return _real_run(self, request)
    finally:
        DEFERRED[0] += self.deferred_count


_pipeline._Pipeline.run = _counting_run


def slow_encoder(send, recv, **kwargs):
    """The pipelined call with a compressing thread that keeps the codec lock a while after
    each device chunk (a long GPU encode): chunks arriving meanwhile must be received, kept and
    decoded later, so the MPI thread never waits on the lock. Same bits as ever."""
    real = _segment.encode

    def slow(region, *args, **kw):
        with _device.LOCK:
            blob = real(region, *args, **kw)
            if _backend.is_device(region):
                time.sleep(0.3)
            return blob

    before = DEFERRED[0]
    _segment.encode = slow
    try:
        stats = pipelined(send, recv, **kwargs)
    finally:
        _segment.encode = real
    if _backend.is_device(recv):  # this rank decodes on the GPU: something arrived while the lock was held
        assert DEFERRED[0] > before, "no chunk decode was deferred while the compressing thread held the lock"
    return stats


def codec_placement():
    """Where the codec runs for GPU buffers is each rank's own choice (frames are identical):
    forced to the CPU (the buffers staged through the host), and measured (``auto``: twice on
    the GPU, twice on the CPU, then the faster), every call gives the same bits as the host-only
    exchange. Rank 0 alone has GPU buffers in the last calls, so the ranks' places differ."""
    kwargs = dict(abs_error=1e-2, strategy="fast", bypass=False)
    expected = {call: run(call, (), **kwargs).tobytes() for call in (blocking, pipelined)}
    os.environ["EMBZIP_COMM_CODEC"] = "cpu"
    for call in (blocking, pipelined):
        assert run(call, (0, 1), **kwargs).tobytes() == expected[call], call
    os.environ["EMBZIP_COMM_CODEC"] = "auto"
    state = _mpi.peek_state(COMM)
    state.placement = _placement.CodecPlacement()
    places = []
    for k in range(6):
        places.append(state.placement.choose())
        call = pipelined if k % 2 else blocking
        assert run(call, (0, 1) if k < 4 else (0,), **kwargs).tobytes() == expected[call], (k, places)
    best = state.placement.best  # the simulated GPU is far slower, but a rank may measure as it likes
    assert places[:4] == ["gpu", "gpu", "cpu", "cpu"] and best in ("gpu", "cpu"), places
    assert places[4:] == [best] * 2 or ME != 0, (places, best)
    os.environ["EMBZIP_COMM_CODEC"] = "gpu"
    print(f"rank {ME}: codec placement ok ({places})", flush=True)


def main():
    tables = ec.TableLayout(dim=4, bounds=[0.01, 0.1, 0.01])
    for name, call, kwargs in (("plain", blocking, dict(abs_error=1e-2)),
                               ("tables", blocking, dict(rel_error=0.01, bounds=tables)),
                               ("pipelined", pipelined, dict(abs_error=1e-2, bounds=tables)),
                               ("slow encoder", slow_encoder, dict(abs_error=1e-2)),
                               ("compact", blocking, dict(rel_error=0.01, strategy="compact")),
                               ("streamed", streamed, dict(abs_error=1e-2, bounds=tables)),
                               ("raw", blocking, dict(abs_error=1e-2, bypass=True))):
        kwargs.setdefault("strategy", "fast")
        kwargs.setdefault("bypass", False)
        expected = run(call, (), **kwargs)
        own = payload()[ME * N:(ME + 1) * N]
        assert expected[ME * N:(ME + 1) * N].tobytes() == own.tobytes(), name  # own segment: exact
        assert not np.array_equal(expected, np.full(P * N, 9.0, np.float32)), name
        if kwargs["bypass"] is True:  # raw: every segment exact
            for src in range(P):
                sent = payload(src)[ME * N:(ME + 1) * N]
                assert expected[src * N:(src + 1) * N].tobytes() == sent.tobytes(), (name, src)
        for device_ranks in ((0, 1), (0,), (1,)):
            got = run(call, device_ranks, **kwargs)
            assert got.tobytes() == expected.tobytes(), (name, device_ranks, got, expected)
        print(f"rank {ME}: {name} ok", flush=True)
        if name == "plain":
            codec_placement()
    in_place_on_device()
    if ARRAYS == "cupy":
        producer_stream()
    if not CUDA_AWARE:  # (a CUDA-aware MPI stages nothing)
        staging_failure()
    print(f"DEVICE-OK rank {ME}", flush=True)


def in_place_on_device():
    """MPI.IN_PLACE (or None) with a GPU receive buffer sends the buffer's contents: the same
    bits as the host-only in-place exchange, compressed blocking and pipelined, and raw."""
    for name, call, bypass in (("blocking", blocking, False), ("pipelined", pipelined, False),
                               ("raw", blocking, True)):
        expected = payload()
        call(MPI.IN_PLACE, expected, abs_error=1e-2, strategy="fast", bypass=bypass)
        assert not np.array_equal(expected, payload()) or P == 1, name
        for device_ranks in ((0, 1), (0,)):
            buf = to_device(payload()) if ME in device_ranks else payload()
            call(None if ME == 0 else MPI.IN_PLACE, buf, abs_error=1e-2, strategy="fast", bypass=bypass)
            got = to_host(buf) if ME in device_ranks else buf
            assert got.tobytes() == expected.tobytes(), (name, device_ranks)
    print(f"rank {ME}: in place ok", flush=True)


def producer_stream():
    """Real GPU, cupy: the caller's current stream is non-blocking (no ordering with the legacy
    stream embzip uses). The send buffer is still being written there when the call starts (a
    queue of kernels), the receive buffer has a queued write there too, and the result is read
    there right after, with no synchronize of the worker's own: the call must wait for the
    producer and hand back finished buffers (embzip._stream_order), compressed and raw."""
    for name, call, bypass in (("blocking", blocking, False), ("pipelined", pipelined, False),
                               ("raw", blocking, True)):
        kwargs = dict(abs_error=1e-2, strategy="fast", bypass=bypass)
        expected = run(call, (), **kwargs)
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            # (the writes multiply the bits as integers: a GPU float multiply returns its
            # canonical NaN, 0x7FFFFFFF, for the payload's NaN, and the expected result is bits)
            source = cupy.asarray(payload()).view(cupy.uint32)
            send = cupy.empty_like(source)
            for _ in range(200):  # keeps the stream busy well past the moment the call starts
                cupy.multiply(source, 1, out=send)
            recv = cupy.empty_like(source)
            cupy.multiply(source, 0, out=recv)  # a queued write the received data must come after
            send, recv = send.view(cupy.float32), recv.view(cupy.float32)
            call(send, recv, **kwargs)
            got = cupy.asnumpy(recv)  # on the non-blocking stream, no synchronize
        stream.synchronize()
        assert got.tobytes() == expected.tobytes(), (name, got[:4], expected[:4])
    print(f"rank {ME}: producer stream ok", flush=True)


def staging_failure():
    """A GPU buffer's staging copy to the host fails on the last rank (out of host memory, say):
    every rank raises that rank's error, none waits in an exchange the last rank never enters,
    and the next call works."""
    from embzip.comm import _device

    last = P - 1
    calls = (blocking, lambda s, r, **kw: ec.Ialltoallv(COMM, s, r, chunk_bytes=1024, **kw).wait())
    for call, bypass in [(call, bypass) for bypass in (True, False) for call in calls]:
        # bypass=False: compressed on the CPU, the GPU buffers staged before the handshake
        os.environ["EMBZIP_COMM_CODEC"] = "gpu" if bypass else "cpu"
        send, recv = payload(), np.zeros(P * N, np.float32)
        if ME == last:
            send, recv = to_device(send), to_device(recv)
        real = _device.to_host

        def failing(array):
            raise MemoryError("no host memory for the staging copy")
        _device.to_host = failing if ME == last else real
        try:
            call(send, recv, abs_error=1e-2, bypass=bypass, strategy="fast")
        except ec.CommError as exc:
            assert f"rank {last} while staging" in str(exc) and "MemoryError" in str(exc), exc
        else:
            raise AssertionError("a failed staging copy did not raise")
        finally:
            _device.to_host = real
        call(send, recv, abs_error=1e-2, bypass=bypass, strategy="fast")
    os.environ["EMBZIP_COMM_CODEC"] = "gpu"
    print(f"rank {ME}: staging failure ok", flush=True)


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        COMM.Abort(1)
