"""MPI error cases: whatever goes wrong on one rank, every rank raises the same error; nobody hangs.

Each case makes one rank (or a pair) misbehave, checks that every rank raised the expected
exception with a message naming the rank and the numbers, that all ranks got the same
message, and that the communicator still works afterwards.
"""

from __future__ import annotations

import types

import numpy as np
from mpi4py import MPI

import embzip
import embzip.comm as ec
from embzip.comm import _segment

from worker_common import COMM, KNOWN_MPI, LAST, ME, NATIVE_LANES, P, case  # (same directory)


def expect(call, exc_type, *fragments):
    """``call()`` must raise ``exc_type`` on this rank with every fragment in the message, and
    every rank must raise the same message; then a good call must still work."""
    try:
        call()
    except exc_type as exc:
        message = str(exc)
    else:
        raise AssertionError(f"expected {exc_type.__name__}, nothing was raised")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    everyone = COMM.allgather(message)
    assert len(set(everyone)) == 1, f"ranks raised different messages: {everyone}"
    healthy()
    return message


def healthy():
    send = np.arange(4 * P, dtype=np.float32) + ME
    got = np.zeros_like(send)
    ec.Alltoallv(COMM, send, got, abs_error=1e-3, strategy="fast", bypass=False)
    ref = np.zeros_like(send)
    COMM.Alltoallv(send, ref)
    assert np.abs(got - ref).max() <= 1e-3


def good_buffers(n=6):
    send = np.arange(n * P, dtype=np.float32) * (ME + 1)
    return send, np.zeros(n * P, dtype=np.float32)


@case
def error_mismatched_counts():
    send, recv = good_buffers()
    rc = [6] * P
    if ME == LAST:
        rc[0] = 5  # expects one element fewer from rank 0 than rank 0 sends
    for fn in (ec.Alltoallv, lambda *a, **k: ec.Ialltoallv(*a, **k).wait()):
        expect(lambda: fn(COMM, [send, [6] * P], [recv, rc], abs_error=1e-3), ec.CommValueError,
               f"rank 0 sends 6 elements (24 bytes) to rank {LAST}", "expects 5 elements")
    assert issubclass(ec.CommValueError, ValueError) and issubclass(ec.CommValueError, embzip.EmbzipError)


@case
def error_recv_buffers():
    send, recv = good_buffers()
    strided = np.zeros(12 * P, dtype=np.float32)[::2] if ME == 0 else recv
    msg = expect(lambda: ec.Alltoallv(COMM, send, strided, abs_error=1e-3), ValueError, "rank 0", "non-contiguous")
    readonly = np.zeros_like(recv)
    readonly.flags.writeable = ME != LAST
    expect(lambda: ec.Alltoallv(COMM, send, readonly, abs_error=1e-3), ec.CommValueError, f"rank {LAST}", "read-only")
    if P > 1:  # two receive segments sharing elements on one rank (MPI forbids it; plain MPI would not say)
        overlapping = [6 * d for d in range(P)]
        if ME == LAST:
            overlapping[1] = 3
        expect(lambda: ec.Alltoallv(COMM, send, [recv, [6] * P, overlapping, MPI.FLOAT], abs_error=1e-3),
               ec.CommValueError, f"rank {LAST}", "segments for ranks 0 (elements 0..5) and 1 (elements 3..8) overlap")
    short = np.zeros(6 * P - (ME == LAST), dtype=np.float32)
    expect(lambda: ec.Alltoallv(COMM, [send, [6] * P], [short, [6] * P], abs_error=1e-3), ValueError,
           f"rank {LAST}", "beyond the buffer")
    assert "recvbuf" in msg


