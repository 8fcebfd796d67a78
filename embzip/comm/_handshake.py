"""The handshake: one small collective, after which every rank knows whether any rank has a
problem, and what every sender will send.

Up to ``GATHER_MAX`` ranks it is a single ``Allgather``: each rank contributes its error flag,
its settings, its data kind, its send and receive byte counts for every peer, its row widths,
its blob sizes (compressed calls) and its measurements of the previous call. Every rank then
checks every pair itself, in the same order, and reaches the same verdict and message without
further communication (only a local error's text needs one ``bcast``). Above ``GATHER_MAX``
(the gathered table grows as P^2) it is an ``Alltoall`` of the per-peer values followed by an
``Allreduce`` of the flags, where the receiver that sees a mismatch reports it.

A call that sends the caller's buffers as they are (bypassed, or not float), from and into
no empty segment, while the last table showed none on any rank (see
:func:`._collective.fuses`), *fuses* the handshake with the
payload (gather path only): it posts the ``Iallgather``, runs the payload's
blocking ``Alltoallv`` while the gather is in flight, and checks the verdict after both
completed. Why: a bypassed call must cost what a plain ``Alltoallv`` costs, and on shared
memory MPICH's ``Ialltoallv`` is the slower algorithm (see :func:`fused_payload`). A rank that
did not fuse (it compresses, sends in place, has an empty segment, or its arguments are bad) and learns of a problem makes a
*filler* ``Alltoallv`` sized from the gathered counts (blocking: MPI matches blocking
collectives only with blocking ones), which completes the fused ranks' exchange with no
unmatched message, before every rank raises. So every uncompressed call is one ``Iallgather``
and exactly one blocking ``Alltoallv``; a blocking and a pipelined call never meet (they
disagree on ``chunk_bytes``, 0 for the blocking call). On error, a fused rank's receive buffer
may have been written (as with a failed MPI call). Whatever could fail before MPI is entered
(staging GPU buffers through host memory) runs before the handshake (see
:func:`._collective.stage_raw`), so its failure is a local error like a bad argument.

A raw call in place (``MPI.IN_PLACE`` as sendbuf, host buffers) does not fuse: MPI allows
``MPI_IN_PLACE`` on every rank or on none, so the gathered in-place flags decide, the same on
every rank, whether the payload goes with ``MPI_IN_PLACE`` (every rank in place: no copy) or
from a copy of the receive buffer (any other mix, and always above ``GATHER_MAX`` ranks).
"""

from __future__ import annotations

import time

import numpy as np

from . import _spec
from ._errors import LocalError, build
from ._mpi import wait
from ._protocol import BYPASS_CODES, chunk_units, raise_agreed
from ._stats import MEASUREMENT_FIELDS

__all__ = ["handshake", "Agreement", "GATHER_MAX", "build_row", "conclude", "row_size", "MEASURED", "fused_payload",
           "shows_empty_segment"]

GATHER_MAX = 64
_SETTINGS = ("bypass", "chunk_bytes", "mode")  # every rank must pass (or decide) alike
#: The handshake's mode of a compressed blocking call that exchanges segment by segment.
STREAMED = 3
_NAMES = {"bypass": {v: repr(k) for k, v in BYPASS_CODES.items()}, "mode": {0: "pass-through", 1: "compressed",
                                                                          STREAMED: "compressed (streamed)",
                                                                          2: "raw"}}
_M = len(MEASUREMENT_FIELDS)
MEASURED = _M  #: the last MEASURED columns of a row are measurements; the rest is what is agreed
# A gathered row: error flag, kind, fused flag, in-place flag, settings, 6 per-peer vectors,
# measurements. Measurements come last so that the rest (what the verdict depends on) is one prefix.
_IN_PLACE = 3  # 1: this rank can send with MPI_IN_PLACE (a raw call in place on host buffers)
_S0 = 4  # first settings column
_V0 = _S0 + len(_SETTINGS)  # first per-peer column


def row_size(size: int) -> int:
    """Doubles each rank contributes to the gathered handshake of ``size`` ranks."""
    return _V0 + 6 * size + _M


def _columns(table, size: int):
    """The per-peer vectors of a gathered table as [rank, vector, peer]."""
    return table[:, _V0:_V0 + 6 * size].reshape(size, 6, size)


