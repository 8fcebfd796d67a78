"""Memory shared between segments, and in-place exchanges (``MPI.IN_PLACE``), in one process:
the parsing and the checks. The exchanges run under mpiexec in tests/mpi/worker_forms.py
(``in_place``, ``in_place_raw``) and tests/mpi/worker_errors.py (``error_aliased_buffers``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embzip.comm import _overlap

P = 3  # ranks the specs are parsed for


@pytest.fixture(scope="module")
def MPI():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'embzip[mpi]')")
    from embzip.comm import _mpi

    return _mpi.load()


def prepare(send, recv, MPI):
    from embzip.comm import _protocol

    return _protocol.prepare(send, recv, 1e-3, None, "fast", None, "auto", P, 0, MPI)


def refused(job) -> str:
    assert job.error is not None, "expected the arguments to be refused"
    return job.error.message


_SPANS = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 6)), max_size=6)


@settings(max_examples=600)
@given(_SPANS, _SPANS)
def test_first_clash_finds_a_shared_point_exactly_when_one_exists(a, b):
    def spans(pairs):
        starts = np.array([s for s, _ in pairs], np.int64)
        return starts, starts + np.array([n for _, n in pairs], np.int64)

    (a0, a1), (b0, b1) = spans(a), spans(b)
    share = [(i, j) for i in range(len(a)) for j in range(len(b)) if max(a0[i], b0[j]) < min(a1[i], b1[j])]
    got = _overlap.first_clash(a0, a1, b0, b1)
    if share:
        assert got is not None, (a, b)
        i, j = got
        assert (i, j) in share, f"{got} do not share a point: {a[i]} {b[j]}"
    else:
        assert got is None, (a, b, got)


@settings(max_examples=400)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 12)), min_size=1, max_size=6))
def test_overlapping_receive_segments_are_refused_exactly_when_they_share_an_element(segments):
    counts = np.array([c for c, _ in segments], np.int64)
    displs = np.array([d for _, d in segments], np.int64)
    hits = np.zeros(int((counts + displs).max()) + 1, np.int64)
    for c, d in segments:
        hits[d:d + c] += 1
    if hits.max() > 1:
        with pytest.raises(ValueError, match="overlap; MPI forbids overlapping receive segments"):
            _overlap.check_receive_disjoint(counts, displs, "recvbuf")
    else:
        _overlap.check_receive_disjoint(counts, displs, "recvbuf")


def test_send_and_receive_segments_that_share_memory_are_refused(MPI):
    x = np.arange(4 * P, dtype=np.float32)
    assert "sendbuf and recvbuf share memory" in refused(prepare(x, x, MPI))
    assert "pass MPI.IN_PLACE (or None) as sendbuf" in refused(prepare(x, x, MPI))
    # views of one array, shifted by one element: the segments for rank 2 and from rank 1 meet
    buf = np.zeros(4 * P + 1, np.float32)
    message = refused(prepare(buf[1:], buf[:-1], MPI))
    assert "share memory" in message
    # a bytes-like receive buffer over the send array's memory
    raw = np.zeros(4 * P, np.float32)
    assert "share memory" in refused(prepare(raw, [memoryview(raw).cast("B"), MPI.FLOAT], MPI))
    # the last element sent to rank 2 is the first received from rank 0
    buf = np.zeros(8 * P, np.float32)
    assert "sent to rank 2 overlaps the one received from rank 0" in \
        refused(prepare([buf, [4] * P, [0, 4, 8], MPI.FLOAT], [buf, [4] * P, [11, 15, 19], MPI.FLOAT], MPI))


def test_one_buffer_whose_send_and_receive_segments_do_not_touch_is_accepted(MPI):
    """MPI forbids passing one buffer twice, but MPI libraries accept it when the segments do
    not meet, and a drop-in must keep such programs working."""
    buf = np.zeros(8 * P, np.float32)
    job = prepare([buf, [4] * P, [0, 4, 8], MPI.FLOAT], [buf, [4] * P, [12, 16, 20], MPI.FLOAT], MPI)
    assert job.error is None, job.error.message
    zeros = [buf, [0] * P, [0, 4, 8], MPI.FLOAT]  # empty segments share nothing
    assert prepare(zeros, [buf, [0] * P, [0, 4, 8], MPI.FLOAT], MPI).error is None
    two = np.zeros(4 * P, np.float32)
    assert prepare(two, np.zeros_like(two), MPI).error is None


def test_derived_datatypes_are_compared_by_the_span_of_each_segment(MPI):
    """Strided segments of one buffer count as overlapping when their spans meet, even if
    their elements interleave (MPI forbids the aliasing; embzip does not look byte by byte)."""
    every_other = MPI.FLOAT.Create_vector(2, 1, 2).Create_resized(0, 16)
    every_other.Commit()
    try:
        buf = np.zeros(4 * P * 2 + 1, np.float32)
        send = [buf, [1] * P, [0, 1, 2], every_other]  # elements 0, 2 | 4, 6 | 8, 10
        clash = [buf[1:], [1] * P, [0, 1, 2], every_other]  # 1, 3 | 5, 7 | 9, 11: inside the spans
        assert "share memory" in refused(prepare(send, clash, MPI))
        apart = [buf, [1] * P, [3, 4, 5], every_other]  # from element 12 on
        assert prepare(send, apart, MPI).error is None
    finally:
        every_other.Free()


@pytest.mark.parametrize("form", ["None", "IN_PLACE", "[IN_PLACE, counts]"])
def test_in_place_sends_a_copy_of_the_receive_buffer_taken_when_needed(MPI, form):
    """The copy's memory is allocated by prepare (so that failing to allocate it is an agreed
    error); it is written only when the call cannot hand MPI the buffer with MPI_IN_PLACE."""
    sendbuf = {"None": None, "IN_PLACE": MPI.IN_PLACE, "[IN_PLACE, counts]": [MPI.IN_PLACE, 99]}[form]
    recv = np.arange(6 * P * 5, dtype=np.float32).reshape(-1, 5)
    counts, displs = [10, 0, 20], [20, 0, 0]
    job = prepare(sendbuf, [recv, (counts, displs), MPI.FLOAT], MPI)
    assert job.error is None, job.error.message
    s, r = job.send, job.recv
    assert s.counts.tolist() == counts and s.displs.tolist() == displs and s.kind == r.kind == 1
    assert s.row == r.row == 5 and s.datatype == MPI.FLOAT
    assert job.fill_send is not None and not np.shares_memory(s.flat, recv)
    job.take_snapshot()
    assert job.fill_send is None and np.array_equal(s.flat, recv.reshape(-1))
    recv[:] = -1  # what the call receives lands here; what it sends was taken before
    assert s.flat[0] == 0.0 and s.flat[-1] == recv.size - 1


def test_in_place_keeps_the_memory_order_and_bytes_declared_as_floats(MPI):
    fortran = np.asfortranarray(np.arange(P * 8, dtype=np.float64).reshape(P * 2, 4))
    job = prepare(MPI.IN_PLACE, fortran, MPI)
    job.take_snapshot()
    assert job.error is None and np.array_equal(job.send.flat, fortran.ravel(order="K"))
    raw = bytearray(np.arange(4 * P, dtype=np.float32).tobytes())
    job = prepare(None, [raw, MPI.FLOAT], MPI)
    job.take_snapshot()
    assert job.error is None and job.send.kind == 1
    assert np.array_equal(job.send.flat, np.arange(4 * P, dtype=np.float32))


def test_in_place_reports_the_receive_buffers_problems(MPI):
    readonly = np.zeros(4 * P, np.float32)
    readonly.flags.writeable = False
    assert "recvbuf is read-only" in refused(prepare(MPI.IN_PLACE, readonly, MPI))
    assert "recvbuf" in refused(prepare(None, [np.zeros(4 * P, np.float32), [5] * P], MPI))


def test_a_segment_that_starts_before_its_buffer_is_refused(MPI):
    """A datatype with a negative lower bound reaches back before the displacement: MPI wrote
    before the receive buffer (only the ends of segments were checked)."""
    back = MPI.INT.Create_hindexed([1], [-4]).Commit()  # one int, 4 bytes before the element
    try:
        buf = np.zeros(4 * P, np.int32)
        message = refused(prepare(np.zeros(P, np.int32), [buf[1:], ([1] * P, [0, 1, 2]), back], MPI))
        assert "rank 0 (displs 0, counts 1) starts at byte -4, before the buffer" in message
        job = prepare(np.zeros(P, np.int32), [buf, ([1] * P, [1, 2, 3]), back], MPI)
        assert job.error is None, job.error.message
    finally:
        back.Free()