@case
def error_types():
    send, recv = good_buffers()
    bad = list(send) if ME == 0 else send
    expect(lambda: ec.Alltoallv(COMM, bad, recv, abs_error=1e-3), ec.CommTypeError, "rank 0", "must be a buffer")
    expect(lambda: ec.Alltoallv(COMM, send, None if ME == LAST else recv, abs_error=1e-3), ec.CommTypeError,
           f"rank {LAST}", "recvbuf is None with no datatype")
    wide = np.zeros(6 * P, dtype=np.float64) if ME == LAST else recv
    expect(lambda: ec.Alltoallv(COMM, send, wide, abs_error=1e-3), TypeError, f"rank {LAST}", "float32", "float64")
    objects = np.empty(6 * P, dtype=object) if ME == 0 else send
    expect(lambda: ec.Alltoallv(COMM, objects, recv, abs_error=1e-3), TypeError, "rank 0", "object")
    ints = np.zeros(6 * P, dtype=np.int32)
    if P > 1:  # rank 0 sends int32 where the others send float32
        mixed_s, mixed_r = (ints, np.zeros_like(ints)) if ME == 0 else (send, recv)
        expect(lambda: ec.Alltoallv(COMM, mixed_s, mixed_r, abs_error=1e-3), ec.CommTypeError,
               "every rank must use the same type")
    expect(lambda: ec.Alltoallv(COMM, [send, 3, None, "zz"], recv, abs_error=1e-3), TypeError, "typecode")
    # a derived datatype nobody committed, on one rank (the others pass the same bytes as MPI.DOUBLE):
    # MPI would refuse it inside the exchange, on that rank only, and the others would wait forever
    pair = MPI.FLOAT.Create_contiguous(2)
    as_pairs = (lambda b: [b, pair]) if ME == 0 else (lambda b: [b, MPI.DOUBLE])
    for bypass in (True, False):
        expect(lambda: ec.Alltoallv(COMM, as_pairs(send), as_pairs(recv), abs_error=1e-3, bypass=bypass),
               ec.CommTypeError, "rank 0", "must be committed")
    pair.Commit()
    ints = np.zeros(6 * P, dtype=np.int32)
    ec.Alltoallv(COMM, [ints, pair if ME == 0 else MPI.DOUBLE], [np.zeros_like(ints), pair if ME == 0 else MPI.DOUBLE])
    pair.Free()


@case
def error_aliased_buffers():
    """Send and receive segments sharing memory on one rank: every rank raises, blocking or
    pipelined, raw or compressed (plain MPI delivers garbage, and embzip's streamed and
    pipelined calls would break the bound). One buffer whose send and receive segments do not
    touch still works, as with MPI."""
    send, recv = good_buffers()
    aliased = send if ME == LAST else recv
    for bypass in (True, False):
        expect(lambda: ec.Alltoallv(COMM, send, aliased, abs_error=1e-3, bypass=bypass), ec.CommValueError,
               f"rank {LAST}: sendbuf and recvbuf share memory", "MPI.IN_PLACE")
        expect(lambda: ec.Ialltoallv(COMM, send, aliased, abs_error=1e-3, bypass=bypass).Wait(), ValueError,
               f"rank {LAST}: sendbuf and recvbuf share memory")
    halves = np.zeros(12 * P, np.float32)
    halves[:6 * P] = send
    ref = np.zeros(6 * P, np.float32)
    COMM.Alltoallv(send, ref)
    firsts = 6 * np.arange(P)
    ec.Alltoallv(COMM, [halves, [6] * P, firsts, MPI.FLOAT], [halves, [6] * P, 6 * P + firsts, MPI.FLOAT],
                 abs_error=1e-3, strategy="fast", bypass=False)
    assert np.abs(halves[6 * P:] - ref).max() <= 1e-3 and np.array_equal(halves[:6 * P], send)


