"""The express lane: a call that repeats the last uncompressed one, with little Python around MPI.

Why: the Python between the caller's call and the moment its messages are posted, and
between their completion and the return, runs with cold caches (the caller's compute and
the payload's megabytes evict it), where each step costs several times its warm time:
measured on 4 ranks / 2 cores with a 10 MB shared-memory exchange, the full path's ~45 us of
(warm) Python cost ~0.6 ms per call, 15% of the exchange, while a bypassed call must cost
what a plain ``Alltoallv`` costs. ``bench/lane_cold.py`` times the lane warm and cold.

A call takes the lane when its arguments are the previous call's (the same buffers, bounds
and settings; counts and displacements compared by value), that call sent the caller's
buffers as they are (bypassed or not float, host buffers, the gathered handshake), and this
call's decision is again uncompressed. It posts exactly the messages the full path posts (the
same gathered row, the same payload, in the same order), so ranks on either path match. The
agreed part of the gathered table must equal the one already found sound, else the full
path's verdict decides (and raises on every rank).

Two orders, as on the full path: a *fused* lane posts the payload while the gather is in
flight and checks the table after both; a *sequenced* lane (a call in place on every rank,
which MPI_IN_PLACE needs to know first, or an empty segment on some rank, see
``_collective.fuses``) waits for the gather and posts the payload only when the table is the
agreed one. Otherwise it sends nothing and finishes as the full path does after
its handshake (:func:`_sequenced_fallback`). Why a lane for those too: the full path's Python
around its two synchronisations cost a 10.6 MB in-place call on 2 ranks / 2 cores 0.4-1 ms,
1.3-1.9x MPICH's own in-place call.
"""

from __future__ import annotations

import copy
import time

import numpy as np

from .._jit import kernel
from . import _handshake, _mpi, _native, _reuse, _spec
from ._cost_kernels import REASONS, commit_next, record_bandwidth, transfer_bandwidth
from ._costs import STRATEGY_CODES, bypass_code
from ._stats import CallStats, MEASUREMENT_FIELDS, MODE_CODES, measurement

__all__ = ["Lane", "try_call", "open_lane"]

_TRANSFER, _INV_TRANSFER = MEASUREMENT_FIELDS.index("transfer_s"), MEASUREMENT_FIELDS.index("inv_transfer_s")
_RAW_CODE = MODE_CODES["raw"]
_MEASURED = _handshake.MEASURED


class Lane:
    """What a repeat of an uncompressed call needs, prepared once."""

    __slots__ = ("key", "loose", "args", "job", "mode", "buf", "size", "row", "table", "reduced", "own", "smsg",
                 "rmsg", "native", "same", "raw_bytes", "recv_raw_bytes", "sequenced", "in_place")


@kernel
def _layout(size, length):
    """Offsets in a lane's buffer: the gathered table, this rank's row, the agreed part of the
    table (its bits), the reduced measurements, the template of this rank's measurement."""
    measured = _MEASURED
    row = size * length
    agreed = row + length
    reduced = agreed + size * (length - measured)
    template = reduced + measured
    return row, agreed, reduced, template, template + measured


@kernel
def _agreed(buf, size, length):
    """Whether every rank's gathered row is the agreed one outside the measurements (bit for
    bit: stricter than by value); ``buf`` laid out by ``_layout``."""
    _, agreed, _, _, _ = _layout(size, length)
    cut = length - _MEASURED
    bits = buf.view(np.uint64)
    for i in range(size):
        for j in range(cut):
            if bits[i * length + j] != bits[agreed + i * cut + j]:
                return False
    return True


