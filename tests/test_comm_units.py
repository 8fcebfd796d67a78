"""embzip.comm pieces that need no MPI: bounds, segment blobs, chunking, stats, errors, argument reuse,
receive staging, the pipeline's polling and threads (the cost model: test_comm_costs.py; GPU
buffers: test_comm_gpu_units.py).

The collective itself is tested under real MPI in test_comm.py.
"""

from __future__ import annotations

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
from embzip.comm import _device, _errors, _layout, _segment, _stats
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


@pytest.mark.parametrize("row, across, ok", [
    (0, 0, True), (60, 0, True), (60, 7, True), (5, 0, True), (5, 12, True),
    (5, 6, False), (5, 24, False), (120, 0, False), (15, 0, False), (12, 0, False), (30, 0, False),
    (10, 0, False), (48, 0, False), (25, 0, False), (7, 0, False)])
def test_table_layout_rows_must_fit_the_send_buffers_rows(row, across, ok):
    """12 tables x dim 5 = rows of 60 values: a buffer [batch, 60], [..., 12, 5] or [batch * 12,
    5] fits; [batch, 6, 5] or [batch, 24, 5] (6 or 24 tables given 12 bounds), [batch, 120] (24
    tables), [batch, 48], [batch, 30], [batch, 12] (cutting vectors) do not, though the counts
    are whole rows of 60."""
    layout = TableLayout(dim=5, bounds=[0.1] * 6 + [0.2] * 6)
    counts = np.array([240, 0, 480])  # whole rows of 60
    if ok:
        _layout.resolve(0.2, None, layout, 3, counts, row, across)
    else:
        shape = f"\\[\\.\\.\\., {across}, {row}\\]" if across else f"{row} values wide"
        with pytest.raises(ValueError, match=f"rows are {shape}.*12 tables x dim 5"):
            _layout.resolve(0.2, None, layout, 3, counts, row, across)
    _layout.resolve(0.2, None, TableLayout(dim=5), 3, counts, row, across)  # no bounds per table: nothing to misplace


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


@pytest.mark.parametrize("bounds", [[True, 0.1], np.array([True, False]), ["0.5"], np.array(["0.5"]), [object()]])
def test_table_layout_refuses_bools_and_strings(bounds):
    """As scalar bounds do (True was taken as 1.0, a bound of the whole range; "0.5" as 0.5);
    per-destination bound lists too."""
    with pytest.raises(TypeError, match="real numbers or None"):
        TableLayout(dim=2, bounds=bounds)
    with pytest.raises(TypeError, match="real numbers or None"):
        _layout.resolve(None, 0.01, bounds, len(bounds), np.full(len(bounds), 4))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-3, 3)), min_size=1, max_size=6),
       st.booleans())
def test_table_layout_bounds_by_list_and_by_array_agree(values, as_array):
    """The array fast path and the object path accept and refuse the same bounds: NaN or None
    is the default, anything else must be finite and > 0."""
    numbers_only = [float("nan") if v is None else v for v in values]
    given = np.array(numbers_only, dtype=np.float64) if as_array else values
    ok = all(v is None or v != v or (0 < v < float("inf")) for v in values)
    if ok:
        got = TableLayout(dim=2, bounds=given).bounds
        assert got.dtype == np.float64 and np.array_equal(got, np.array(numbers_only, np.float64), equal_nan=True)
    else:
        with pytest.raises(ValueError, match="finite and > 0"):
            TableLayout(dim=2, bounds=given)


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
    # in place: the receive buffer alone says what is sent; every in-place form is one key,
    # and it is not the key of sending that buffer from itself
    in_place = _key(None, recv, in_place=True)
    assert in_place is not None and in_place == _key("[MPI.IN_PLACE, counts]", recv, in_place=True)
    assert in_place != _key(recv, recv) and in_place != _key(send, recv)
    assert _key(None, recv) is None  # (not said to be in place: validated in full)


