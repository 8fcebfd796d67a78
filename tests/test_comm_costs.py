"""embzip.comm's cost model and its express lane, without MPI: decisions, bandwidth
windows, the lane's compiled bookkeeping and its native plan.

The collective itself is tested under real MPI in test_comm.py.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embzip.comm import CallStats
from embzip.comm import _costs, _stats


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


_MEASURE = st.floats(0.0, 1e9, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0, 2.0]), _MEASURE, _MEASURE, st.floats(1e-7, 10.0),
                          st.floats(0.0, 1e-2), st.floats(0.0, 1e7)), min_size=1, max_size=4),
       st.sampled_from(["raw", "passthrough"]), st.integers(0, 10**9), st.floats(0.0, 10.0), st.booleans(),
       st.data())
def test_express_lane_conclusion_matches_absorb_and_measurement(ranks, mode, raw_bytes, transfer, fused, data):
    # The express lane's one compiled step must do what the full path does with the same
    # gathered table: MAX-reduce the measurements, give absorb()'s bandwidth sample, build this
    # rank's measurement as measurement() does (the inverse transfer only for a bandwidth
    # sample: a fused call, or one in place on every rank) -- and refuse a table whose agreed
    # part differs (_agreed says so before a sequenced lane sends anything).
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
    assert _express._agreed(buf, size, length)
    sample = _express._conclude(buf, size, length, transfer, lane_costs.vector, fused)
    reduced = table[:, -m:].max(axis=0)
    assert np.array_equal(buf[at_reduced:at_template], reduced)
    assert np.array_equal(buf[at_row:at_agreed][-m:], _stats.measurement(own_stats, 0.0, fused=fused))
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
    assert not _express._agreed(buf, size, length)
    assert _express._conclude(buf, size, length, transfer, lane_costs.vector, fused) == -2.0


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


def test_native_plan_of_a_sequenced_lane_in_place(monkeypatch):
    """A lane in place sends from MPI_IN_PLACE's address (as mpi4py passes MPI.IN_PLACE: MPICH's
    (void *) -1), not the send Spec's copy; the order and sample flags are the plan's."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'embzip[mpi]')")
    from embzip.comm import _mpi, _native

    MPI = _mpi.load()
    monkeypatch.setattr(_native, "_entries", {"large": (None, lambda handle: 0, 8)})
    monkeypatch.delenv("EMBZIP_NATIVE_MPI", raising=False)
    spec = types.SimpleNamespace(buf=np.zeros(4, np.float32), datatype=MPI.FLOAT,
                                 counts=np.array([2, 2], np.int64), displs=np.array([0, 2], np.int64))
    comm = types.SimpleNamespace(Get_size=lambda: 2, handle=0)
    fused = _native.exchange(comm, spec, spec, 5, None, -1, 0).plan
    assert fused[_native._SEND] == spec.buf.ctypes.data and fused[_native._SEQUENCED] == 0 and fused[_native._SAMPLE]
    placed = _native.exchange(comm, spec, spec, 5, None, -1, 0, in_place=True, sequenced=True, sample=False).plan
    assert placed[_native._SEND] == MPI.Get_address(MPI.IN_PLACE) != spec.buf.ctypes.data
    assert placed[_native._SEQUENCED] == 1 and placed[_native._SAMPLE] == 0
    if MPI.Get_library_version().startswith("MPICH"):
        assert placed[_native._SEND] == -1