@case
def error_arguments():
    send, recv = good_buffers()
    expect(lambda: ec.Alltoallv(COMM, send, recv, abs_error=-1.0 if ME == LAST else 1e-3), ValueError,
           f"rank {LAST}", "abs_error must be finite and > 0, found -1.0")
    expect(lambda: ec.Alltoallv(COMM, send, recv), ValueError, "rank 0", "exactly one of abs_error and rel_error")
    expect(lambda: ec.Alltoallv(COMM, send, recv, rel_error=0.1, bounds=[0.1] * (P + 1)), ValueError,
           "one bound per destination")
    expect(lambda: ec.Alltoallv(COMM, send, recv, rel_error=0.1, bounds=ec.TableLayout(dim=4)), ValueError,
           "not a whole number of rows of 4")
    # 2-D buffers of 4 tables x dim 2 given 5 tables' bounds on the last rank: counts of 40 are whole
    # rows of 10 there, but the buffer's rows are 8 wide, so the bounds would land on wrong columns
    wide = np.arange(5 * P * 8, dtype=np.float32).reshape(5 * P, 8)
    tables = 5 if ME == LAST else 4
    expect(lambda: ec.Alltoallv(COMM, wide, np.zeros_like(wide), abs_error=1e-3,
                                bounds=ec.TableLayout(dim=2, bounds=[1e-3] * tables)), ValueError,
           f"rank {LAST}", "rows are 8 values wide", "5 tables x dim 2")
    # [batch, tables, dim] buffers: 3 tables of dim 2 given 2 tables' bounds on the last rank
    # (counts of 24 are whole rows of 4 there too); the others' [batch, 2, dim] fit
    cube = np.arange(4 * P * 3 * 2, dtype=np.float32).reshape(4 * P, 3, 2)
    if ME != LAST:
        cube = cube.reshape(6 * P, 2, 2)
    expect(lambda: ec.Alltoallv(COMM, cube, np.zeros_like(cube), abs_error=1e-3,
                                bounds=ec.TableLayout(dim=2, bounds=[1e-3, 1e-2])), ValueError,
           f"rank {LAST}", "rows are [..., 3, 2]", "2 tables x dim 2")
    # an object that looks like a TableLayout, on one rank: it broke the argument memo before
    # the handshake, on that rank alone, and the others waited in the handshake
    lookalike = types.SimpleNamespace(dim=2, bounds=[1e-3, 1e-3]) if ME == 0 else None
    expect(lambda: ec.Alltoallv(COMM, send, recv, abs_error=1e-3, bounds=lookalike), ec.CommTypeError,
           "rank 0", "bounds must be a TableLayout")
    expect(lambda: ec.Alltoallv(COMM, [send, [-1] * P], recv, abs_error=1e-3), ValueError, "counts[0] is -1")
    # counts or displacements so large that segment-end arithmetic would wrap in int64: still beyond the buffer
    huge = [6] * P
    huge[ME] = 2**61  # own segment: the ranks agree on it, only the buffer check can stop it
    expect(lambda: ec.Alltoallv(COMM, [send, huge], [recv, huge], abs_error=1e-3), ec.CommValueError,
           "rank 0", f"counts {2**61}", "beyond the buffer")
    far = [6 * d for d in range(P)]
    far[ME] = 2**61
    expect(lambda: ec.Alltoallv(COMM, send, [recv, [6] * P, far, MPI.FLOAT], abs_error=1e-3, bypass=True),
           ec.CommValueError, "rank 0", f"displs {2**61}", "beyond the buffer")
    if P > 1:
        expect(lambda: ec.Alltoallv(COMM, send, recv, abs_error=1e-3, bypass=True if ME == 0 else "auto"),
               ec.CommValueError, "disagree on bypass")
        expect(lambda: ec.Ialltoallv(COMM, send, recv, abs_error=1e-3, chunk_bytes=100 + ME).wait(),
               ec.CommValueError, "disagree on chunk_bytes")
    expect(lambda: ec.Ialltoallv(COMM, send, recv, abs_error=1e-3, chunk_bytes=0).wait(), ValueError,
           "rank 0", "chunk_bytes must be a positive integer, found 0")
    if P > 1:  # rank 0 blocking, the others pipelined: their collectives could never match
        ints = np.arange(6 * P, dtype=np.int32)
        for data, kwargs in ((send, dict(bypass=True)), (send, dict(strategy="fast", bypass=False)),
                             (ints, {})):
            out = np.zeros_like(data)
            for chunk in (1, 100):
                expect(lambda: ec.Alltoallv(COMM, data, out, abs_error=1e-3, **kwargs) if ME == 0 else
                       ec.Ialltoallv(COMM, data, out, abs_error=1e-3, chunk_bytes=chunk, **kwargs).wait(),
                       ec.CommValueError, "disagree on chunk_bytes", "0 (Alltoallv)", f"{chunk} (Ialltoallv)")