def test_the_loose_key_differs_where_validation_would_differ():
    """What lets the express lane move onto new arrays (``_reuse.loosen``): equal for other
    arrays of one layout, different wherever the full path could judge otherwise (found by
    review: a TableLayout look-alike, a struct dtype spelt like V1, a bool bound like 1)."""
    import types

    from embzip.comm import _reuse

    def loose(send, recv, **kw):
        return _reuse.loosen(_key(send, recv, **kw))

    send, recv = np.zeros(12, np.float32), np.zeros(12, np.float32)
    base = loose([send, [6, 6]], [recv, [6, 6]], bounds=TableLayout(dim=3))
    assert base == loose([send.copy(), [6, 6]], [np.ones(12, np.float32), [6, 6]], bounds=TableLayout(dim=3))
    assert base != loose([send, [6, 6]], [recv, [6, 6]], bounds=types.SimpleNamespace(dim=3, bounds=None))
    assert base != loose([send, [6, 6]], [recv, [6, 6]], bounds=TableLayout(dim=2))
    assert base != loose([send, [6, 6]], [recv[::-1].copy().reshape(3, 4), [6, 6]], bounds=TableLayout(dim=3))
    assert base != loose([send, [6, 6]], [recv.astype(">f4"), [6, 6]], bounds=TableLayout(dim=3))
    v1, struct = np.zeros(4, "V1"), np.zeros(4, [("a", "u1")])
    assert v1.dtype.str == struct.dtype.str and loose(v1, recv) != loose(struct, recv)
    longs, long_longs = np.zeros(4, "l"), np.zeros(4, "q")
    assert longs.dtype == long_longs.dtype and loose(longs, recv) != loose(long_longs, recv)
    assert _key(send, recv, rel_error=None, abs_error=1) != _key(send, recv, rel_error=None, abs_error=True)
    assert _key(send, recv, bounds=1.0) != _key(send, recv, bounds=True) != _key(send, recv, bounds=1)
    assert _key(send, recv, bounds=[1, None]) != _key(send, recv, bounds=[True, None])


@pytest.mark.parametrize("dtype", ["?", "b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "f", "d", "F", "D", "e", "g",
                                   "V3", "S3", "U2", "M8[s]", ">f4", ">f8", [("a", "f4"), ("b", "u1")]])
def test_reuse_address_is_where_the_array_interface_says(dtype):
    """The keys and the express lane read a contiguous array's address by MPI.Get_address (a
    fifth of __array_interface__'s time): the same number for views, reversed and
    strided ones, 0-d, empty and read-only arrays, and for the dtypes numba cannot take."""
    from embzip.comm._reuse import address

    base = np.zeros((4, 6, 5), dtype)
    views = [base, base[1:, ::2, 3], base[::-1, :, ::-2], base[2, 3, 1:2].reshape(()), base[:0], base.T,
             np.zeros((), dtype), np.zeros((1,) * 9, dtype)]
    for view in views:
        for writeable in (True, False):
            view = view.view()
            view.flags.writeable = writeable
            assert address(view) == view.__array_interface__["data"][0]


@pytest.mark.parametrize("dtype", ["f", "e", "M8[s]"])
def test_reuse_address_is_ndarrays_own_for_a_subclass(dtype):
    """A subclass may say another address in its __array_interface__: the key (whose address
    the express lane hands MPI) takes the array's real one (found by review: MPI wrote into the
    array the subclass named); a masked array still gets a key (found by review, when a compiled
    call read the address)."""
    from embzip.comm import _reuse

    victim = np.zeros(8, dtype)

    class Liar(np.ndarray):
        @property
        def __array_interface__(self):
            return dict(self.view(np.ndarray).__array_interface__, data=(victim.ctypes.data, False))

    liar = np.ones(8, dtype).view(Liar)
    assert liar.__array_interface__["data"][0] == victim.ctypes.data
    assert _reuse.address(liar) == liar.view(np.ndarray).__array_interface__["data"][0] != victim.ctypes.data
    strided = liar[::2]
    assert _reuse.address(strided) == strided.view(np.ndarray).__array_interface__["data"][0] != victim.ctypes.data

    class DLPackLiar(np.ndarray):  # (what MPI.Get_address reads first)
        def __dlpack__(self, *args, **kwargs):
            return victim.__dlpack__(*args, **kwargs)

    other = np.ones(8, dtype).view(DLPackLiar)
    assert _reuse.address(other) == other.view(np.ndarray).__array_interface__["data"][0] != victim.ctypes.data
    masked = np.ma.masked_array(np.zeros(8, dtype), mask=[0, 1] * 4)
    assert _reuse.address(masked) == masked.view(np.ndarray).__array_interface__["data"][0]
    assert _key(masked, np.zeros(8, dtype)) is not None


