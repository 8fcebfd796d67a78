"""MPI worker cases: what calls embzip.comm accepts and what they deliver (every buffer-spec
form, mpi4py's corners, pass-through data, bounds, in place), against plain mpi4py.

Run through worker.py (see there).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

import embzip.comm as ec
from worker_common import (  # (same directory)
    COMM, DTYPES, ME, P, PAIRWISE, assert_close, case, payload, reference, uneven_counts)


class OnlyDLPack:
    """A buffer that offers DLPack and nothing else (a CPU torch tensor's case; mpi4py takes it)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


@case
def spec_forms():
    """Every mpi4py buffer-spec form, both dtypes, uneven counts with zeros, vs plain Alltoallv."""
    counts = uneven_counts(1)
    sc, rc = counts[ME], counts[:, ME]
    for dtype in DTYPES:
        code = np.dtype(dtype).char
        mpitype = MPI.FLOAT if dtype == np.float32 else MPI.DOUBLE
        send = payload(int(sc.sum()) + 5, dtype, 2)
        sdispls = np.concatenate([[0], np.cumsum(sc)[:-1]]).astype(np.int64)
        rgap = 3  # receive displacements leave gaps that must stay untouched
        rdispls = (np.concatenate([[0], np.cumsum(rc)[:-1]]) + rgap * np.arange(P)).astype(np.int64)
        rsize = int(rc.sum()) + rgap * P + 2
        forms = [
            ("[buf, counts]", [send, sc], lambda b: [b, rc]),
            ("[buf, (counts, displs)]", [send, (sc, sdispls)], lambda b: [b, (rc, rdispls)]),
            ("[buf, counts, TYPE]", [send, sc, mpitype], lambda b: [b, rc, mpitype]),
            ("[buf, (counts, displs), TYPE]", [send, (sc, sdispls), code], lambda b: [b, (rc, rdispls), code]),
            ("[buf, counts, displs, TYPE]", [send, sc, sdispls, mpitype], lambda b: [b, rc, rdispls, mpitype]),
            ("[buf, counts, None, TYPE]", [send, list(sc), None, mpitype], lambda b: [b, list(rc), None, mpitype]),
        ]
        for name, smsg, rbuild in forms:
            ref = reference(smsg, lambda: rbuild(np.full(rsize, -7, dtype)))
            got = np.full(rsize, -7, dtype)
            stats = ec.Alltoallv(COMM, smsg, rbuild(got), abs_error=1e-3, strategy="fast", bypass=False)
            assert_close(got, ref, 1e-3, f"{name} {dtype.__name__}")
            assert np.array_equal(got[ref == -7], ref[ref == -7]), f"{name}: gaps were overwritten"
            assert stats.mode == "compressed" and stats.raw_bytes == (sc.sum() - sc[ME]) * send.itemsize
        # equal-split forms: plain buf, [buf, TYPE], int counts, int (strided) displacements
        n = 24 * P
        send = payload(n, dtype, 3)
        for name, smsg, rmsg in (
            ("buf", send, None), ("[buf, TYPE]", [send, mpitype], mpitype), ("[buf, int counts]", [send, 24], 24),
            ("[buf, None, None, TYPE]", [send, None, None, mpitype], mpitype),
        ):
            def rb(buf, rmsg=rmsg, name=name):
                return buf if rmsg is None else ([buf, None, None, rmsg] if "None" in name else [buf, rmsg])
            ref = reference(smsg, lambda: rb(np.zeros(n, dtype)))
            got = np.zeros(n, dtype)
            ec.Alltoallv(COMM, smsg, rb(got), abs_error=1e-3, strategy="fast", bypass=False)
            assert_close(got, ref, 1e-3, f"{name} {dtype.__name__}")
        strided = [send, 5, 24, mpitype]  # 5 elements per rank, every 24th: int displs is a stride
        ref = reference(strided, lambda: [np.zeros(n, dtype), 5, 24, mpitype])
        got = np.zeros(n, dtype)
        ec.Alltoallv(COMM, strided, [got, 5, 24, mpitype], abs_error=1e-3, strategy="fast", bypass=False)
        assert_close(got, ref, 1e-3, f"strided {dtype.__name__}")
    # bytes-like buffers declared as floats, and 2-D arrays (rows deduplicated)
    raw = bytearray(payload(8 * P, np.float32, 4).tobytes())
    out = bytearray(4 * 8 * P)
    ref = reference([raw, MPI.FLOAT], lambda: [bytearray(4 * 8 * P), MPI.FLOAT])
    ec.Alltoallv(COMM, [raw, MPI.FLOAT], [out, MPI.FLOAT], abs_error=1e-3, strategy="fast", bypass=False)
    assert_close(np.frombuffer(out, np.float32), np.frombuffer(ref, np.float32), 1e-3, "bytearray")
    rows = np.repeat(payload(40 * P, np.float32, 5).reshape(-1, 10), 3, axis=0)
    ref = reference(rows, lambda: np.zeros_like(rows))
    got = np.zeros_like(rows)
    ec.Alltoallv(COMM, rows, got, abs_error=1e-3, strategy="fast", bypass=False)
    assert_close(got, ref, 1e-3, "2-D rows")
    mpi4py_corners()


def mpi4py_corners():
    """Calls mpi4py runs that embzip once refused or got wrong (found by an adversarial
    review): counts inferred unevenly, a 0-d array as a displacement stride, DLPack-only
    buffers, and ranks that receive nothing passing [None, 0, TYPE]; vs plain Alltoallv."""
    for bypass in (False, True):
        send = payload(5 * P + P - 1, np.float32, 6)  # mpi4py sends 6 to the first P - 1 ranks, 5 to the last
        rsize = 6 if ME < P - 1 else 5
        ref = reference(send, lambda: np.zeros(P * rsize, np.float32))
        got = np.zeros(P * rsize, np.float32)
        ec.Alltoallv(COMM, send, got, abs_error=1e-3, strategy="fast", bypass=bypass)
        assert_close(got, ref, 0 if bypass else 1e-3, f"uneven inferred counts, bypass={bypass}")
        strided = [payload(2 * P, np.float32, 7), (2, np.array(2))]
        ref = reference(strided, lambda: np.zeros(2 * P, np.float32))
        got = np.zeros(2 * P, np.float32)
        ec.Alltoallv(COMM, strided, got, abs_error=1e-3, strategy="fast", bypass=bypass)
        assert_close(got, ref, 0 if bypass else 1e-3, f"0-d stride, bypass={bypass}")
        send = payload(8 * P, np.float64, 8)
        ref = reference(send, lambda: np.zeros(8 * P))
        got = np.zeros(8 * P)
        ec.Alltoallv(COMM, OnlyDLPack(send), OnlyDLPack(got), abs_error=1e-3, strategy="fast", bypass=bypass)
        assert_close(got, ref, 0 if bypass else 1e-3, f"DLPack buffers, bypass={bypass}")
        gather = [payload(2, np.float32, 9), ([2] + [0] * (P - 1), 0), MPI.FLOAT]  # everyone to rank 0
        rbuf = np.zeros(2 * P, np.float32)
        into = (lambda b: [b, 2, MPI.FLOAT]) if ME == 0 else (lambda b: [None, 0, MPI.FLOAT])
        ref = reference(gather, lambda: into(np.zeros(2 * P, np.float32)))
        ec.Alltoallv(COMM, gather, into(rbuf), abs_error=1e-3, strategy="fast", bypass=bypass)
        if ME == 0:
            assert_close(rbuf, ref, 0 if bypass else 1e-3, f"gather with [None, 0, TYPE], bypass={bypass}")


@case
def unremembered_calls():
    """Uncompressed calls the argument memo does not keep (bytes-like buffers), one after
    another with other types and counts: each must be checked and sent as itself. (The
    handshake once reused a row keyed on the id of a freed Spec when a new Spec took that id;
    whether CPython reuses the address is luck, so tests/test_comm_memo.py checks the rule.)"""
    calls = []
    for step in range(24):  # made first: back to back, each call's Spec tends to take the last one's address
        dtype, code = ((np.float32, "f"), (np.float64, "d"), (np.int32, "i"))[step % 3]
        per = 1 + step % 5
        send = bytearray(payload(per * P, dtype, 60 + step).tobytes())
        ref = reference([send, code], lambda: [bytearray(per * P * np.dtype(dtype).itemsize), code])
        calls.append(([send, code], [bytearray(len(ref)), code], ref))
    for step, (smsg, rmsg, ref) in enumerate(calls):
        stats = ec.Alltoallv(COMM, smsg, rmsg, abs_error=1e-3, bypass=True)
        assert rmsg[0] == ref and stats.mode in ("raw", "passthrough"), (step, stats)


@case
def spec_parsing():
    """The parser alone (every rank): normalization of each form, and its error messages."""
    from embzip.comm import _spec

    def parse(msg, writable=False):
        return _spec.parse(msg, P, writable, "sendbuf", MPI)

    x = np.zeros(6 * P, np.float32)
    x.flags.writeable = False  # a read-only send buffer is fine
    plain = parse(x)
    assert plain.counts.tolist() == [6] * P and plain.displs.tolist() == [6 * i for i in range(P)]
    assert plain.kind == 1 and plain.datatype == MPI.FLOAT and plain.elem_size == 4
    assert parse([x, 2, 3, "f"]).displs.tolist() == [3 * i for i in range(P)]  # an int displacement is a stride
    assert parse([x, ([1] * P, None), MPI.FLOAT]).displs.tolist() == list(range(P))
    assert parse([np.zeros(2 * P), "d"]).kind == 2 and parse([np.zeros(P, np.int32), MPI.INT]).kind == 0
    raw = parse([bytearray(8 * P), MPI.FLOAT])
    assert raw.kind == 1 and raw.flat.dtype == np.float32 and raw.counts.tolist() == [2] * P
    fortran = parse(np.asfortranarray(np.arange(4.0 * P).reshape(2 * P, 2)))
    assert fortran.row == 0 and fortran.flat.flags.c_contiguous
    assert parse(np.zeros((3 * P, 5), np.float32)).row == 5
    # as mpi4py: counts inferred unevenly (the first total % P ranks one more), a 0-d integer
    # array is an integer (a displacement stride), no buffer where nothing moves
    uneven = parse(np.zeros(6 * P + P - 1, np.float32))
    assert uneven.counts.tolist() == [7] * (P - 1) + [6] and uneven.displs.tolist() == [7 * i for i in range(P)]
    assert parse([x, 2, np.array(3), "f"]).displs.tolist() == [3 * i for i in range(P)]
    assert parse([x, np.array(2)]).counts.tolist() == [2] * P
    for nothing in ([None, 0, MPI.FLOAT], [MPI.BOTTOM, [0] * P, [5] * P, "f"]):
        empty = parse(nothing)
        assert empty.kind == 1 and not empty.counts.any() and empty.flat.size == 0
    dlpack = parse(OnlyDLPack(np.arange(2.0 * P)))
    assert dlpack.kind == 2 and dlpack.flat.tolist() == list(range(2 * P))
    for msg, error, text in [
        ([x, [1] * P, [0] * P], TypeError, "third item"),
        ([x, 1, 2, 3, 4], TypeError, "2 to 4 items"),
        ([x, [1] * (P + 1)], ValueError, f"one entry per rank ({P})"),
        ([x, [1.5] * P], TypeError, "must be integers"),
        ([x, [7] * P], ValueError, "beyond the buffer"),
        ([x, True], TypeError, "bool"),
        ([x, 1, None, "not-a-code"], TypeError, "typecode"),
        (np.zeros(0, "V3"), (ValueError, TypeError), ""),
        ("text", TypeError, "must be a buffer"),
        ([x, [2 ** 62] * P], ValueError, "rank 0 (counts 4611686018427387904) ends beyond the buffer's"),
        ([x, np.full(P, 2 ** 63 + 1, np.uint64)], ValueError, "is 9223372036854775809: beyond any buffer"),
        (np.zeros(P, [("a", "f4"), ("b", "i4")]), TypeError, "no predefined MPI datatype matches"),
        ([None, [1] * P, MPI.FLOAT], TypeError, "None or MPI.BOTTOM only with all counts 0"),
        ([MPI.BOTTOM, [1] * P, list(range(P)), MPI.FLOAT], TypeError, "(absolute addresses) with counts"),
    ]:
        try:
            parse(msg)
        except error as exc:
            assert text in str(exc), f"{text!r} not in {exc}"
        else:
            raise AssertionError(f"{msg!r} parsed")
    try:
        parse(np.zeros(4 * P, np.float32)[::2], writable=True)
    except ValueError as exc:
        assert "non-contiguous" in str(exc)
    else:
        raise AssertionError("a strided receive buffer parsed")


@case
def passthrough():
    """Non-float types go through unchanged (exactly), in every spec form that carries them."""
    counts = uneven_counts(6, scale=5)
    sc, rc = counts[ME], counts[:, ME]
    for dtype in (np.int32, np.uint8, np.complex64, np.float16):
        send = (np.arange(int(sc.sum())) * (ME + 1)).astype(dtype)
        ref = reference([send, sc], lambda: [np.zeros(int(rc.sum()), dtype), rc])
        got = np.zeros(int(rc.sum()), dtype)
        stats = ec.Alltoallv(COMM, [send, sc], [got, rc], rel_error=0.5)
        assert np.array_equal(got, ref), f"{dtype.__name__} changed in transit"
        assert stats.mode == "passthrough" and not stats.bypassed
    derived = MPI.DOUBLE.Create_contiguous(2).Commit()
    send = payload(4 * P, np.float64, 7)
    ref = reference([send, [1] * P, None, derived], lambda: [np.zeros(4 * P), [1] * P, None, derived])
    got = np.zeros(4 * P)
    stats = ec.Alltoallv(COMM, [send, [1] * P, None, derived], [got, [1] * P, None, derived], abs_error=0.1)
    assert np.array_equal(got, ref) and stats.mode == "passthrough", "derived datatype must pass through"
    derived.Free()


@case
def bounds_rel_and_tables():
    """rel is per frame; one bound per destination; per-table bounds (1-D and per destination)."""
    rows, tables, dim = 8, 4, 6
    width = tables * dim
    rng = np.random.default_rng(ME)
    send = (rng.normal(size=(P * rows, width)) * np.array([1, 10, 100, 0.1]).repeat(dim)).astype(np.float32)
    ref = reference(send, lambda: np.zeros_like(send))
    got = np.zeros_like(send)
    ec.Alltoallv(COMM, send, got, rel_error=0.01, strategy="fast", bypass=False)
    # the receiver holds the exact values too (ref): each source's segment range sets its bound
    for src in range(P):
        seg_ref, seg_got = ref[src * rows:(src + 1) * rows], got[src * rows:(src + 1) * rows]
        assert_close(seg_got, seg_ref, 0.01 * float(seg_ref.max() - seg_ref.min()), f"rel from {src}")
    per_dest = [1e-3 * (d + 1) for d in range(P)]
    ec.Alltoallv(COMM, send, got, abs_error=1.0, bounds=per_dest, strategy="fast", bypass=False)
    for src in range(P):  # rank src compressed my segment with per_dest[ME]
        assert_close(got[src * rows:(src + 1) * rows], ref[src * rows:(src + 1) * rows], per_dest[ME], "per dest")
    table_bounds = [1e-4, 1e-2, 1.0, None]
    layout = ec.TableLayout(dim=dim, bounds=table_bounds)
    ec.Alltoallv(COMM, send, got, abs_error=1e-3, bounds=layout, strategy="fast", bypass=False)
    for t, b in enumerate([1e-4, 1e-2, 1.0, 1e-3]):
        assert_close(got[:, t * dim:(t + 1) * dim], ref[:, t * dim:(t + 1) * dim], b, f"table {t}")
    grid = np.array([[1e-3 * (d + 1)] * tables for d in range(P)])
    grid[:, 2] = 0.5
    ec.Alltoallv(COMM, send, got, abs_error=1e-3, bounds=ec.TableLayout(dim=dim, bounds=grid), strategy="fast",
                 bypass=False)
    for t in range(tables):
        assert_close(got[:, t * dim:(t + 1) * dim], ref[:, t * dim:(t + 1) * dim], grid[ME, t], f"grid table {t}")
    ec.Alltoallv(COMM, send, got, rel_error=0.01, bounds=ec.TableLayout(dim=dim), strategy="fast", bypass=False)
    for src in range(P):
        seg_ref = ref[src * rows:(src + 1) * rows]
        assert_close(got[src * rows:(src + 1) * rows], seg_ref, 0.01 * float(seg_ref.max() - seg_ref.min()), "rows")


@case
def in_place():
    """MPI.IN_PLACE, None or [MPI.IN_PLACE, ...] as sendbuf: recvbuf's contents are sent and
    replaced by what arrives, within the bound of mpi4py's in-place Alltoallv (raw: exactly),
    gaps untouched; uneven counts with zeros, blocking (raw, compressed, streamed), pipelined,
    and the Comm wrapper. In place on rank 0 alone works too (MPI wants it on every rank; embzip
    sends a copy, so it does not mind)."""
    from embzip.comm import _mpi

    counts = uneven_counts(91, scale=160)  # segments that compress (frames of a few elements expand)
    counts = counts + counts.T  # in place, a rank's receive counts are its send counts
    rc = counts[ME]
    rdispls = (np.concatenate([[0], np.cumsum(rc)[:-1]]) + 3 * np.arange(P)).astype(np.int64)  # gaps of 3
    size = int(rc.sum()) + 3 * P + 2
    fresh, slow = COMM.Dup(), COMM.Dup()  # slow: a link of 1 B/s on every rank alike, where calls stream
    overlapped = []
    try:
        for dtype in DTYPES:
            mpitype = MPI.FLOAT if dtype == np.float32 else MPI.DOUBLE
            for form in (None, MPI.IN_PLACE, [MPI.IN_PLACE, 7]):
                for how in ("raw", "compressed", "streamed", "pipelined"):
                    start = payload(size, dtype, 92)
                    ref = start.copy()
                    COMM.Alltoallv(MPI.IN_PLACE, [ref, rc, rdispls, mpitype])
                    got = start.copy()
                    rmsg = [got, rc, rdispls, mpitype]
                    if how == "pipelined":
                        stats = ec.Ialltoallv(fresh, form, rmsg, abs_error=1e-3, strategy="fast", bypass=False,
                                              chunk_bytes=256).wait()
                    else:
                        comm = slow if how == "streamed" else fresh
                        state = _mpi.peek_state(comm)
                        if how == "streamed" and state is not None:
                            for _ in range(5):
                                state.costs.add_bandwidth(2, 1.0)
                        stats = ec.Alltoallv(comm, form, rmsg, abs_error=1e-3, strategy="fast", bypass=how == "raw")
                        if how == "streamed":
                            overlapped.append((stats.overlapped, stats.model))
                    what = f"in place {form!r} {how} {dtype.__name__}"
                    if how == "raw":
                        assert stats.mode == "raw" and np.array_equal(got, ref), what
                    else:
                        assert stats.mode == "compressed", (what, stats)
                        assert_close(got, ref, 1e-3, what)
                    gaps = np.ones(size, bool)
                    for d in range(P):
                        gaps[rdispls[d]:rdispls[d] + rc[d]] = False
                    assert np.array_equal(got[gaps], start[gaps]), f"{what}: gaps were overwritten"
        assert P == 1 or any(o for o, _ in overlapped), overlapped  # (streams once the codec is measured)
        send = payload(size, np.float32, 93)  # rank 0 in place, the others from a send buffer
        ref = np.zeros(size, np.float32)
        COMM.Alltoallv([send, rc, rdispls, MPI.FLOAT], [ref, rc, rdispls, MPI.FLOAT])
        got = send.copy()
        smsg = MPI.IN_PLACE if ME == 0 else [send, rc, rdispls, MPI.FLOAT]
        ec.Alltoallv(fresh, smsg, [got, rc, rdispls, MPI.FLOAT], abs_error=1e-3, strategy="fast", bypass=False)
        gaps = np.ones(size, bool)
        for d in range(P):
            gaps[rdispls[d]:rdispls[d] + rc[d]] = False
        assert_close(got[~gaps], ref[~gaps], 1e-3, "in place on rank 0 alone")
        wrapped = ec.Comm(fresh, abs_error=1e-3, strategy="fast", bypass=False)
        rows = payload(12 * P, np.float32, 94).reshape(-1, 4)
        ref = rows.copy()
        COMM.Alltoallv(MPI.IN_PLACE, ref)
        assert wrapped.Alltoallv(MPI.IN_PLACE, rows).mode == "compressed"
        assert_close(rows, ref, 1e-3, "in place through the Comm wrapper")
    finally:
        fresh.Free()
        slow.Free()


@case
def in_place_raw():
    """Uncompressed calls in place (float bypassed, int32 passed through), blocking and
    Ialltoallv: with every rank in place the buffer goes to MPI's own in-place Alltoallv, with
    no copy (stats.in_place "mpi"; above GATHER_MAX ranks, which the pairwise launch emulates,
    the in-place flags are not gathered and a copy is sent); with some ranks in place and some
    not, the in-place ones send a copy. Both equal mpi4py's in-place Alltoallv, gaps untouched."""
    counts = uneven_counts(95, scale=700)
    counts = counts + counts.T  # in place, a rank's receive counts are its send counts
    rc = counts[ME]
    rdispls = (np.concatenate([[0], np.cumsum(rc)[:-1]]) + 3 * np.arange(P)).astype(np.int64)  # gaps of 3
    size = int(rc.sum()) + 3 * P + 2
    fresh = COMM.Dup()
    try:
        for dtype, mpitype, kwargs in ((np.float32, MPI.FLOAT, dict(rel_error=0.01, bypass=True)),
                                       (np.int32, MPI.INT, dict(abs_error=1.0))):
            for call in ("Alltoallv", "Ialltoallv"):
                for mixed in (False, True):
                    start = payload(size, np.float32, 96).view(np.int32 if dtype == np.int32 else np.float32)
                    ref = start.copy()
                    COMM.Alltoallv(MPI.IN_PLACE, [ref, rc, rdispls, mpitype])  # mpi4py's own
                    got = start.copy()
                    in_place = not mixed or ME == 0  # mixed: rank 0 in place, the others send a buffer
                    smsg = MPI.IN_PLACE if in_place else [start.copy(), rc, rdispls, mpitype]
                    rmsg = [got, rc, rdispls, mpitype]
                    stats = ec.Alltoallv(fresh, smsg, rmsg, **kwargs) if call == "Alltoallv" else \
                        ec.Ialltoallv(fresh, smsg, rmsg, **kwargs).wait()
                    what = f"{call} {dtype.__name__} {'mixed' if mixed else 'every rank'} in place"
                    assert stats.mode == ("raw" if dtype == np.float32 else "passthrough"), (what, stats)
                    assert np.array_equal(got.view(np.uint8), ref.view(np.uint8)), what
                    native = not PAIRWISE and (not mixed or P == 1)  # (one rank: rank 0 is every rank)
                    expected = None if not in_place else "mpi" if native else "copy"
                    assert stats.in_place == expected, (what, stats.in_place, expected)
        # repeats with the same arguments reuse their validation (the argument memo keeps the
        # copy's memory): each call still sends what the buffer holds at that call, whichever
        # way the previous call went (compressed, raw with or without MPI_IN_PLACE)
        got = np.zeros(size, np.float32)
        rmsg = [got, rc, rdispls, MPI.FLOAT]
        for step, (mixed, bypass) in enumerate([(False, True), (False, True), (False, False), (True, True),
                                                 (False, True), (True, False), (True, True)]):
            start = payload(size, np.float32, 200 + step)
            got[:] = start
            ref = start.copy()
            COMM.Alltoallv(MPI.IN_PLACE, [ref, rc, rdispls, MPI.FLOAT])
            smsg = [start.copy(), rc, rdispls, MPI.FLOAT] if mixed and ME != 0 else MPI.IN_PLACE
            stats = ec.Alltoallv(fresh, smsg, rmsg, abs_error=1e-3, strategy="fast", bypass=bypass)
            what = f"repeat {step}: {'mixed' if mixed else 'every rank'} in place, bypass={bypass}"
            if bypass:
                assert np.array_equal(got, ref), what
            else:
                assert_close(got, ref, 1e-3, what)
    finally:
        fresh.Free()