def _corrupting(encode):
    def corrupt(region, offset, plan, d, row, strategy):
        blob = encode(region, offset, plan, d, row, strategy)
        frames = int(np.frombuffer(blob[24:32].tobytes(), "<u8")[0])
        blob[8 * (6 + frames) + 10] ^= 0xFF  # inside the first frame's header: its CRC no longer matches
        return blob
    return corrupt


def _failing(encode):
    def fail(*args):
        raise MemoryError("simulated: out of memory while compressing")
    return fail


def _patched(fn, make, on_rank):
    """``fn`` run with ``_segment.encode`` replaced on ``on_rank`` only (restored before checks)."""
    def run(*args, **kwargs):
        original = _segment.encode
        if ME == on_rank:
            _segment.encode = make(original)
        try:
            return fn(*args, **kwargs)
        finally:
            _segment.encode = original
    return run


@case
def error_decode_and_compress():
    if P == 1:  # no remote segment: nothing is compressed or decoded
        return
    send, recv = good_buffers(40)
    for fn in (ec.Alltoallv, lambda *a, **k: ec.Ialltoallv(*a, chunk_bytes=32, **k).wait()):
        _corrupt_then_fail(fn, COMM, send, recv)
    # the first call with new arguments fails: the remembered arguments must not keep its error
    # (they did, and every later identical call raised it again)
    send, recv = good_buffers(41)
    try:  # (not through expect(): its healthy() call would replace the remembered arguments)
        _patched(ec.Alltoallv, _failing, LAST)(COMM, send, recv, abs_error=1e-3, strategy="fast", bypass=False)
    except ec.CommError as exc:
        assert f"rank {LAST} while compressing" in str(exc), exc
    else:
        raise AssertionError("the failing compression did not raise")
    ec.Alltoallv(COMM, send, recv, abs_error=1e-3, strategy="fast", bypass=False)
    assert np.abs(recv.reshape(P, 41) - np.arange(41 * ME, 41 * (ME + 1)) * (np.arange(P)[:, None] + 1)).max() <= 1e-3


def _corrupt_then_fail(fn, comm, send, recv):
    """``fn`` (a compressed exchange) with rank 0's frames corrupted, then with the last rank's
    compression failing: every rank raises the error of the rank it happened on."""
    corrupt = _patched(fn, _corrupting, 0)
    msg = expect(lambda: corrupt(comm, send, recv, abs_error=1e-3, strategy="fast", bypass=False),
                 ec.CommDecodeError, "from rank 0", "checksum")
    assert msg.startswith("rank 1 while decoding"), msg
    fail = _patched(fn, _failing, LAST)
    expect(lambda: fail(comm, send, recv, abs_error=1e-3, strategy="fast", bypass=False), ec.CommError,
           f"rank {LAST} while compressing", "MemoryError")