def test_reuse_keys_compare_without_raising_whatever_the_count_types():
    """A numpy integer count sat in the key as itself: compared with another call's count list
    (a tuple there) it broadcast, and the memo's lookup raised ValueError on that rank alone,
    while the others waited in the handshake (found by review)."""
    import enum

    from embzip.comm import _reuse

    class Count(enum.IntEnum):
        TWELVE = 12

    send, recv = np.zeros(12, np.float32), np.zeros(12, np.float32)
    forms = [[12], (12,), np.array([12]), 12, np.int64(12), np.int32(12), Count.TWELVE, None]
    keys = [_key([send, c], [recv, c]) for c in forms] + [_key([send.copy(), c], [recv.copy(), c]) for c in forms]
    for a in keys:
        for b in keys:
            assert isinstance(a == b, bool) and isinstance(_reuse.loosen(a) != _reuse.loosen(b), bool)
    scalar = _key([send, np.int64(12)], [recv, np.int64(12)])
    assert scalar == _key([send, 12], [recv, 12]) != _key([send, [12]], [recv, [12]])


def test_reuse_key_pins_the_buffers_the_lane_rebinds_onto():
    """The key's second part names which objects a call passes (each buffer's id and address,
    then a TableLayout's id); the first, what they are. The express lane compares the first and
    hands MPI the addresses of the second: they must be the call's own buffers', in every
    specification form, and only they may differ between two arrays of one layout."""
    from embzip.comm import _reuse

    send, recv = np.arange(12, dtype=np.float32), np.zeros((3, 4), np.float32)
    other_send, other_recv = send.copy(), recv.copy()
    layout = TableLayout(dim=2)
    forms = [lambda b: b, lambda b: [b, [3, 3, 3, 3]], lambda b: (b, ([3] * 4, [0, 3, 6, 9])),
             lambda b: [b, [3] * 4, [0, 3, 6, 9], "f"]]
    for form in forms:
        key = _key(form(send), form(recv), bounds=layout)
        assert _reuse.addresses(key) == (send.__array_interface__["data"][0], recv.__array_interface__["data"][0])
        assert key[1] == (id(send), _reuse.addresses(key)[0], id(recv), _reuse.addresses(key)[1], id(layout))
        again = _key(form(other_send), form(other_recv), bounds=TableLayout(dim=2))
        assert again != key and _reuse.loosen(again) == _reuse.loosen(key)
        assert _reuse.addresses(again) == (other_send.ctypes.data, other_recv.ctypes.data)
    assert _key(None, recv, in_place=True)[1] == (id(recv), recv.ctypes.data)


def test_shallow_copy_is_copy_copy_of_a_dataclass():
    from embzip.comm import _protocol, _spec

    job = _protocol.Job(send=object(), kind=2, strategy="fast", units=np.arange(3))
    again = _spec.shallow_copy(job)
    assert type(again) is _protocol.Job and again == job and again is not job and again.units is job.units
    again.kind = 1
    assert job.kind == 2


@pytest.mark.parametrize("send, bounds", [
    (b"\x00" * 16, None),  # bytes-like buffers: validated every call
    (np.zeros(4, np.float32), object()),
    ([np.zeros(4, np.float32), [1.5, 2.5]], None),  # bad counts: validation reports them
    (np.zeros(4, dtype=object), None),
])
def test_reuse_key_declines_what_it_cannot_compare(send, bounds):
    assert _key(send, np.zeros(4, np.float32), bounds=bounds) is None


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 6).flatmap(lambda p: st.tuples(
    st.just(p), st.lists(st.integers(0, 3), min_size=p * p, max_size=p * p), st.sampled_from([1, 2, 4, 8]))))