@kernel
def _conclude(buf, size, length, transfer, windows, sample):
    """The lane's whole bookkeeping after its MPI calls, in one compiled call on one buffer
    (laid out by ``_layout``: one array argument is the cheapest call numba has; after a
    payload of megabytes this runs with cold caches, where each numpy or Python step, and each
    array a compiled function unboxes, costs several times its warm time).

    Returns -2.0 when some rank's row differs from the agreed one outside the measurements
    (``_agreed``: the full verdict must decide). Else the reduced measurements are the MAX over
    ranks of the measurement columns, this rank's measurement (the measured part of its row,
    which the next call sends) is the template with this call's transfer time (and its inverse
    when ``sample``: the transfer started as the rank arrived, see ``measurement``), and the
    result is what the cost model takes from the reduced measurements: the bandwidth sample of
    a raw transfer (0.0: none), already recorded in the cost state's ``windows``, or -1.0 for
    a compressed call's (the caller absorbs those in full).
    """
    row, _, reduced, template, _ = _layout(size, length)
    measured = _MEASURED
    cut = length - measured
    if not _agreed(buf, size, length):
        return -2.0
    for j in range(measured):
        top = buf[cut + j]
        for i in range(1, size):
            top = max(top, buf[i * length + cut + j])
        buf[reduced + j] = top
    own = row + cut
    for j in range(measured):
        buf[own + j] = buf[template + j]
    if buf[own] != 0.0:  # as measurement(stats, 0.0, fused=sample) for this call's stats
        buf[own + _TRANSFER] = transfer
        buf[own + _INV_TRANSFER] = 1.0 / transfer if sample and transfer > 0 else 0.0
    if buf[reduced] == 1.0:
        return -1.0
    sample = transfer_bandwidth(buf[reduced:reduced + measured])
    if sample > 0.0:  # (what absorb does with it)
        record_bandwidth(windows, 2, sample)
    return sample


def _arguments(sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass):
    """(args, same): the arguments by identity (buffers, bounds) and value (scalars, what can
    change in an array: see ``_array_state``), and what :func:`_is_repeat` compares of them,
    when the receive buffer is a numpy array, the send buffer one too or ``MPI.IN_PLACE`` /
    None, and the bounds have nothing mutable but a TableLayout's array (compared by value);
    (None, None) otherwise (the memo key decides then). Each array's state is read once: a
    training loop's fresh arrays come here every call."""
    if type(recvbuf) is not np.ndarray or (type(sendbuf) is not np.ndarray and not _in_place(sendbuf)):
        return None, None
    for scalar in (abs_error, rel_error, strategy, bypass):  # as key_of: anything else validates in full
        if scalar is not None and not isinstance(scalar, (bool, int, float, str)):
            return None, None
    inner = None
    if bounds is not None:
        if not (hasattr(bounds, "dim") and hasattr(bounds, "bounds")):  # a TableLayout
            return None, None
        inner = bounds.bounds
        inner = None if inner is None else (inner.shape, inner.dtype.str, inner.tobytes())
    send_state = _array_state(sendbuf) if type(sendbuf) is np.ndarray else None
    recv_state = _array_state(recvbuf)
    send = ("in place",) if send_state is None else (id(sendbuf), *send_state)
    args = (*send, id(recvbuf), *recv_state, id(bounds), inner, abs_error, type(abs_error), rel_error,
            type(rel_error), strategy, bypass, type(bypass))
    return args, (sendbuf, recvbuf, bounds, abs_error, rel_error, strategy, bypass, send_state, recv_state, inner)


def _in_place(sendbuf) -> bool:
    """Whether ``sendbuf`` is MPI.IN_PLACE or None (the list form ``[MPI.IN_PLACE, ...]`` is
    left to the memo key)."""
    return sendbuf is None or sendbuf is _mpi.load().IN_PLACE


def _array_state(arr):
    """What can change in one array object: its shape, dtype, writeable flag, and where its
    elements are (data pointer and strides). Why the last two: one array object can move
    (``resize(refcheck=False)``, assigning ``strides``); a repeat keyed on identity alone then
    wrote into freed memory."""
    return arr.shape, arr.dtype, arr.flags.writeable, _reuse.address(arr), arr.strides


def _is_repeat(same, sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass):
    """True when these are the opening call's very objects, unchanged: a training loop's case,
    checked with identities (a sufficient condition for ``_arguments`` being equal, cheaper to
    evaluate; False only means the full comparison decides)."""
    if not (sendbuf is same[0] and recvbuf is same[1] and bounds is same[2] and abs_error is same[3]
            and rel_error is same[4] and strategy is same[5] and bypass is same[6]):
        return False
    if same[7] is not None and _array_state(sendbuf) != same[7]:
        return False
    if _array_state(recvbuf) != same[8]:
        return False
    inner = same[9]
    if inner is not None:
        now = bounds.bounds
        return (now.shape, now.dtype.str, now.tobytes()) == inner
    return True