@case
def error_fused_raw_path():
    """Uncompressed calls post the handshake and the payload together (one synchronisation):
    errors found only afterwards must still make every rank raise, with no unmatched message.
    Large counts make MPI use its rendezvous protocol too."""
    for n in (6, 50_000):
        send, recv = good_buffers(n)
        for delta in (-1, +1):  # LAST expects one element fewer (MPI truncates) / more than rank 0 sends
            rc = [n] * P
            if ME == LAST:
                rc[0] = n + delta
            big = np.zeros(n * P + 1, dtype=np.float32)
            expect(lambda: ec.Alltoallv(COMM, [send, [n] * P], [big, rc], abs_error=1e-3, bypass=True),
                   ec.CommValueError, f"rank 0 sends {n} elements", f"expects {n + delta} elements")
            # in place (not fused: MPI_IN_PLACE needs every rank), on every rank / on rank 0 alone
            # (the others fuse, rank 0 fills in for their exchange)
            for alone in (False, True) if P > 1 else ():  # (one rank in place sends itself what it expects)
                smsg = MPI.IN_PLACE if ME == 0 or not alone else [send, [n] * P]
                for fn in (ec.Alltoallv, lambda *a, **k: ec.Ialltoallv(*a, **k).wait()):
                    expect(lambda: fn(COMM, smsg, [big, rc], abs_error=1e-3, bypass=True), ec.CommValueError,
                           "expects")
        readonly = np.zeros_like(recv)
        readonly.flags.writeable = ME != LAST  # LAST cannot post the payload: it sends a filler
        expect(lambda: ec.Alltoallv(COMM, send, readonly, abs_error=1e-3, bypass=True), ec.CommValueError,
               f"rank {LAST}", "read-only")
        if P > 1:  # rank 0 fuses (raw), the others compress: they fill in for rank 0's exchange
            expect(lambda: ec.Alltoallv(COMM, send, recv, abs_error=1e-3, strategy="fast",
                                        bypass=True if ME == 0 else False),
                   ec.CommValueError, "disagree on bypass")
            ints = np.arange(n * P, dtype=np.int32)  # pass-through data, mismatched counts
            rc = [n] * P
            if ME == LAST:
                rc[0] = n - 1
            expect(lambda: ec.Alltoallv(COMM, [ints, [n] * P], [np.zeros_like(ints), rc], abs_error=1e-3),
                   ec.CommValueError, "expects")
        ok = ec.Alltoallv(COMM, send, recv, abs_error=1e-3, bypass=True)  # and the raw path still works
        ref = np.zeros_like(send)
        COMM.Alltoallv(send, ref)
        assert ok.bypassed and np.array_equal(recv, ref)


@case
def error_after_a_repeated_call():
    """A call repeating the last one's arguments skips re-validation: changes made in place
    since (counts, the writeable flag) must still be caught on every rank."""
    send, recv = good_buffers()
    counts = [6] * P
    for bypass in (True, False):
        for _ in range(2):
            ec.Alltoallv(COMM, [send, counts], [recv, counts], abs_error=1e-3, bypass=bypass)
        if ME == LAST:
            counts[0] = 5
        expect(lambda: ec.Alltoallv(COMM, [send, [6] * P], [recv, counts], abs_error=1e-3, bypass=bypass),
               ec.CommValueError, "expects 5 elements")
        counts[0] = 6
        ec.Alltoallv(COMM, send, recv, abs_error=1e-3, bypass=bypass)
        recv.flags.writeable = ME != 0
        expect(lambda: ec.Alltoallv(COMM, send, recv, abs_error=1e-3, bypass=bypass), ec.CommValueError,
               "rank 0", "read-only")
        recv.flags.writeable = True
    for _ in range(3):  # repeats of a bypassed call: the express lane is open
        ec.Alltoallv(COMM, send, recv, abs_error=1e-3, bypass=True)
    bad = np.array([1e-3, 2e-3]) if ME == 0 else 1e-3  # must be checked collectively, not on the lane
    expect(lambda: ec.Alltoallv(COMM, send, recv, abs_error=bad, bypass=True), (ec.CommTypeError, ec.CommValueError),
           "rank 0", "abs_error")