def test_a_table_shows_an_empty_segment_when_some_rank_has_one(case):
    """What every rank reads from the gathered table (``memo.sequenced``: no rank fuses next
    time) must be what some rank judges of its own arguments: a rank pair with 0 elements in
    either direction, while 0 to itself is none."""
    from embzip.comm._collective import has_empty_segment
    from embzip.comm._handshake import _V0, row_size, shows_empty_segment

    size, flat, elem = case
    counts = np.array(flat, np.int64).reshape(size, size)  # [source, destination], agreed on both sides
    table = np.zeros((size, row_size(size)))
    per_peer = table[:, _V0:_V0 + 6 * size].reshape(size, 6, size)
    jobs = []
    for r in range(size):
        send = types.SimpleNamespace(counts=counts[r], elem_size=elem)
        recv = types.SimpleNamespace(counts=counts[:, r], elem_size=elem)
        jobs.append(types.SimpleNamespace(send=send, recv=recv))
        per_peer[r, 0], per_peer[r, 1] = counts[r], counts[r] * elem
        per_peer[r, 2], per_peer[r, 3] = counts[:, r], counts[:, r] * elem
    assert np.shares_memory(per_peer, table)
    some_rank = any(has_empty_segment(job, r) for r, job in enumerate(jobs))
    assert shows_empty_segment(table, size) == some_rank
    off_diagonal = counts[~np.eye(size, dtype=bool)]
    assert some_rank == bool((off_diagonal == 0).any())


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


def test_interrupts_are_held_inside_a_call_and_a_second_one_escapes():
    """embzip/comm/_interrupts.py: SIGINT inside a call is raised when the call ends; a second
    SIGINT inside the same call raises at once and leaves the counters at rest even when the
    calls' leave() never runs (Python may run the handler at the start of leave: found by
    review); outside calls, SIGINT does what Python's default does; a handler reset to the
    default is replaced again. (The MPI case: tests/mpi/worker_calls.py, interrupt_is_held.)"""
    import os
    import signal
    import time

    from embzip.comm import _interrupts

    def interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # (Python runs the handler at the next bytecode of the main thread)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert _interrupts._state == [0, 0]
        outer = _interrupts.enter()
        assert outer == 0 and signal.getsignal(signal.SIGINT) is _interrupts._handler
        inner = _interrupts.enter()  # (the Comm wrapper's call inside embzip.comm.Alltoallv's)
        interrupt()  # held
        _interrupts.leave(inner)  # not the outermost call: still held
        with pytest.raises(KeyboardInterrupt):
            _interrupts.leave(outer)
        assert _interrupts._state == [0, 0]
        outer = _interrupts.enter()
        inner = _interrupts.enter()
        interrupt()
        with pytest.raises(KeyboardInterrupt):  # the second: at once
            interrupt()
        assert _interrupts._state == [0, 0]  # at rest though neither leave has run yet
        _interrupts.leave(inner)  # the unwinding calls' leaves: nothing more is raised
        _interrupts.leave(outer)
        assert _interrupts._state == [0, 0]
        with pytest.raises(KeyboardInterrupt):  # outside a call: Python's default
            interrupt()
        out = []  # another thread's call does not hold the main thread's interrupts
        thread = threading.Thread(target=lambda: out.append(_interrupts.enter()))
        thread.start()
        thread.join()
        assert out == [None] and _interrupts._state == [0, 0]
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a reset (a host's, say): replaced again
        _interrupts.leave(_interrupts.enter())
        assert signal.getsignal(signal.SIGINT) is _interrupts._handler
        signal.signal(signal.SIGINT, own := (lambda *args: None))  # the program's own handler: left alone
        _interrupts.leave(_interrupts.enter())
        assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, previous)
        _interrupts._state[:] = [0, 0]
