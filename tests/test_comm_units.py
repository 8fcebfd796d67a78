"""embzip.comm pieces that need no MPI: bounds, segment blobs, the cost model, chunking, errors, GPU staging.

The collective itself is tested under real MPI in test_comm.py.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embzip
from embzip.comm import CallStats, CommDecodeError, CommError, CommTypeError, CommValueError, TableLayout
from embzip.comm import _costs, _device, _errors, _layout, _segment, _stats
from embzip.comm._pipeline import MAX_CHUNKS, chunking


def test_importing_embzip_comm_does_not_import_mpi4py():
    code = "import sys, embzip, embzip.comm; embzip.comm.TableLayout(dim=4); print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------- bounds


def test_resolve_modes_and_defaults():
    counts = np.array([12, 0, 24])
    plan = _layout.resolve(None, 0.01, None, 3, counts)
    assert plan.mode == "rel" and plan.per_dest.tolist() == [0.01] * 3 and plan.groups(0) is None
    plan = _layout.resolve(1e-3, None, [None, 0.5, float("nan")], 3, counts)
    assert plan.mode == "abs" and plan.per_dest.tolist() == [1e-3, 0.5, 1e-3]


@pytest.mark.parametrize("kwargs, error, text", [
    (dict(abs_error=None, rel_error=None), ValueError, "exactly one"),
    (dict(abs_error=1.0, rel_error=1.0), ValueError, "exactly one"),
    (dict(abs_error=-1.0, rel_error=None), ValueError, "finite and > 0"),
    (dict(abs_error="1", rel_error=None), TypeError, "real number"),
    (dict(abs_error=1.0, rel_error=None, bounds=[1.0, 2.0]), ValueError, "one bound per destination (3)"),
    (dict(abs_error=1.0, rel_error=None, bounds=[1.0, 0.0, 1.0]), ValueError, "finite and > 0"),
    (dict(abs_error=1.0, rel_error=None, bounds="abc"), TypeError, "TableLayout"),
    (dict(abs_error=1.0, rel_error=None, bounds=TableLayout(dim=5)), ValueError, "rows of 5"),
    (dict(abs_error=1.0, rel_error=None, bounds=TableLayout(dim=2, bounds=np.ones((2, 3)))), ValueError, "one row per rank"),
    (dict(abs_error=1.0, rel_error=None, bounds=TableLayout(dim=4, bounds=[1, 1, 1, 1])), ValueError, "4 tables x dim 4"),
])
def test_resolve_rejects(kwargs, error, text):
    with pytest.raises(error, match=None) as info:
        _layout.resolve(kwargs["abs_error"], kwargs["rel_error"], kwargs.get("bounds"), 3, np.array([12, 0, 24]))
    assert text in str(info.value)


def test_table_layout_groups_by_bound_value():
    layout = TableLayout(dim=2, bounds=[0.1, None, 0.1, 0.3])
    assert layout.tables == 4
    plan = _layout.resolve(0.2, None, layout, 2, np.array([16, 8]))
    groups = plan.groups(1)
    assert [(g.tolist(), b) for g, b in groups] == [([0, 2], 0.1), ([1], 0.2), ([3], 0.3)]
    with pytest.raises(ValueError, match="positive integer"):
        TableLayout(dim=0)
    with pytest.raises(TypeError):
        TableLayout(dim=2, bounds=["x"])


# ---------------------------------------------------------------- segment blobs


def _plan(mode="abs", value=1e-3, size=2, bounds=None, counts=None):
    counts = np.array([60, 60] if counts is None else counts)
    return _layout.resolve(value if mode == "abs" else None, value if mode == "rel" else None, bounds, size, counts)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("row", [0, 6, 7])
def test_blob_roundtrip_within_bound(dtype, row):
    x = np.random.default_rng(1).normal(size=60).astype(dtype)
    blob = _segment.encode(x, 0, _plan(), 1, row, "fast")
    assert blob.size % 8 == 0
    out = np.full(60, np.nan, dtype)
    assert _segment.decode(blob, out) == (0, 60)
    assert np.abs(out.astype(np.float64) - x).max() <= 1e-3


def test_blob_tables_each_within_its_bound_and_offsets():
    rows, tables, dim = 5, 3, 4
    x = np.random.default_rng(2).normal(size=(rows, tables * dim)).astype(np.float32)
    layout = TableLayout(dim=dim, bounds=[1e-4, 1e-1, 1e-4])
    plan = _plan(bounds=layout, counts=[0, x.size])
    seg = np.zeros(x.size + 24, np.float32)
    blob = _segment.encode(x.reshape(-1), 24, plan, 1, 0, "compact")
    assert _segment.decode(blob, seg) == (24, x.size)
    assert not seg[:24].any()  # nothing outside the blob's region is written
    got = seg[24:].reshape(rows, tables, dim).astype(np.float64)
    for t, b in enumerate([1e-4, 1e-1, 1e-4]):
        assert np.abs(got[:, t] - x.reshape(rows, tables, dim)[:, t]).max() <= b


def test_blob_empty_region():
    blob = _segment.encode(np.zeros(0, np.float32), 0, _plan(), 0, 0, "fast")
    assert _segment.decode(blob, np.zeros(0, np.float32)) == (0, 0)


def test_hostile_blobs_raise_embzip_errors():
    x = np.random.default_rng(3).normal(size=60).astype(np.float32)
    blob = _segment.encode(x, 0, _plan(), 1, 0, "fast")
    out = np.zeros(60, np.float32)
    with pytest.raises(embzip.FormatError, match="magic"):
        _segment.decode(np.concatenate([np.zeros(8, np.uint8), blob[8:]]), out)
    with pytest.raises(embzip.CorruptFrameError):
        _segment.decode(blob[:-8], out)  # frame lengths no longer add up
    with pytest.raises(embzip.CorruptFrameError, match="receive segment holds 59"):
        _segment.decode(blob, np.zeros(59, np.float32))
    with pytest.raises(embzip.CorruptFrameError, match="float64"):
        _segment.decode(blob, np.zeros(60, np.float64))  # frame dtype differs from the receive buffer
    wrong = blob.copy()
    wrong[24:32] = np.array([9999], "<u8").view(np.uint8)  # absurd frame count
    with pytest.raises(embzip.CorruptFrameError):
        _segment.decode(wrong, out)


@given(st.data())
def test_corrupted_blobs_never_escape_as_other_errors(data):
    x = np.random.default_rng(4).normal(size=(10, 6)).astype(np.float32)
    plan = _plan(bounds=TableLayout(dim=2, bounds=[1e-3, 1e-2, 1e-3]), counts=[0, 60])
    blob = _segment.encode(x.reshape(-1), 0, plan, 1, 0, "fast").copy()
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, blob.size - 1))] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, blob.size))
    out = np.zeros(64, np.float32)
    try:
        offset, count = _segment.decode(blob[:cut] if data.draw(st.booleans()) else blob, out)
    except embzip.EmbzipError:
        return
    assert 0 <= offset and offset + count <= out.size


# ---------------------------------------------------------------- cost model


def _measured(mode, raw=8e6, wire=1e6, transfer=0.01, spb_c=2e-9, spb_d=1e-9, inv_ratio=0.1, alt=None):
    vec = np.zeros(len(_stats.MEASUREMENT_FIELDS))
    vec[:9] = [mode, 1, raw, wire, transfer, 0.0, spb_c, spb_d, inv_ratio]
    if alt is not None:
        vec[9:12] = alt
    return vec


def test_raw_bandwidth_from_the_rank_that_waited_for_nobody():
    # MAX-reduced over ranks: the slowest transfer (0.3 s) includes an early rank's wait for a
    # late one; 1 / the largest inv_transfer_s is the late rank's 0.01 s, which is transfer only
    ranks = [_stats.measurement(_stats.CallStats("raw", "cost model", raw_bytes=8e6, sent_bytes=8e6,
                                                 transfer_s=t), 0.0, fused=True) for t in (0.3, 0.2, 0.01)]
    reduced = np.max(ranks, axis=0)
    state = _costs.CostState()
    state.absorb(reduced)
    assert state.bandwidth == pytest.approx(8e6 / 0.01)
    compressed = _measured(1, wire=1e6, transfer=0.05)  # compressed transfers start after the handshake
    compressed[_costs._F["inv_transfer_s"]] = 1 / 0.001
    state = _costs.CostState()
    state.absorb(compressed)
    assert state.bandwidths[1][-1] == pytest.approx(1e6 / 0.05)
    assert _stats.measurement(_stats.CallStats("raw", "x"), 0.0).tolist() == [0.0] * len(_stats.MEASUREMENT_FIELDS)


def test_cost_model_schedule_and_decisions():
    state = _costs.CostState()
    first = state.decide("auto", "auto")
    assert (first.mode, first.reason, first.calibrate) == ("compressed", "calibration", True)
    state.absorb(_measured(1, wire=1e5, alt=(0.07, 8e-9, 6e-9)))  # too small to measure bandwidth
    assert set(state.codec) == {"fast", "compact"} and state.bandwidth is None
    assert state.decide("auto", "auto").mode == "raw"  # bandwidth still unknown: measure it raw
    for _ in range(2):  # a 31 MB/s share of a 1 Gbit/s link
        state.absorb(_measured(2, wire=8e6, transfer=8e6 / 31e6))
    slow = state.decide("auto", "auto")
    assert (slow.mode, slow.reason, slow.encoder) == ("compressed", "cost model", "fast")
    assert slow.model["pays"] and abs(slow.model["bandwidth_Bps"] - 31e6) < 1e3
    assert state.decide("auto", "compact").encoder == "compact"
    state.absorb(_measured(2, wire=8e6, transfer=8e6 / 5e9))  # one fast transfer: the median holds
    assert state.decide("auto", "auto").mode == "compressed"
    for _ in range(2):  # shared memory from now on: 5 GB/s
        state.absorb(_measured(2, wire=8e6, transfer=8e6 / 5e9))
    fast = state.decide("auto", "auto")
    assert fast.mode == "raw" and not fast.model["pays"]
    assert state.decide(True, "auto").mode == "raw" and state.decide(False, "auto").mode == "compressed"


_POSITIVE = st.floats(1e-12, 1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 4.0), _POSITIVE, _POSITIVE), min_size=2, max_size=2),
       st.floats(1e3, 1e12), st.sampled_from(["auto", "fast", "compact"]))
def test_decisions_use_exactly_costmodel_choose_and_pays(codecs, bandwidth, strategy):
    # CostState evaluates costmodel.choose / pays from terms it precomputes per codec update;
    # the choice and the verdict must be costmodel's, bit for bit, ties included
    from embzip import costmodel

    state = _costs.CostState()
    for encoder, (inv_ratio, spb_c, spb_d) in zip(("fast", "compact"), codecs):
        state._record(encoder, (inv_ratio, spb_c, spb_d))
    state.add_bandwidth(2, bandwidth)
    costs, sizes = {}, {}
    for encoder, name in (("fast", "bitpack"), ("compact", "rans")):
        inv_ratio, spb_c, spb_d = state.codec[encoder]
        costs[name] = costmodel.EncoderCost(1.0 / max(spb_c, 1e-15), 1.0 / max(spb_d, 1e-15))
        sizes[name] = inv_ratio
    want = {"bitpack": "fast", "rans": "compact"}[costmodel.choose(1, sizes, bandwidth, costs)]
    decision = state.decide(False, strategy)
    assert decision.encoder == (want if strategy == "auto" else strategy)
    name = "bitpack" if decision.encoder == "fast" else "rans"
    inv_ratio = state.codec[decision.encoder][0]
    ratio = 1.0 / inv_ratio if inv_ratio > 0 else float("inf")
    assert decision.model["pays"] == costmodel.pays(ratio, bandwidth, costs[name])
    assert decision.model["ratio"] == ratio and decision.model["bandwidth_Bps"] == bandwidth


@pytest.mark.parametrize("first", ["fast", "compact"])
def test_tied_encoders_resolve_as_costmodel_choose_does(first):
    # identical measurements: a true tie, which choose() gives to the first of equally fast
    # encoders in the codec table's order (the order they were first recorded)
    from embzip import costmodel

    state = _costs.CostState()
    second = "compact" if first == "fast" else "fast"
    for encoder in (first, second):
        state._record(encoder, (0.5, 1e-9, 2e-9))
    state.add_bandwidth(2, 1e9)
    cost = costmodel.EncoderCost(1e9, 5e8)
    names = {"fast": "bitpack", "compact": "rans"}
    sizes = {names[first]: 0.5, names[second]: 0.5}
    want = costmodel.choose(1, sizes, 1e9, {"bitpack": cost, "rans": cost})
    assert names[state.decide(False, "auto").encoder] == want == names[first]


def test_one_noisy_measurement_does_not_flip_the_encoder():
    state = _costs.CostState()
    state.absorb(_measured(2, wire=8e6, transfer=8e6 / 31e6))
    for _ in range(3):
        state.absorb(_measured(1, wire=1e5, spb_c=2e-9, alt=(0.07, 8e-9, 6e-9)))
    state.absorb(_measured(1, wire=1e5, spb_c=5e-7))  # fast was slowed down once, by a neighbour
    assert state.decide(False, "auto").encoder == "fast"


def test_cost_model_probes_with_backoff_and_pure_decide():
    state = _costs.CostState()
    state.absorb(_measured(1))
    state.absorb(_measured(2, wire=8e6, transfer=8e6 / 5e9))
    for _ in range(3):
        assert state.decide("auto", "fast").reason == "cost model"  # pure: nothing advances
    reasons = []
    for _ in range(_costs.FIRST_PROBE * 3 + 2):
        decision = state.decide("auto", "fast")
        state.commit(decision)
        reasons.append(decision.reason)
    probes = [i for i, r in enumerate(reasons) if r == "probe"]
    assert probes[:2] == [_costs.FIRST_PROBE - 1, 3 * _costs.FIRST_PROBE - 1]  # 16, then 32 later


def test_auto_strategy_recalibrates_the_other_encoder_with_backoff():
    state = _costs.CostState()
    state.absorb(_measured(1, wire=1e5, alt=(0.07, 8e-9, 6e-9)))
    due = []
    for i in range(_costs.FIRST_PROBE * 3 + 2):
        decision = state.decide(False, "auto")
        state.commit(decision)
        due.append(decision.calibrate)
    calls = [i for i, d in enumerate(due) if d]
    assert calls[:2] == [_costs.FIRST_PROBE - 1, 3 * _costs.FIRST_PROBE - 1]


def test_compressed_transfers_do_not_dilute_raw_bandwidth():
    state = _costs.CostState()
    state.absorb(_measured(1, wire=1e6, transfer=1e6 / 50e6))  # compressed: latency-heavy, reads low
    assert state.bandwidth == pytest.approx(50e6) and not state.raw_measured
    state.absorb(_measured(2, wire=8e6, transfer=8e6 / 2e9))
    for _ in range(3):
        state.absorb(_measured(1, wire=1e6, transfer=1e6 / 50e6))
    assert state.bandwidth == pytest.approx(2e9) and state.raw_measured


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.one_of(st.floats(5e-324, 1e300), st.sampled_from([1.0, 2.0]))),
                max_size=3 * _costs.WINDOW + 2))
def test_bandwidth_windows_keep_the_last_values_and_their_median(samples):
    # compiled (the express lane records samples inside its compiled step): it must be what a
    # deque of WINDOW values and Python's median give, bit for bit, ties and extremes included
    import collections

    state = _costs.CostState()
    reference = {2: collections.deque(maxlen=_costs.WINDOW), 1: collections.deque(maxlen=_costs.WINDOW)}
    assert state.bandwidth is None and not state.raw_measured
    for mode, value in samples:
        state.add_bandwidth(mode, value)
        reference[mode].append(value)
        assert state.bandwidths == {m: list(window) for m, window in reference.items()}
        want = _costs._median(reference[2]) or _costs._median(reference[1])
        assert state.bandwidth == want and type(state.bandwidth) is float
        assert state.raw_measured == bool(reference[2])


def test_small_compressed_transfers_do_not_set_bandwidth():
    state = _costs.CostState()
    state.absorb(_measured(1, wire=1000, transfer=1.0))
    assert state.bandwidth is None


# ---------------------------------------------------------------- chunks, stats, errors


@given(st.integers(0, 10_000), st.integers(1, 50), st.integers(1, 100_000))
def test_chunking_covers_whole_rows(count, unit, chunk_bytes):
    count -= count % unit
    chunks = chunking(count, unit, 4, chunk_bytes)
    assert len(chunks) <= MAX_CHUNKS and all(c > 0 and c % unit == 0 for _, c in chunks)
    assert sum(c for _, c in chunks) == count
    assert all(a[0] + a[1] == b[0] for a, b in zip(chunks, chunks[1:]))


def test_call_stats_and_measurement():
    stats = CallStats("compressed", "cost model", "fast", raw_bytes=1000, sent_bytes=100, recv_raw_bytes=500,
                      compress_s=1e-3, decompress_s=5e-4, transfer_s=2e-3)
    assert stats.ratio == 10 and not stats.bypassed
    vec = _stats.measurement(stats, 0.0)
    assert vec[0] == 1 and vec[6] == pytest.approx(1e-6) and vec[7] == pytest.approx(1e-6) and vec[8] == 0.1
    assert not _stats.measurement(CallStats("passthrough", "not float"), 0.0).any()
    assert CallStats("raw", "probe").bypassed


def test_a_call_without_a_communicator_is_a_type_error():
    """The first call of a process with comm=None used to fail inside the express lane's
    cache (AttributeError on NoneType) instead of naming the argument."""
    pytest.importorskip("mpi4py")
    code = """if True:
        import numpy as np, embzip.comm as ec
        x = np.ones(4, np.float32)
        for comm in (None, "abc"):
            for call in (lambda: ec.Alltoallv(comm, x, x.copy(), abs_error=0.1),
                         lambda: ec.Ialltoallv(comm, x, x.copy(), abs_error=0.1).wait()):
                try:
                    call()
                except TypeError as exc:
                    print(exc)
        """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["comm must be an mpi4py communicator, found NoneType"] * 2 + \
        ["comm must be an mpi4py communicator, found str"] * 2


def test_error_classes():
    assert issubclass(CommValueError, ValueError) and issubclass(CommTypeError, TypeError)
    for cls in (CommValueError, CommTypeError, CommDecodeError):
        assert issubclass(cls, CommError) and issubclass(cls, embzip.EmbzipError)
    local = _errors.LocalError.from_exception(BufferError("not writable"), 3)
    exc = _errors.build(local.payload(), 3)
    assert isinstance(exc, CommValueError) and exc.rank == 3 and str(exc) == "rank 3: not writable"
    crash = _errors.LocalError.from_exception(MemoryError("boom"), 1, "compressing")
    assert crash.payload() == ("comm", "rank 1 while compressing: MemoryError: boom")


# ---------------------------------------------------------------- GPU buffers


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


# ---------------------------------------------------------------- argument reuse


def _key(send, recv, **kw):
    from embzip.comm import _reuse

    args = dict(abs_error=None, rel_error=0.01, strategy="auto", bounds=None, bypass="auto", chunk_bytes=None)
    args.update(kw)
    return _reuse.key_of(send, recv, *args.values())[0]


def test_reuse_key_repeats_only_when_nothing_that_validation_reads_changed():
    send, recv = np.zeros(12, np.float32), np.zeros(12, np.float32)
    counts = [3, 3, 3, 3]
    base = _key([send, counts], [recv, counts])
    assert base is not None and base == _key([send, counts], [recv, counts])
    counts[1] = 2  # counts mutated in place
    assert _key([send, counts], [recv, counts]) != base
    counts[1] = 3
    recv.flags.writeable = False  # a receive buffer made read-only
    assert _key([send, counts], [recv, counts]) != base
    recv.flags.writeable = True
    assert _key([send, counts], [recv, np.array(counts)]) != base  # another form of the same counts
    assert _key([send.copy(), counts], [recv, counts]) != base  # another array, equal contents
    assert _key([send, counts], [recv, counts], rel_error=0.02) != base
    assert _key([send, counts], [recv, counts], bypass=1) != _key([send, counts], [recv, counts], bypass=True)
    layout = TableLayout(dim=3, bounds=[0.01])
    with_layout = _key(send, recv, bounds=layout)
    layout.bounds[0] = 0.5  # the layout is frozen, its bounds array is not
    assert _key(send, recv, bounds=layout) != with_layout


@pytest.mark.parametrize("send, bounds", [
    (b"\x00" * 16, None),  # bytes-like buffers: validated every call
    (np.zeros(4, np.float32), object()),
    ([np.zeros(4, np.float32), [1.5, 2.5]], None),  # bad counts: validation reports them
    (np.zeros(4, dtype=object), None),
])
def test_reuse_key_declines_what_it_cannot_compare(send, bounds):
    assert _key(send, np.zeros(4, np.float32), bounds=bounds) is None


def test_reuse_memo_returns_a_copy_so_a_failed_call_cannot_poison_it():
    from embzip.comm import _protocol, _reuse

    memo = _reuse.Memo()
    job = _protocol.Job()
    memo.store(("k",), [], job)
    again = memo.lookup(("k",))
    again.error = "compression failed"
    assert memo.lookup(("k",)).error is None and memo.lookup(("other",)) is None and memo.lookup(None) is None


# ---------------------------------------------------------------- receive staging


def _coverage_is_exact(counts, displs, n) -> bool:
    """Brute force: every element of [0, n) written by exactly one segment."""
    hits = np.zeros(n + int(max((d + c for c, d in zip(counts, displs)), default=0)), np.int64)
    for c, d in zip(counts, displs):
        hits[d:d + c] += 1
    return bool(np.all(hits[:n] == 1) and not hits[n:].any())


@settings(max_examples=400)  # cheap: a few hundred layouts in well under a second
@given(st.lists(st.integers(0, 6), min_size=1, max_size=6), st.randoms(use_true_random=False),
       st.integers(-2, 2), st.integers(0, 5), st.integers(0, 2))
def test_tiles_flat_matches_brute_force_coverage(counts, rnd, shift, where, extra):
    """A staged receive skips copying the GPU buffer in only when the segments tile it exactly."""
    from embzip.comm._spec import Spec

    counts = np.array(counts, np.int64)
    order = list(range(counts.size))
    rnd.shuffle(order)  # segments laid out in a shuffled rank order
    displs = np.zeros(counts.size, np.int64)
    at = 0
    for d in order:
        displs[d], at = at, at + counts[d]
    n = int(counts.sum()) + extra  # extra: a buffer longer than the segments
    if shift:  # a gap or an overlap before one segment
        target = order[where % counts.size]
        displs[target] = max(0, displs[target] + shift)
    flat = np.zeros(n, np.float32)
    spec = Spec(buf=flat, flat=flat, dtype=flat.dtype, datatype=None, counts=counts, displs=displs,
                extent=4, elem_size=4, device=False, row=0)
    assert spec.tiles_flat == _coverage_is_exact(counts, displs, n)
    padded = Spec(buf=flat, flat=flat, dtype=flat.dtype, datatype=None, counts=counts, displs=displs,
                  extent=8, elem_size=4, device=False, row=0)  # a resized type: strided elements
    assert not padded.tiles_flat


_MEASURE = st.floats(0.0, 1e9, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0, 2.0]), _MEASURE, _MEASURE, st.floats(1e-7, 10.0),
                          st.floats(0.0, 1e-2), st.floats(0.0, 1e7)), min_size=1, max_size=4),
       st.sampled_from(["raw", "passthrough"]), st.integers(0, 10**9), st.floats(0.0, 10.0), st.data())
def test_express_lane_conclusion_matches_absorb_and_measurement(ranks, mode, raw_bytes, transfer, data):
    # The express lane's one compiled step must do what the full path does with the same
    # gathered table: MAX-reduce the measurements, give absorb()'s bandwidth sample, build this
    # rank's measurement as measurement() does -- and refuse a table whose agreed part differs.
    from embzip.comm import _express, _handshake

    size, length, m = len(ranks), _handshake.row_size(len(ranks)), _handshake.MEASURED
    at_row, at_agreed, at_reduced, at_template, end = _express._layout(size, length)
    buf = np.zeros(end)
    table = buf[:at_row].reshape(size, length)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    table[:, :-m] = rng.standard_normal((size, length - m))
    for i, (code, raw, wire, seconds, latency, inv) in enumerate(ranks):
        table[i, -m:] = rng.random(m)
        table[i, -m:][[0, 2, 3, 4, 5, 12]] = code, raw, wire, seconds, latency, inv
    buf[at_agreed:at_reduced] = table[:, :-m].ravel()
    own_stats = CallStats(mode, "x", raw_bytes=raw_bytes, sent_bytes=raw_bytes, transfer_s=transfer)
    buf[at_template:end] = _stats.measurement(CallStats(mode, "x", raw_bytes=raw_bytes, sent_bytes=raw_bytes,
                                                        transfer_s=1.0), 0.0, fused=True)
    lane_costs = _costs.CostState()
    sample = _express._conclude(buf, size, length, transfer, lane_costs.vector)
    reduced = table[:, -m:].max(axis=0)
    assert np.array_equal(buf[at_reduced:at_template], reduced)
    assert np.array_equal(buf[at_row:at_agreed][-m:], _stats.measurement(own_stats, 0.0, fused=True))
    state = _costs.CostState()
    state.absorb(reduced)
    if reduced[0] == 1.0:
        assert sample == -1.0
    else:
        assert list(state.bandwidths[int(reduced[0])] if reduced[0] else []) == ([sample] if sample > 0 else [])
        # the lane recorded the sample itself: the same windows, the same estimate
        assert lane_costs.bandwidths == state.bandwidths and lane_costs.bandwidth == state.bandwidth
    j = data.draw(st.integers(0, size * (length - m) - 1))
    bits = buf.view(np.uint64)
    bits[at_agreed + j] ^= np.uint64(1) << np.uint64(data.draw(st.integers(0, 63)))
    assert _express._conclude(buf, size, length, transfer, lane_costs.vector) == -2.0


def test_native_handles_are_c_integers_of_their_width():
    # mpi4py shows MPICH's int handles sign-extended and read as unsigned; C takes an int
    from embzip.comm._native import signed_handle

    assert signed_handle(0xFFFFFFFF84000000, 32) == 0x84000000 - (1 << 32)
    assert signed_handle(0x44000000, 32) == 0x44000000
    assert signed_handle(0x4C00080B, 32) == 0x4C00080B
    assert signed_handle(0x7F0012345678, 64) == 0x7F0012345678  # a pointer handle (Open MPI, the MPI ABI)
    assert signed_handle((1 << 64) - 1, 64) == -1



@pytest.mark.parametrize("count_bytes", [8, 4])
def test_native_plan_vectors_in_the_payload_calls_width(monkeypatch, count_bytes):
    """The plan holds the four count / displacement vectors as the payload call reads them:
    8-byte MPI_Count / MPI_Aint (MPI_Alltoallv_c) or packed C ints (MPI_Alltoallv, Open MPI
    5.0); with C ints, a call whose counts or displacements do not fit takes mpi4py's lane."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'embzip[mpi]')")
    from embzip.comm import _mpi, _native

    MPI = _mpi.load()
    monkeypatch.setattr(_native, "_entries", {"large": (None, lambda handle: 0, count_bytes)})
    monkeypatch.delenv("EMBZIP_NATIVE_MPI", raising=False)

    def spec(counts, displs):
        return types.SimpleNamespace(buf=np.zeros(4, np.float32), datatype=MPI.FLOAT,
                                     counts=np.asarray(counts, np.int64), displs=np.asarray(displs, np.int64))

    comm = types.SimpleNamespace(Get_size=lambda: 3, handle=0)
    send, recv = spec([1, 2, 3], [0, 1, 3]), spec([4, 5, 6], [7, 8, 2**31 - 1])
    plan = _native.exchange(comm, send, recv, 5, None, -1, 0).plan
    want = np.array([1, 2, 3, 0, 1, 3, 4, 5, 6, 7, 8, 2**31 - 1])
    width = np.int64 if count_bytes == 8 else np.int32
    assert plan[_native._VECTORS:].view(width)[:12].tolist() == want.tolist()
    recv.displs[2] = 2**31  # beyond a C int
    got = _native.exchange(comm, send, recv, 5, None, -1, 0)
    assert (got is None) == (count_bytes == 4)
    if got is not None:
        assert got.plan[_native._VECTORS + 11] == 2**31


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