@case
def error_inside_the_native_lane():
    """Repeats of a bypassed call run in one compiled call on MPI's C API (embzip/comm/_native.py):
    when MPI fails in there (here rank 0, on the lane, receives more than it expects from LAST,
    who changed its send counts and took the full path), the error code comes back, and the
    gathered table's verdict makes every rank raise the mismatch. For 6 and 50_000 elements (MPI's
    eager and rendezvous protocols), and through mpi4py's calls when the native lane is off."""
    import os

    from embzip.comm import _mpi, _native

    if P == 1:
        return  # nobody else can send rank 0 too much
    codes = []
    real = _native.Plan.codes

    def recording(plan):
        got = real(plan)
        codes.extend(got)
        return got

    _native.Plan.codes = recording
    try:
        for native in NATIVE_LANES:
            os.environ["EMBZIP_NATIVE_MPI"] = native
            for n in (6, 50_000):
                fresh = COMM.Dup()
                send, recv = np.arange(n * P + 1, dtype=np.float32) * (ME + 1), np.zeros(n * P, np.float32)
                counts = [n] * P
                for _ in range(3):  # the lane opens, then runs
                    ec.Alltoallv(fresh, [send, counts], [recv, [n] * P], abs_error=1e-3, bypass=True)
                lane = _mpi.peek_state(fresh).memo.lane
                pairwise = os.environ.get("EMBZIP_TEST_PAIRWISE") == "1"  # (that handshake has no lane)
                assert pairwise or lane is not None and (lane.native is not None) == (
                    native != "0" and KNOWN_MPI), "the lane under test is not open"
                if ME == LAST:
                    counts = [n + 1] + [n] * (P - 1)
                del codes[:]
                expect(lambda: ec.Alltoallv(fresh, [send, counts], [recv, [n] * P], abs_error=1e-3, bypass=True),
                       ec.CommValueError, f"rank {LAST} sends {n + 1} elements", f"rank 0 expects {n} elements")
                if ME == 0 and lane is not None and lane.native is not None:
                    assert codes, "rank 0's compiled call saw no MPI error"
                counts = [n] * P
                for _ in range(3):  # and the lane opens and runs again
                    ec.Alltoallv(fresh, [send, counts], [recv, [n] * P], abs_error=1e-3, bypass=True)
                ref = np.zeros_like(recv)
                COMM.Alltoallv([send, counts], [ref, [n] * P])
                assert np.array_equal(recv, ref)
                fresh.Free()
    finally:
        _native.Plan.codes = real
        os.environ.pop("EMBZIP_NATIVE_MPI", None)


def _slow_link(comm):
    """Pin ``comm``'s bandwidth estimate at 1 B/s on this rank: the model then says compression
    pays, and a blocking compressed call streams (once the codec has been measured)."""
    from embzip.comm import _mpi

    for _ in range(5):
        _mpi.peek_state(comm).costs.add_bandwidth(2, 1.0)


@case
def error_streamed_exchange():
    """The streamed exchange of a blocking call (a slow link): a corrupted frame, a failed
    compression, every rank raises; and ranks whose cost states disagree on streaming (not
    possible with agreed measurements, forced here) raise instead of waiting for each other."""
    if P == 1:  # no remote segment: nothing is compressed or decoded
        return
    send, recv = good_buffers(4000)  # segments big enough to compress (tiny frames expand: it would not pay)
    fresh = COMM.Dup()
    try:
        for _ in range(3):  # calibrate: the codec is measured
            ec.Alltoallv(fresh, send, recv, abs_error=1e-3, strategy="fast", bypass=False)

        def streamed(*args, **kwargs):
            _slow_link(fresh)
            stats = ec.Alltoallv(*args, **kwargs)
            assert stats.overlapped, "the call did not stream"
            return stats

        streamed(fresh, send, recv, abs_error=1e-3, strategy="fast", bypass=False)
        _corrupt_then_fail(streamed, fresh, send, recv)
    finally:
        fresh.Free()
    fresh = COMM.Dup()
    try:
        for _ in range(3):
            ec.Alltoallv(fresh, send, recv, abs_error=1e-3, strategy="fast", bypass=False)
        if ME == 0:
            _slow_link(fresh)  # only rank 0 thinks the link is slow
        expect(lambda: ec.Alltoallv(fresh, send, recv, abs_error=1e-3, strategy="fast", bypass=False),
               ec.CommValueError, "ranks disagree on mode", "compressed (streamed)")
    finally:
        fresh.Free()