def open_lane(state, job, mode: int, stats: CallStats, call_args, sequenced: bool = False) -> None:
    """After a successful uncompressed call of a remembered Job on host buffers with the
    gathered handshake: prepare its repeat. ``sequenced``: the call did not fuse (it sent in
    place on every rank, or the table shows an empty segment), so neither does its lane."""
    memo = state.memo
    if memo.lane is not None and memo.lane.key is memo.key and memo.lane.sequenced == sequenced:
        return  # (a lane of the other order is replaced: memo.sequenced changed meanwhile)
    if memo.key is None or memo.job is None or memo.agreed is None or memo.job.send is not job.send:
        return
    lane = Lane()
    lane.key, lane.job, lane.mode = memo.key, memo.job, mode
    lane.loose = _reuse.loosen(memo.key)
    lane.args, lane.same = _arguments(*call_args)
    # a sequenced transfer is a bandwidth sample when every rank started it after the gather
    # (in place: all are sequenced), as the full path's measurement says
    lane.sequenced, lane.in_place = sequenced, job.in_place
    sample = not sequenced or job.in_place
    size = state.comm.Get_size()
    row = _handshake.build_row(job, mode, not sequenced, None, size)
    length = row.size
    at_row, at_agreed, at_reduced, at_template, end = _layout(size, length)
    lane.buf, lane.size = np.empty(end), size
    lane.table = lane.buf[:at_row].reshape(size, length)
    lane.row = lane.buf[at_row:at_agreed]
    lane.row[:] = row
    lane.buf[at_agreed:at_reduced] = np.ravel(memo.agreed)  # compared bit for bit: stricter than by value
    lane.reduced = lane.buf[at_reduced:at_template]
    lane.smsg = _mpi.load().IN_PLACE if job.in_place else job.send.mpi_message()
    lane.rmsg = job.recv.mpi_message()
    lane.native = _native.exchange(state.comm, job.send, job.recv, length, (_agreed, _conclude),
                                   bypass_code(job.bypass) if job.kind else -1,  # (-1: nothing to decide)
                                   STRATEGY_CODES[job.strategy] if job.kind else 0, in_place=job.in_place,
                                   sequenced=sequenced, sample=sample)
    lane.raw_bytes, lane.recv_raw_bytes = stats.raw_bytes, stats.recv_raw_bytes
    # This rank's measurement of a lane call, the transfer time filled in by _conclude: it is
    # written where the next call sends it, the measured part of the row (which the gather no
    # longer reads by then), so a lane call after a lane call copies nothing.
    lane.own = lane.row[-_MEASURED:]
    lane.buf[at_template:end] = measurement(CallStats(stats.mode, stats.reason, raw_bytes=lane.raw_bytes,
                                                      sent_bytes=lane.raw_bytes, transfer_s=1.0), 0.0, fused=sample)
    memo.lane = lane


