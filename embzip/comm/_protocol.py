"""The agreement protocol: every rank learns about any rank's problem, so every rank raises.

1. ``prepare``: parse and validate this rank's arguments; a problem is recorded, not raised
   (compression, when the call compresses, also happens before anything is exchanged).
2. ``_handshake.handshake``: one small collective that tells every rank whether any rank has a
   problem (its own, or counts that do not match between two ranks); if so, all raise the
   same error. Nothing of the payload has moved yet, so nobody is left waiting on a message.
3. After the payload exchange, ``agree`` runs one ``Allreduce`` of an error flag (a frame
   that failed to decode): the lowest failing rank broadcasts its message and all raise it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import _overlap, _spec
from ._errors import LocalError, build
from ._layout import resolve

__all__ = ["Job", "prepare", "agree", "raise_agreed", "chunk_units", "STRATEGIES", "BYPASS_CODES"]

STRATEGIES = ("auto", "fast", "compact")
BYPASS_CODES = {"auto": 1, True: 2, False: 3}


@dataclasses.dataclass
class Job:
    """One call's validated arguments on this rank (or the error that stops it)."""

    send: object = None  # _spec.Spec
    recv: object = None
    kind: int = 0  # 0 pass-through, else _spec.FLOAT_KINDS code
    plan: object = None  # _layout.BoundPlan for float data
    strategy: str = "auto"
    bypass: object = "auto"
    chunk_bytes: int = 0  # pipelined calls: raw bytes per chunk (0: blocking call)
    error: object = None  # LocalError
    units: object = None  # int64 [size]: row width each sender cuts its chunks on (from the handshake)
    # in place on the host: copies the receive buffer into the send side's buffer (see
    # _spec.in_place_send), None once done or when there is nothing to copy. While it is set,
    # a raw call may still send with MPI_IN_PLACE (when every rank can: agreed in the handshake)
    fill_send: object = None
    in_place: bool = False  # sendbuf was MPI.IN_PLACE (or None)

    def take_snapshot(self) -> None:
        """Fill the in-place send side now (a call that cannot send with MPI_IN_PLACE)."""
        if self.fill_send is not None:
            self.fill_send()
            self.fill_send = None


def _bypass_code(bypass) -> int:
    for key, code in BYPASS_CODES.items():
        if bypass is key or (isinstance(key, str) and bypass == key):
            return code
    raise ValueError(f"bypass must be 'auto', True or False, found {bypass!r}")


def prepare(sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass, size, rank, MPI,
            chunk_bytes=None) -> Job:
    """Parse and validate everything local; never raises (the error goes into ``Job.error``)."""
    # chunk_bytes None: a blocking call (chunk_bytes 0 in the Job and the handshake), so that a
    # blocking and a pipelined call never agree on it (their collectives would not match)
    pipelined = chunk_bytes is not None
    job = Job(strategy=strategy, bypass=bypass, chunk_bytes=chunk_bytes if pipelined else 0)
    try:
        if pipelined and (isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1):
            job.chunk_bytes = 0
            raise ValueError(f"chunk_bytes must be a positive integer, found {chunk_bytes!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, found {strategy!r}")
        _bypass_code(bypass)
        if _spec.is_in_place(sendbuf, MPI):  # send what recvbuf holds (a copy, unless MPI's in place: in_place_send)
            job.recv = _spec.parse(recvbuf, size, True, "recvbuf", MPI)
            job.send, job.fill_send = _spec.in_place_send(job.recv, size, MPI)
            job.in_place = True
        else:
            job.send = _spec.parse(sendbuf, size, False, "sendbuf", MPI)
            job.recv = _spec.parse(recvbuf, size, True, "recvbuf", MPI)
            _overlap.check_not_aliased(job.send, job.recv)
        s, r = job.send.kind, job.recv.kind
        if s != r:
            raise TypeError(f"sendbuf holds {_spec.kind_name(s)} data but recvbuf {_spec.kind_name(r)}: "
                            f"use the same float type on both sides (embzip.comm does not convert)")
        job.kind = s
        if s:
            job.plan = resolve(abs_error, rel_error, bounds, size, job.send.counts, job.send.row,
                               job.send.rows_across)
    except Exception as exc:  # anything: it must reach the other ranks, not unwind this one alone
        job.error = LocalError.from_exception(exc, rank)
    return job


def raise_agreed(pcomm, root: int, local):
    """Rank ``root``'s error, broadcast; raised on every rank (with the cause on ``root``)."""
    payload = local.payload() if pcomm.Get_rank() == root and local is not None else None
    payload = pcomm.bcast(payload, root=root)
    if payload is None:  # cannot happen: root flagged an error; still, never raise nothing
        payload = ("comm", f"rank {root} reported an error without a message")
    exc = build(payload, root)
    if local is not None and local.exc is not None and pcomm.Get_rank() == root:
        raise exc from local.exc
    raise exc


def chunk_units(job: Job) -> np.ndarray:
    """Row width (elements) each destination's segment is cut on in pipelined calls (1: any)."""
    unit = job.plan.row_unit(job.send.row) if job.plan is not None else 1
    counts = job.send.counts
    return np.where(counts % unit == 0, unit, 1) if unit > 1 else np.ones_like(counts)


def agree(pcomm, local, MPI, patient: bool = False) -> None:
    """Step 3: every rank raises if any rank has ``local`` set (an error after the payload).

    ``patient``: wait by napping, not spinning (ranks may still be decoding on shared cores).
    """
    size, rank = pcomm.Get_size(), pcomm.Get_rank()
    flag = np.array([size - rank if local is not None else 0], dtype=np.int64)
    out = np.empty_like(flag)
    if patient:
        from ._mpi import wait

        wait(pcomm.Iallreduce(flag, out, op=MPI.MAX))
    else:
        pcomm.Allreduce(flag, out, op=MPI.MAX)
    if out[0] > 0:
        raise_agreed(pcomm, int(size - out[0]), local)
