"""MPI test worker: ``mpiexec -n K python tests/mpi/worker.py CASE [CASE ...]``.

Every rank runs the named cases in order and prints ``PASS <case> <rank>`` or
``FAIL <case> <rank>: <reason>``; the exit code is 1 if any case failed on this rank.
tests/test_comm.py launches it with 1, 2, 3 and 4 ranks under a timeout (a hang is a failure).
Cases must work at any rank count. Checks of what must raise live in worker_errors.py.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a source checkout

from mpi4py import MPI  # noqa: E402

import embzip.comm as ec  # noqa: E402
from worker_errors import KNOWN_MPI, NATIVE_LANES  # noqa: E402  (same directory)

COMM = MPI.COMM_WORLD
P, ME = COMM.Get_size(), COMM.Get_rank()
CASES = {}
# Float types the compressing cases cover. Each one costs every rank seconds of numba
# compilation, so the launcher may narrow it for the launches with the most ranks.
DTYPES = [np.dtype(name).type for name in os.environ.get("EMBZIP_TEST_DTYPES", "float32,float64").split(",")]
PAIRWISE = os.environ.get("EMBZIP_TEST_PAIRWISE") == "1"
if PAIRWISE:  # the handshake used above 64 ranks, at this rank count
    from embzip.comm import _handshake

    _handshake.GATHER_MAX = 0


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


class OnlyDLPack:
    """A buffer that offers DLPack and nothing else (a CPU torch tensor's case; mpi4py takes it)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


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
def bypass_and_stats():
    """Forced raw is exact; auto calibrates (compressed, then raw), then decides alike everywhere."""
    send = payload(64 * P, np.float32, 8)
    ref = reference(send, lambda: np.zeros_like(send))
    got = np.zeros_like(send)
    stats = ec.Alltoallv(COMM, send, got, abs_error=1e-3, bypass=True)
    assert np.array_equal(got, ref) and stats.bypassed and stats.sent_bytes == stats.raw_bytes
    fresh = COMM.Dup()  # a new communicator: a fresh cost model
    modes = []
    for _ in range(6):
        stats = ec.Alltoallv(fresh, send, got, abs_error=1e-3, strategy="fast")
        assert_close(got, ref, 1e-3, "auto bypass")
        modes.append((stats.mode, stats.reason))
    if P > 1:  # (with one rank there is no remote data to measure: the model stays in calibration)
        # a call decides before its handshake folds in the previous call's measurements: two of each
        assert modes[:4] == [("compressed", "calibration")] * 2 + [("raw", "calibration")] * 2, modes
        assert all(reason == "cost model" for _, reason in modes[4:]), modes
    everyone = COMM.allgather(modes)
    assert all(m == modes for m in everyone), f"ranks disagree on the bypass: {everyone}"
    assert ec.last_stats(fresh) is stats and stats.total_s > 0 and stats.handshake_s > 0
    if P > 1:
        assert set(stats.model) >= {"bandwidth_Bps", "ratio", "compress_Bps", "decompress_Bps", "pays"}
    fresh.Free()


@case
def express_lane():
    """Repeats of an uncompressed call take the express lane (see embzip/comm/_express.py):
    exact results while the buffers' contents change, the same statistics as the full path,
    and back to the full path when an argument changes. Both lanes: one compiled call on MPI's
    C API (embzip/comm/_native.py: MPICH's large-count call, Open MPI's int one, and the int
    one on MPICH with EMBZIP_NATIVE_MPI=int), and mpi4py's calls (EMBZIP_NATIVE_MPI=0)."""
    from embzip.comm import _express, _mpi, _native

    counts = uneven_counts(21, scale=9)
    sc, rc = counts[ME], counts[:, ME]
    lanes = {"calls": 0}
    real = _express.try_call

    def counting(*args):
        got = real(*args)
        lanes["calls"] += got is not None
        return got

    _express.try_call = counting
    try:
        for native in NATIVE_LANES:
            os.environ["EMBZIP_NATIVE_MPI"] = native
            fresh = COMM.Dup()
            for dtype, kwargs in ((np.float32, dict(abs_error=1e-3, bypass=True)), (np.int32, dict(rel_error=0.1))):
                send, got = np.zeros(int(sc.sum()), dtype), np.zeros(int(rc.sum()), dtype)
                before = lanes["calls"]
                for step in range(4):
                    send[:] = payload(send.size, np.float64, 30 + step) * 100  # new contents, same buffer
                    ref = reference([send, sc], lambda: [np.zeros(int(rc.sum()), dtype), rc])
                    stats = ec.Alltoallv(fresh, [send, sc], [got, rc], **kwargs)
                    assert np.array_equal(got, ref), f"{dtype.__name__} step {step}: not exact"
                    assert stats.sent_bytes == stats.raw_bytes == int((sc.sum() - sc[ME]) * send.itemsize)
                    assert stats.recv_bytes == int((rc.sum() - rc[ME]) * send.itemsize)
                    assert stats.mode == ("raw" if dtype is np.float32 else "passthrough") and stats.total_s > 0
                    assert stats.reason == ("forced" if dtype is np.float32 else "not float")
                used = lanes["calls"] - before
                # the first call opens the lane, the other three take it; the pairwise handshake
                # (above 64 ranks) never fuses, so it has no lane
                expected = 0 if PAIRWISE else 3
                assert used == expected, f"{dtype.__name__}: {used} calls took the express lane, expected {expected}"
                lane = _mpi.peek_state(fresh).memo.lane
                assert (lane is None) == PAIRWISE
                if lane is not None:  # MPICH and Open MPI: the compiled lane resolves MPI's C functions
                    assert (lane.native is not None) == (native != "0" and KNOWN_MPI)
                if lane is not None and lane.native is not None:  # the payload call asked for
                    large = MPI.Get_library_version().startswith("MPICH") and native == "1"
                    assert _native._entries["large" if native == "1" else "int"][2] == (8 if large else 4)
            # another bound: a new key, the full path, a new lane
            before = lanes["calls"]
            send, got = payload(int(sc.sum()), np.float32, 40), np.zeros(int(rc.sum()), np.float32)
            for _ in range(2):
                ec.Alltoallv(fresh, [send, sc], [got, rc], abs_error=2e-3, bypass=True)
            assert lanes["calls"] - before == (0 if PAIRWISE else 1)
            moved_buffers(fresh)
            fresh.Free()
    finally:
        _express.try_call = real
        os.environ.pop("EMBZIP_NATIVE_MPI", None)


def moved_buffers(comm):
    """One array object whose memory moved between two calls (resize(refcheck=False) to the
    same shape, new strides): a repeat keyed on identity alone wrote into freed memory, and
    sent the old elements. Both take the full path now: received, and refused (strided)."""
    import warnings

    n = 64 * P
    send = payload(n, np.float32, 45)
    ref = reference(send, lambda: np.zeros(n, np.float32))
    for bypass in (True, False):
        recv = np.zeros(n, np.float32)
        for _ in range(2):  # a new key, then its repeat (the lane)
            ec.Alltoallv(comm, send, recv, abs_error=1e-3, bypass=bypass)
        recv.resize(64 * n, refcheck=False)  # (embzip keeps a reference: refcheck would refuse)
        recv.resize(n, refcheck=False)
        recv[:] = -1.0
        ec.Alltoallv(comm, send, recv, abs_error=1e-3, bypass=bypass)
        assert_close(recv, ref, 1e-3, f"after the receive buffer moved (bypass={bypass})")
    base = np.concatenate([send, send])
    view = base[:n]
    ec.Alltoallv(comm, view, recv, abs_error=1e-3, bypass=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (numpy deprecates assigning strides)
        view.strides = (8,)
    try:
        ec.Alltoallv(comm, view, recv, abs_error=1e-3, bypass=True)
    except ec.CommValueError as exc:
        assert "non-contiguous" in str(exc), exc
    else:
        raise AssertionError("a buffer made strided after a call was sent as before")


@case
def express_lane_decisions():
    """On the lane the cost model decides inside the compiled call: every call's reason and
    model are what CostState.decide gives for the state before it, the schedule advances as
    commit() would, a probe (compress) leaves the lane for the full path, and every rank
    decides alike. The bandwidth is pinned high (the same on every rank) so that raw wins."""
    from embzip.comm import _mpi

    if P == 1 or PAIRWISE:
        return  # one rank sends nobody anything: nothing is measured; the pairwise handshake has no lane
    send = payload(64 * P, np.float32, 60)
    got = np.zeros_like(send)
    for native in NATIVE_LANES:
        os.environ["EMBZIP_NATIVE_MPI"] = native
        fresh = COMM.Dup()
        try:
            modes, reasons = [], []
            for step in range(24):
                state = _mpi.peek_state(fresh)
                if state is not None:
                    for _ in range(3):  # most of the window: the median stays at 1e15
                        state.costs.add_bandwidth(2, 1e15)
                    expected = state.costs.decide("auto", "fast")
                    schedule = {**state.costs.schedule, **expected.next}
                stats = ec.Alltoallv(fresh, send, got, rel_error=0.01, strategy="fast")
                modes.append(stats.mode)
                reasons.append(stats.reason)
                if state is not None and step >= 4:  # (past the calibration calls)
                    assert (stats.mode, stats.reason, stats.model) == (expected.mode, expected.reason,
                                                                       expected.model), (step, stats, expected.model)
                    assert state.costs.schedule == schedule, (step, state.costs.schedule, schedule)
            lane = _mpi.peek_state(fresh).memo.lane
            assert lane is not None and (lane.native is not None) == (native != "0" and KNOWN_MPI), \
                "the lane under test is not open"
            probes = [i for i, reason in enumerate(reasons) if reason == "probe"]
            assert probes and all(modes[i] == "compressed" for i in probes), (reasons, modes)
            assert modes[4:].count("raw") >= 18, modes
            assert len({tuple(m) for m in COMM.allgather(reasons)}) == 1
        finally:
            fresh.Free()
            os.environ.pop("EMBZIP_NATIVE_MPI", None)


@case
def streamed_exchange():
    """On a slow link (the cost model says compression pays) a blocking compressed call streams:
    segment by segment, each sent as it is compressed and decoded as it arrives (see
    _pipeline.exchange_segments). Results within the bound of plain Alltoallv, for uneven
    counts with zeros; the bandwidth is pinned low (alike on every rank) to make the link slow."""
    from embzip.comm import _mpi

    counts = uneven_counts(71, scale=110)  # segments big enough to compress (frames of a few rows expand)
    sc, rc = counts[ME], counts[:, ME]
    fresh = COMM.Dup()
    try:
        for step in range(4):
            send = payload(int(sc.sum()) * 10, np.float32, 80 + step).reshape(-1, 10)
            ref = reference([send, sc * 10], lambda: [np.zeros((int(rc.sum()), 10), np.float32), rc * 10])
            got = np.zeros((int(rc.sum()), 10), np.float32)
            state = _mpi.peek_state(fresh)
            if state is not None:
                for _ in range(5):  # the whole window: 1 B/s
                    state.costs.add_bandwidth(2, 1.0)
            stats = ec.Alltoallv(fresh, [send, sc * 10], [got, rc * 10], abs_error=1e-3, strategy="fast",
                                 bypass=False)
            assert_close(got, ref, 1e-3 * (1 + 1e-6), f"streamed step {step}")
            assert stats.mode == "compressed"
            measured = P > 1 and step >= 2  # (the codec is measured by then)
            assert stats.overlapped == measured and bool(stats.model.get("pays")) == measured, (step, stats)
    finally:
        fresh.Free()


@case
def skew_is_not_bandwidth():
    """A rank that arrives late makes the others wait inside the call; for the cost model that
    wait is not transfer time (else a fast link reads slow and compression wins wrongly)."""
    from embzip.comm import _mpi

    send = payload(256 * P, np.float32, 50)
    got = np.zeros_like(send)
    fresh = COMM.Dup()
    ec.Alltoallv(fresh, send, np.zeros_like(send), abs_error=1e-3, bypass=True)  # embzip's Dup: collective
    for step in range(4):  # new arguments (the full path), then their repeats (the express lane)
        fresh.Barrier()
        if ME == 0 and step < 3:
            time.sleep(0.3)
        ec.Alltoallv(fresh, send, got, abs_error=1e-3, bypass=True)
    bandwidths = list(_mpi.peek_state(fresh).costs.bandwidths[2])  # the last call absorbed the others
    wire = 256 * 4 * (P - 1)  # bytes each rank sends to the others
    if P > 1:
        assert len(bandwidths) == 4, bandwidths
        assert min(bandwidths) > wire / 0.1, f"a late rank's 0.3 s counted as transfer: {bandwidths} B/s"
    fresh.Free()


@case
def auto_strategy():
    """strategy='auto' calibrates both encoders on the first call; results stay within the bound."""
    send = payload(300 * P, np.float32, 9).reshape(-1, 10)
    ref = reference(send, lambda: np.zeros_like(send))
    got = np.zeros_like(send)
    fresh = COMM.Dup()
    for _ in range(3):
        stats = ec.Alltoallv(fresh, send, got, rel_error=0.01, bypass=False)
        assert stats.strategy in ("fast", "compact")
        assert_close(got, ref, 0.01 * 6 * 3 * 2, "auto strategy")
    assert len(fresh.Get_attr(ec._mpi._KEYVAL).costs.codec) == (2 if P > 1 else 0)
    fresh.Free()


@case
def pipelined():
    """Ialltoallv: chunks, uneven counts with zeros, tables, test(), bypass and pass-through."""
    counts = uneven_counts(10, scale=60)
    sc, rc = counts[ME], counts[:, ME]
    for dtype in DTYPES:
        send = payload(int(sc.sum()), dtype, 11)
        ref = reference([send, sc], lambda: [np.zeros(int(rc.sum()), dtype), rc])
        got = np.zeros(int(rc.sum()), dtype)
        req = ec.Ialltoallv(COMM, [send, sc], [got, rc], abs_error=1e-3, strategy="fast", bypass=False,
                            chunk_bytes=256)
        busy = np.ones(1000).sum()  # work while the chunks fly
        while not req.test():
            pass
        stats = req.wait()
        assert busy == 1000 and stats.mode == "compressed"
        assert_close(got, ref, 1e-3, f"pipelined {dtype.__name__}")
    rows = np.random.default_rng(ME).normal(size=(P * 12, 3 * 4)).astype(np.float32)
    ref = reference(rows, lambda: np.zeros_like(rows))
    got = np.zeros_like(rows)
    layout = ec.TableLayout(dim=4, bounds=[1e-3, 1e-1, 1e-2])
    ec.Ialltoallv(COMM, rows, got, abs_error=1e-3, bounds=layout, strategy="fast", bypass=False,
                  chunk_bytes=100).wait()
    for t, b in enumerate([1e-3, 1e-1, 1e-2]):
        assert_close(got[:, 4 * t:4 * t + 4], ref[:, 4 * t:4 * t + 4], b, f"pipelined table {t}")
    req = ec.Ialltoallv(COMM, rows, got, abs_error=1e-3, bypass=True)
    while not req.Test():  # mpi4py's spellings: Test() / Wait() -> True, the stats on the request
        pass
    assert req.Wait() is True and req.stats.bypassed and np.array_equal(got, ref)
    ints = np.arange(5 * P, dtype=np.int64) + ME
    iref = reference(ints, lambda: np.zeros_like(ints))
    igot = np.zeros_like(ints)
    assert ec.Ialltoallv(COMM, ints, igot).wait().mode == "passthrough" and np.array_equal(igot, iref)
    # a later call on the communicator completes the earlier request first
    first = ec.Ialltoallv(COMM, rows, got, abs_error=1e-3, strategy="fast", bypass=False, chunk_bytes=100)
    ec.Alltoallv(COMM, ints, igot)
    assert first.test() and first.stats is not None
    assert_close(got, ref, 1e-3, "completed by the next call")
    threads_are_reused(rows, got, ref)


@case
def ialltoallv_returns_before_the_others_start():
    """As MPI's Ialltoallv, embzip's returns before the other ranks have called it: rank 0
    starts the exchange, then sends each rank the message it waits for before starting its
    own. It hung: the handshake (and, on a new communicator, its duplication) blocked."""
    rows = payload(P * 40, np.float32, 95).reshape(-1, 10)
    ref = reference(rows, lambda: np.zeros_like(rows))
    token = np.zeros(1)
    for first_call, bypass in ((True, False), (False, False), (False, True)):
        comm = COMM.Dup() if first_call else COMM
        got = np.zeros_like(rows)
        if ME == 0:
            req = ec.Ialltoallv(comm, rows, got, abs_error=1e-3, strategy="fast", bypass=bypass, chunk_bytes=400)
            for d in range(1, P):
                COMM.Send(token, dest=d, tag=95)
        else:
            COMM.Recv(token, source=0, tag=95)
            req = ec.Ialltoallv(comm, rows, got, abs_error=1e-3, strategy="fast", bypass=bypass, chunk_bytes=400)
        assert req.Wait() is True and req.stats.bypassed == bypass
        assert_close(got, ref, 0.0 if bypass else 1e-3, f"started in turn (first call {first_call}, bypass {bypass})")
        if first_call:
            comm.Free()


def threads_are_reused(rows, got, ref):
    """A loop of pipelined calls reuses the same few threads: with MPICH, every thread started
    leaves ~290 bytes behind, and a thread pair per call grew a long training run by ~0.6 GB."""
    import threading

    started = []
    real_start = threading.Thread.start

    def counting_start(self):
        started.append(self.name)
        return real_start(self)

    threading.Thread.start = counting_start
    try:
        for k in range(20):
            ec.Ialltoallv(COMM, rows, got, abs_error=1e-3, strategy="fast", bypass=False, chunk_bytes=100).wait()
            assert_close(got, ref, 1e-3, f"pipelined call {k}")
    finally:
        threading.Thread.start = real_start
    assert len(started) <= 2, started  # (none when the earlier calls left the pool's threads idle)


@case
def forget_releases_buffers():
    """embzip keeps the last call's buffers alive (for cheap repeats), as documented;
    embzip.comm.forget lets go of them, and the next call still works."""
    import gc
    import weakref

    comm = COMM.Dup()
    send = np.arange(4 * P, dtype=np.float32) + ME
    ref = reference(send, lambda: np.zeros_like(send))
    recv = np.zeros_like(send)
    for bypass in (True, False, True):  # the full path, then a repeat (the express lane)
        ec.Alltoallv(comm, send, recv, abs_error=1e-3, bypass=bypass)
    kept = [weakref.ref(send), weakref.ref(recv)]
    del send, recv
    gc.collect()
    assert all(r() is not None for r in kept), "the last call's buffers were not kept"
    ec.forget(comm)
    gc.collect()
    assert all(r() is None for r in kept), "forget did not let go of the buffers"
    ec.forget(MPI.COMM_SELF)  # (a communicator embzip never saw: nothing to do)
    recv = np.zeros_like(ref)
    ec.Alltoallv(comm, np.arange(4 * P, dtype=np.float32) + ME, recv, abs_error=1e-3, bypass=True)
    assert np.array_equal(recv, ref)
    comm.Free()


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
    finally:
        fresh.Free()


@case
def comm_wrapper():
    """embzip.comm.Comm: compressed Alltoallv, mpi4py's other methods, defaults kept by Dup,
    Split, Split_type, Create and Create_group (mpi4py's own return a plain Intracomm)."""
    wrapped = ec.Comm(COMM, abs_error=1e-3, strategy="fast", bypass=False)
    assert isinstance(wrapped, MPI.Intracomm) and wrapped.Get_size() == P
    send = payload(16 * P, np.float32, 12)
    ref = reference(send, lambda: np.zeros_like(send))
    got = np.zeros_like(send)
    stats = wrapped.Alltoallv(send, got)
    assert_close(got, ref, 1e-3, "wrapper")
    assert stats.mode == "compressed" and wrapped.stats is stats
    assert wrapped.allreduce(ME) == P * (P - 1) // 2
    wrapped.Barrier()
    dup = wrapped.Dup()
    assert type(dup) is type(wrapped) and dup._embzip["abs_error"] == 1e-3
    dup.Alltoallv(send, got, abs_error=1e-2)  # per-call override
    assert_close(got, ref, 1e-2, "override")
    dup.Ialltoallv(send, got).wait()
    assert_close(got, ref, 1e-3, "wrapper Ialltoallv")
    dup.Free()
    derived = {"Split": wrapped.Split(0, ME), "Split_type": wrapped.Split_type(MPI.COMM_TYPE_SHARED),
               "Create": wrapped.Create(wrapped.Get_group()), "Create_group": wrapped.Create_group(wrapped.Get_group())}
    for name, sub in derived.items():  # every derived communicator is a Comm with the same defaults
        assert type(sub) is type(wrapped) and sub._embzip == wrapped._embzip, name
        stats = sub.Alltoallv(send[:16 * sub.size], got[:16 * sub.size])
        assert stats.mode == "compressed", (name, stats)
        sub.Free()
    assert wrapped.Split(MPI.UNDEFINED, ME) == MPI.COMM_NULL  # no communicator: nothing to wrap


@case
def subclasses_and_freed_comm():
    """ndarray subclasses are buffers as for mpi4py (a matrix stays 2-D when reshaped: it once
    made segment slices of rows and a decode wrote past the buffer), and a communicator freed
    while a pipelined call is in flight still completes the call (MPI allows it)."""
    send = np.asmatrix(payload(8 * P, np.float32, 21).reshape(P, 8))
    ref = reference(send.view(np.ndarray), lambda: np.zeros((P, 8), np.float32))
    for kwargs in (dict(rel_error=1e-3), dict(abs_error=1e-3, strategy="fast", bypass=False), dict(abs_error=1e-3, bypass=True)):
        got = np.asmatrix(np.zeros((P, 8), np.float32))
        ec.Alltoallv(COMM, send, got, **kwargs)
        widest = COMM.allreduce(float(np.ptp(np.asarray(send))), op=MPI.MAX)  # a frame's range is at most its sender's
        bound = 1e-3 * widest * 1.0001 if "rel_error" in kwargs else 1e-3
        assert_close(np.asarray(got), ref, bound if kwargs.get("bypass") is not True else 0.0, f"matrix {kwargs}")
    masked = np.ma.masked_array(np.zeros(8 * P, np.float32), mask=np.zeros(8 * P, bool))
    ec.Alltoallv(COMM, np.asarray(send).reshape(-1), masked, abs_error=1e-3, strategy="fast", bypass=False)
    assert_close(masked.data, ref.reshape(-1), 1e-3, "masked receive buffer")

    big = payload(4096 * P, np.float32, 22)
    expected = reference(big, lambda: np.zeros_like(big))
    for bypass in (False, True):
        got = np.zeros_like(big)
        dup = COMM.Dup()
        request = ec.Ialltoallv(dup, big, got, abs_error=1e-3, bypass=bypass, chunk_bytes=4096)
        dup.Free()
        assert request.wait().mode == ("raw" if bypass else "compressed")
        assert_close(got, expected, 0.0 if bypass else 1e-3, f"freed while in flight, bypass={bypass}")
    for bypass in (False, True):  # freed while the duplication of a first call waits for a late rank
        got = np.zeros_like(big)
        dup = COMM.Dup()
        if ME == P - 1:
            time.sleep(0.5)
        request = ec.Ialltoallv(dup, big, got, abs_error=1e-3, bypass=bypass, chunk_bytes=4096)
        if ME == 0:
            time.sleep(0.1)  # (its call's thread now waits for the late rank's Idup)
        dup.Free()  # (MPICH: it hung when the delete callback waited; Open MPI: it crashed when it did not)
        assert request.wait().mode == ("raw" if bypass else "compressed")
        assert_close(got, expected, 0.0 if bypass else 1e-3, f"freed while a late rank duplicates, bypass={bypass}")


def main(names):
    # ranks share one stdout, where mpiexec may interleave their lines: each rank also writes
    # its results to its own file when EMBZIP_MPI_RESULTS names a directory
    folder = os.environ.get("EMBZIP_MPI_RESULTS")
    sink = open(os.path.join(folder, f"rank{ME}.txt"), "w") if folder else None
    failed = 0
    for name in names:
        start = time.perf_counter()
        try:
            CASES[name]()
            line = f"PASS {name} {ME} {time.perf_counter() - start:.2f}s"
        except Exception:
            failed += 1
            line = f"FAIL {name} {ME}: " + traceback.format_exc().strip().replace("\n", " | ")
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    from worker_errors import CASES as ERROR_CASES  # noqa: E402  (same directory)

    CASES.update(ERROR_CASES)
    sys.exit(main(sys.argv[1:] or list(CASES)))