def _rebind(memo, lane, key, keep, call_args, described) -> bool:
    """Move the lane (and the memo) onto other arrays of its buffers' layout, the arguments
    otherwise its own (``_reuse.loosen``): a training loop makes new arrays every step, and
    without this each of its calls took the full path (measured, 4 ranks on 2 cores, 4 MB
    per rank bypassed: 2x the time of a plain Alltoallv, against 1.1x on the lane). What the
    full path would check of the new arrays is what the loose key compares, and that the send
    and receive buffers share no memory: sharing it, the full path decides (and raises on
    every rank). ``described``: what ``_arguments`` gives for ``call_args``. Returns whether
    the lane is ready for the call."""
    if lane.in_place or memo.key is not lane.key or _reuse.loosen(key) != lane.loose:
        return False  # (the memo moved on: a full call since, whose lane opens after it)
    send = call_args[0] if isinstance(call_args[0], np.ndarray) else call_args[0][0]
    recv = call_args[1] if isinstance(call_args[1], np.ndarray) else call_args[1][0]
    s, r = _reuse.addresses(key)  # (where their memory is, as key_of read it)
    # (contiguous arrays, as parse found the lane's: their memory is one span each)
    if s < r + recv.nbytes and r < s + send.nbytes:
        return False  # they may share memory: the full path checks the segments
    job = _spec.shallow_copy(lane.job)
    job.send, job.recv = _spec.rebind(job.send, send), _spec.rebind(job.recv, recv)
    if lane.native is not None:
        lane.native.rebind(s, r)
    lane.smsg, lane.rmsg = job.send.mpi_message(), job.recv.mpi_message()
    lane.key, lane.job = key, job
    lane.args, lane.same = described
    # the memo follows: it keeps these arrays alive (their ids are in the key) and lets the
    # old ones go; its handshake row was keyed on the old Job's Spec objects
    memo.key, memo.keep, memo.job = key, keep, job
    memo.row_key = memo.row = None
    return True


def try_call(comm, sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass):
    """Run the call on the lane and return its CallStats, or None (nothing sent: take the full path)."""
    start = time.perf_counter()
    state = _mpi.cached_state(comm)
    if state is None or state.inflight is not None:
        return None
    lane = state.memo.lane
    if lane is None:
        return None
    if lane.same is None or not _is_repeat(lane.same, sendbuf, recvbuf, abs_error, rel_error, strategy, bounds,
                                           bypass):
        call_args = (sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass)
        described = _arguments(*call_args)
        if described[0] is None or described[0] != lane.args:
            key, keep = _reuse.key_of(*call_args, None, _spec.is_in_place(sendbuf, _mpi.load()))
            if key is None or (key != lane.key and not _rebind(state.memo, lane, key, keep, call_args, described)):
                return None
    job, costs = lane.job, state.costs
    if lane.mode != (_RAW_CODE if job.kind else 0):
        return None
    pending, state.pending = state.pending, None
    if pending is not lane.own:  # (after a lane call it is already in place)
        lane.own[:] = 0.0 if pending is None else pending
    native, decision = lane.native, None
    if native is not None:  # decision, gather, payload, bookkeeping: one compiled call
        sample, transfer, gathered, reason, modelled, bandwidth, ratio, compress, decompress, pays = native.run(
            lane.buf, native.plan, costs.vector)
        if sample == _native.NOT_RAW:
            state.pending = pending
            return None
        reason = REASONS[int(reason)]
        model = {"bandwidth_Bps": bandwidth, "ratio": ratio, "compress_Bps": compress, "decompress_Bps": decompress,
                 "pays": pays != 0.0} if modelled else {}
        failures = [] if sample != _native.FAILED else [_mpi.load().Exception(code) for code in native.codes()]
        agreed = lane.sequenced and native.failed_in_payload()  # (posted only after the table was agreed)
    else:
        decision = costs.decide(job.bypass, job.strategy) if job.kind else None
        if decision is not None and decision.mode != "raw":
            state.pending = pending
            return None
        reason, model = (decision.reason, decision.model) if job.kind else (None, None)
        sample, transfer, gathered, failures, agreed = _through_mpi4py(state.comm, lane, costs)
        if sample != -2.0 and decision is not None:
            costs.commit(decision)
    if failures and lane.sequenced:  # (no verdict to reach: the full path's MPI call raises)
        state.memo.lane = None
        if agreed:  # the payload failed after an agreed table: the full path's handshake had
            # absorbed the measurements and committed the decision by then (agree_to_start);
            # without it this rank's schedule would lag the others' (ranks disagree on mode)
            costs.absorb(lane.table[:, -_MEASURED:].max(axis=0))
            if native is None:
                costs.commit(decision)
            elif job.kind:
                commit_next(costs.vector)
        raise failures[0]
    if failures:
        sample = -2.0
    in_place = "mpi" if lane.in_place else None
    if sample == -2.0:
        state.memo.lane = None  # whatever happens next, this lane's arguments are no longer agreed
        agreement, reduced = _handshake.conclude(state.comm, job, lane.table, not lane.sequenced, failures,
                                                 state.memo, _mpi.load(), gathered)
        costs.absorb(reduced)
        if native is None:
            costs.commit(decision)
        elif job.kind:  # what the compiled call left uncommitted
            commit_next(costs.vector)
        fused = not lane.sequenced
        if lane.sequenced:  # nothing sent yet: as the full path after its handshake
            transfer, in_place, fused = _sequenced_fallback(state.comm, lane, agreement)
        own = measurement(CallStats("raw" if job.kind else "passthrough", "", raw_bytes=lane.raw_bytes,
                                    sent_bytes=lane.raw_bytes, transfer_s=transfer), 0.0, fused=fused)
    else:  # the agreed table: what absorb(reduced) would do, done (a raw sample is recorded)
        if sample == -1.0:
            costs.absorb(lane.reduced)
        own = lane.own
    raw, recv_raw = lane.raw_bytes, lane.recv_raw_bytes
    if job.kind:
        stats = CallStats("raw", reason, None, raw, raw, recv_raw, recv_raw, gathered, 0.0, transfer, model=model)
    else:
        stats = CallStats("passthrough", "not float", None, raw, raw, recv_raw, recv_raw, gathered, 0.0, transfer)
    stats.in_place = in_place
    stats.total_s = time.perf_counter() - start
    state.pending = own
    state.last = stats
    return stats