class Agreement:
    """What the handshake established: per-source row widths and blob sizes, the latency, whether
    the payload went with it (``fused``), whether every rank sends with MPI_IN_PLACE (``in_place``:
    MPI allows it only on all ranks or none; gathered handshake only)."""

    __slots__ = ("units", "blob_sizes", "latency", "fused", "in_place")

    def __init__(self, units, blob_sizes, latency, fused=False, in_place=False):
        self.units, self.blob_sizes, self.latency, self.fused, self.in_place = units, blob_sizes, latency, fused, \
            in_place


def _settings(job, mode: int):
    code = next(v for k, v in BYPASS_CODES.items() if job.bypass is k or (isinstance(k, str) and job.bypass == k))
    return [code, job.chunk_bytes, mode]


def _vectors(job, blob_sizes):
    """Per-peer int columns: send counts, send bytes, recv counts, recv bytes, units, blob sizes."""
    s, r = job.send, job.recv
    blobs = np.zeros_like(s.counts) if blob_sizes is None else blob_sizes
    return [s.counts, s.counts * s.elem_size, r.counts, r.counts * r.elem_size, chunk_units(job), blobs]


def _shown(name: str, value, other):
    """A setting's value as a message shows it (``other``: the value it disagrees with)."""
    value, other = int(value), int(other)
    if name == "chunk_bytes" and 0 in (value, other):  # 0 is the blocking call's
        return f"{value} ({'Alltoallv' if value == 0 else 'Ialltoallv'})"
    return _NAMES.get(name, {}).get(value, value)


def _disagreement(name: str, values: np.ndarray):
    first = int(np.flatnonzero(values != values[0])[0])
    a, b = _shown(name, values[0], values[first]), _shown(name, values[first], values[0])
    return LocalError("value", f"ranks disagree on {name}: rank 0 has {a}, rank {first} has {b}; "
                               f"it must be the same on every rank")


def _filler(pcomm, table, MPI) -> None:
    """The ``Alltoallv`` a rank that did not fuse makes when the call fails: it sends every
    fused rank exactly the bytes that rank expects from it and receives exactly what it sends,
    into scratch (every message matched in full), and nothing to or from the others. Blocking,
    as the fused ranks' payload exchange is (MPI matches blocking collectives only with
    blocking ones)."""
    size, rank = pcomm.Get_size(), pcomm.Get_rank()
    fused = table[:, 2] != 0
    cols = _columns(table, size)
    out = np.where(fused, cols[:, 3, rank], 0).astype(np.int64)  # what each fused peer expects from me
    into = np.where(fused, cols[:, 1, rank], 0).astype(np.int64)  # what each fused peer sends me
    out_displs, in_displs = np.zeros(size, np.int64), np.zeros(size, np.int64)
    np.cumsum(out[:-1], out=out_displs[1:])
    np.cumsum(into[:-1], out=in_displs[1:])
    sendbuf, recvbuf = np.zeros(int(out.sum()), np.uint8), np.empty(int(into.sum()), np.uint8)
    pcomm.Alltoallv([sendbuf, (out, out_displs), MPI.BYTE], [recvbuf, (into, in_displs), MPI.BYTE])


def fused_payload(request, run_payload, failures: list) -> None:
    """The payload exchange of a fused call, then the handshake's completion.

    The payload is MPI's blocking ``Alltoallv`` (``run_payload``), entered with the gather
    already posted, which MPI progresses meanwhile: measured against MPICH on shared memory,
    ``Iallgather`` + ``Ialltoallv`` + ``Waitall`` cost 4-8% more than a plain ``Alltoallv`` of
    10 MB, while ``Iallgather`` + ``Alltoallv`` + ``Wait`` cost 0-4% (the nonblocking all-to-all
    is the slower algorithm). An MPI error (truncation from mismatched counts, which the
    verdict then names) is kept, not raised, so that every rank reaches the verdict; MPICH
    completes a collective that hit such an error. ``run_payload`` does nothing that can fail
    before MPI is entered (the caller staged the buffers before the handshake).
    """
    try:
        run_payload()
    except Exception as exc:  # mpi4py's MPI.Exception
        failures.append(exc)
    try:
        wait(request)
    except Exception as exc:
        failures.append(exc)


def build_row(job, mode: int, fused: bool, blob_sizes, size: int) -> np.ndarray:
    """This rank's gathered row, measurements left zero."""
    row = np.zeros(row_size(size))
    if job.error is not None:
        row[0] = 1
    else:
        row[1] = job.kind
        row[2] = fused
        row[_IN_PLACE] = job.fill_send is not None
        row[_S0:_V0] = _settings(job, mode)
        row[_V0:-_M] = np.concatenate(_vectors(job, blob_sizes))
    return row