def test_poll_decodes_one_kept_chunk_at_a_time():
    """GPU chunks kept while the other thread held the codec lock are decoded one per poll, so
    that the sends in flight are driven (between polls) while a backlog is worked off; a poll
    that decoded them all at once stalled MPI for as many GPU decodes."""
    from embzip.comm._pipeline import _Pipeline

    decoded = []
    pipe = types.SimpleNamespace(MPI=None, expected=0, deferred_count=0, deferred=[(1, k, None) for k in range(3)],
                                 _decode=lambda src, k, blob: decoded.append((src, k)))
    pipe._decode_deferred = lambda wait, limit=None: _Pipeline._decode_deferred(pipe, wait, limit)
    for polls in (1, 2, 3):
        assert _Pipeline._poll(pipe) == 0  # nothing arrived
        assert decoded == [(1, k) for k in range(polls)] and pipe.deferred_count == polls
    assert not pipe.deferred
    free = []
    other = threading.Thread(target=lambda: free.append(_device.LOCK.acquire(blocking=False) and _device.LOCK.release() is None))
    other.start()
    other.join()
    assert free == [True]  # the codec lock (an RLock) was released


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


def test_pool_threads_after_shutdown_and_fork(monkeypatch):
    """Pipelined calls run on reused pool threads, named for their work while it runs. A pool
    that refuses work (as at interpreter shutdown, when a late call may still need a thread:
    the refusal made one rank fail and its peer wait forever) gives way to a thread of the
    work's own; a forked child starts without the parent's pool."""
    import concurrent.futures
    import os

    from embzip.comm import _threads

    def name_of(x):
        return threading.current_thread().name, x

    first = _threads.start("embzip-test", name_of, 1).result()
    assert first == ("embzip-test", 1)
    closed = concurrent.futures.ThreadPoolExecutor(1)
    closed.shutdown()
    monkeypatch.setattr(_threads, "_POOL", closed)
    with pytest.raises(RuntimeError):
        closed.submit(name_of, 0)
    assert _threads.start("embzip-late", name_of, 2).result(timeout=30) == ("embzip-late", 2)
    failing = _threads.start("embzip-late", lambda: 1 / 0)
    assert isinstance(failing.exception(timeout=30), ZeroDivisionError)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a fresh pool that runs work
        ok = False
        try:
            ok = _threads._POOL is None and _threads.start("embzip-child", name_of, 3).result(timeout=10)[1] == 3
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