def _through_mpi4py(pcomm, lane, costs):
    """The lane's MPI calls through mpi4py, the messages the full path posts (a fused lane:
    as ``_handshake.fused_payload``), and its bookkeeping. Returns (what ``_conclude``
    returns, or -2.0 when the table is not the agreed one (a sequenced lane sent nothing
    then); seconds of the payload (a fused lane: with the gather); seconds until the gather
    completed; MPI's exceptions; whether a sequenced lane found the table agreed and its
    payload failed)."""
    failures = []
    t = time.perf_counter()
    try:
        request = pcomm.Iallgather(lane.row, lane.table)
    except Exception as exc:
        return -2.0, 0.0, 0.0, [exc], False
    if not lane.sequenced:
        _handshake.fused_payload(request, lambda: pcomm.Alltoallv(lane.smsg, lane.rmsg), failures)
        transfer = gathered = time.perf_counter() - t
        sample = -2.0 if failures else _conclude(lane.buf, lane.size, lane.row.size, transfer, costs.vector, True)
        return sample, transfer, gathered, failures, False
    try:
        request.Wait()
    except Exception as exc:
        return -2.0, 0.0, 0.0, [exc], False
    gathered = time.perf_counter() - t
    if not _agreed(lane.buf, lane.size, lane.row.size):
        return -2.0, 0.0, gathered, failures, False
    t = time.perf_counter()
    try:
        pcomm.Alltoallv(lane.smsg, lane.rmsg)
    except Exception as exc:
        return -2.0, 0.0, gathered, [exc], True
    transfer = time.perf_counter() - t
    return _conclude(lane.buf, lane.size, lane.row.size, transfer, costs.vector, lane.in_place), transfer, \
        gathered, failures, False


def _sequenced_fallback(pcomm, lane, agreement):
    """A sequenced lane's payload when the gathered table was not the agreed one but sound
    (another rank's arguments changed): what the full path sends after its handshake. Returns
    (seconds, CallStats.in_place, whether the transfer is a bandwidth sample)."""
    MPI = _mpi.load()
    in_place = None
    if agreement.in_place:
        send, in_place = MPI.IN_PLACE, "mpi"
    elif lane.in_place:  # some rank sends a buffer: this one sends a copy (as _collective.raw_send)
        job = copy.copy(lane.job)  # (the memo's Job keeps its deferred copy for later calls)
        job.take_snapshot()
        send, in_place = job.send.mpi_message(), "copy"
    else:
        send = lane.smsg
    t = time.perf_counter()
    pcomm.Alltoallv(send, lane.rmsg)
    return time.perf_counter() - t, in_place, agreement.in_place