def _gathered(pcomm, job, mode, blob_sizes, measurement, MPI, post_payload=None, memo=None):
    size = pcomm.Get_size()
    fused = post_payload is not None and job.error is None and mode != 1
    # an uncompressed call repeating the last one's arguments repeats its row but for the
    # measurements (the reused Job shares its Spec objects): skip rebuilding it. Only for the
    # memo's own Job, which the memo keeps alive: the Spec of a call the memo does not keep
    # (GPU or DLPack buffers, in place) is freed after the call, and a later call's new Spec
    # could take its id, and with it a stale row (its counts, its type: found by review)
    remembered = memo is not None and memo.job is not None and job.send is memo.job.send
    same = (id(job.send), mode, fused) if remembered and job.error is None and blob_sizes is None else None
    if same is not None and memo is not None and memo.row_key == same:
        row = memo.row.copy()
    else:
        row = build_row(job, mode, fused, blob_sizes, size)
        if same is not None and memo is not None:
            memo.row_key, memo.row = same, row.copy()
    if measurement is not None:
        row[-_M:] = measurement
    table = np.empty((size, row.size))
    start = time.perf_counter()
    request = pcomm.Iallgather(row, table)
    failures = []
    if fused:  # both in flight together: one synchronisation
        fused_payload(request, post_payload, failures)
    elif job.fill_send is not None and mode != 1 and not job.chunk_bytes:
        # a blocking raw call in place: in a valid call no rank compresses, so MPI's own wait
        # (measured, 4 ranks on 2 cores: 1.0 ms against 1.8 ms napping). Not for Ialltoallv:
        # its thread would hold a core while the caller works (measured by review: 2x CPU)
        request.Wait()
    else:
        wait(request)  # spins briefly, then naps: ranks still compressing need the shared cores
    latency = time.perf_counter() - start
    return conclude(pcomm, job, table, fused, failures, memo, MPI, latency)


def conclude(pcomm, job, table, fused: bool, failures: list, memo, MPI, latency: float):
    """After the gather (and a fused payload): raise the agreed error on every rank, or return
    (Agreement, the MAX-reduced measurements). ``failures``: MPI errors of a fused payload."""
    size = pcomm.Get_size()
    agreed = table[:, :-_M]
    repeat = memo is not None and memo.agreed is not None and np.array_equal(agreed, memo.agreed)
    problem = None if repeat else _verdict(table, size)  # a table already found sound is sound
    failed = np.flatnonzero(table[:, 0]) if table[:, 0].any() else ()
    if (len(failed) or problem is not None) and not fused:
        _filler(pcomm, table, MPI)
    if len(failed):
        raise_agreed(pcomm, int(failed[0]), job.error)
    if problem is not None:  # computed identically on every rank: raise without communicating
        raise build(problem.payload(), pcomm.Get_rank())
    if failures:  # no rank has a problem, yet MPI failed here: nothing to agree on, report it
        raise failures[0]
    if memo is not None and not repeat:
        memo.agreed = agreed.copy()
        memo.sequenced = shows_empty_segment(table, size)
    cols = _columns(table, size)
    rank = pcomm.Get_rank()
    return Agreement(cols[:, 4, rank].astype(np.int64), cols[:, 5, rank].astype(np.int64), latency, fused,
                     bool(table[:, _IN_PLACE].all())), table[:, -_M:].max(axis=0)


def shows_empty_segment(table, size: int) -> bool:
    """Whether a sound gathered table shows an empty segment on some rank (as
    ``_collective.has_empty_segment`` judges this rank's own)."""
    cols = _columns(table, size)
    sent, expected = cols[:, 1, :], cols[:, 3, :]  # [rank, peer] bytes
    others = ~np.eye(size, dtype=bool)
    return bool((sent[others] == 0).any() or (expected[others] == 0).any())


def _verdict(table, size):
    """The problem the gathered table shows (the same on every rank), or None."""
    if np.any(table[:, 0]):
        return None  # a rank's own error is reported instead
    problem = None
    kinds = table[:, 1]
    if np.any(kinds != kinds[0]):  # checked first: a different kind also means a different mode
        other = int(np.flatnonzero(kinds != kinds[0])[0])
        problem = LocalError("type", f"rank 0 sends {_spec.kind_name(kinds[0])} data, rank {other} "
                                     f"{_spec.kind_name(kinds[other])} data: every rank must use the same type")
    for i, name in enumerate(_SETTINGS):
        if np.any(table[:, _S0 + i] != table[0, _S0 + i]):
            problem = problem or _disagreement(name, table[:, _S0 + i])
    cols = _columns(table, size).astype(np.int64)  # [rank, column, peer]
    if problem is None:
        sent, expected = cols[:, 1, :], cols[:, 3, :].T  # [a, b]: a sends to b / b expects from a
        bad = np.argwhere((sent != expected).T)  # (b, a) pairs, by receiver then sender
        if bad.size:
            b, a = (int(v) for v in bad[0])
            problem = LocalError("value", f"rank {a} sends {cols[a, 0, b]} elements ({sent[a, b]} bytes) to rank "
                                          f"{b}, but rank {b} expects {cols[b, 2, a]} elements ({expected[a, b]} "
                                          f"bytes) from it (recvbuf counts[{a}]): send and receive counts must match")
    return problem


def _pairwise(pcomm, job, mode, blob_sizes, measurement, MPI):
    size, rank = pcomm.Get_size(), pcomm.Get_rank()
    table = np.zeros((size, 6), dtype=np.int64)  # status, kind, count, bytes, unit, blob size
    if job.error is None:
        v = _vectors(job, blob_sizes)
        table[:, 0], table[:, 1], table[:, 2], table[:, 3], table[:, 4], table[:, 5] = 1, job.kind, v[0], v[1], \
            v[4], v[5]
    got = np.empty_like(table)
    # nonblocking on every rank, whatever its mode: a blocking and a nonblocking collective
    # never match each other, and ranks that disagree on the mode must still meet here
    wait(pcomm.Ialltoall(table, got))
    if job.error is None:
        for src in range(size):
            status, kind, count, nbytes = (int(x) for x in got[src, :4])
            expected = int(job.recv.counts[src]) * job.recv.elem_size
            if status and kind != job.kind:
                job.error = LocalError("type", f"rank {src} sends {_spec.kind_name(kind)} data, but rank {rank} "
                                               f"receives {_spec.kind_name(job.kind)} data: every rank must use "
                                               f"the same type")
            elif status and nbytes != expected:
                job.error = LocalError("value", f"rank {src} sends {count} elements ({nbytes} bytes) to rank "
                                                f"{rank}, but rank {rank} expects {int(job.recv.counts[src])} elements"
                                                f" ({expected} bytes) from it (recvbuf counts[{src}]): send and "
                                                f"receive counts must match")
            if job.error is not None:
                break
    n = len(_SETTINGS)
    vec = np.full(1 + 2 * n + _M, -np.inf)
    vec[0] = size - rank if job.error is not None else 0
    if job.error is None:
        settings = _settings(job, mode)
        vec[1:1 + n], vec[1 + n:1 + 2 * n] = settings, [-x for x in settings]  # (max, -min): equal when agreed
    vec[1 + 2 * n:] = measurement if measurement is not None else 0.0
    out = np.empty_like(vec)
    start = time.perf_counter()
    pcomm.Allreduce(vec, out, op=MPI.MAX)
    latency = time.perf_counter() - start
    if out[0] > 0:
        raise_agreed(pcomm, int(size - out[0]), job.error)
    for i, name in enumerate(_SETTINGS):
        if out[1 + i] != -out[1 + n + i]:
            low, high = -out[1 + n + i], out[1 + i]
            raise build(("value", f"ranks disagree on {name}: values from {_shown(name, low, high)} to "
                                  f"{_shown(name, high, low)}; it must be the same on every rank"), rank)
    return Agreement(got[:, 4].copy(), got[:, 5].copy(), latency), out[1 + 2 * n:]


def handshake(pcomm, job, state, mode: int, MPI, blob_sizes=None, post_payload=None) -> Agreement:
    """Run the handshake; raise the agreed error on every rank; fold in the last measurements.

    ``mode`` is this call's decision (0 pass-through, 1 compressed, 2 raw); ``blob_sizes`` the
    bytes this rank will send each peer in a compressed call. ``post_payload`` (uncompressed
    calls) runs the payload exchange (a blocking ``Alltoallv``): the handshake fuses it when it
    can, and says so in ``Agreement.fused`` (else the caller exchanges after it).
    """
    measurement, state.pending = state.pending, None
    if pcomm.Get_size() <= GATHER_MAX:
        agreement, reduced = _gathered(pcomm, job, mode, blob_sizes, measurement, MPI, post_payload, state.memo)
    else:
        agreement, reduced = _pairwise(pcomm, job, mode, blob_sizes, measurement, MPI)
    state.costs.absorb(reduced)
    job.units = agreement.units
    return agreement
