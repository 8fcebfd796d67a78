"""The blocking compressed Alltoallv: compress, handshake, exchange frames, decode, agree.

Messages of one compressed call (P ranks, P <= 64): the frames are compressed first (the mode
is decided from state every rank shares), then one ``Iallgather`` of 20 + 6P doubles per rank
(errors, settings, counts, blob sizes, measurements), one ``Ialltoallv`` of the blobs, and one
``Allreduce`` of a decode-error flag. A bypassed or non-float call posts the ``Iallgather``,
runs the blocking ``Alltoallv`` of the caller's buffers while it is in flight, and checks the
verdict after both (see :mod:`._handshake`): one synchronisation, as a plain ``Alltoallv``;
in place on host buffers, the ``Alltoallv`` follows the gather (whether every rank is in
place, which ``MPI_IN_PLACE`` needs, is known only then).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from ..errors import CorruptFrameError
from . import _device, _express, _handshake, _interrupts, _mpi, _protocol, _reuse, _segment, _spec
from ._errors import LocalError
from ._stats import MODE_CODES, CallStats, measurement

__all__ = ["alltoallv", "begin", "agree_to_start", "stage_raw", "raw_send", "host_flat", "codec_flat", "codec_flats", "put_back",
           "blob_placement", "remote_bytes", "finish"]


def begin(comm, sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass, chunk_bytes=None):
    """Shared start of both calls: parse, validate and decide locally (nothing exchanged yet).
    ``chunk_bytes`` None for the blocking call, else the pipelined call's.

    Returns (MPI, state, job, decision, stats, start time); ``decision`` is None for
    pass-through data or when this rank's arguments are invalid (``job.error``).
    """
    MPI = _mpi.load()
    start = time.perf_counter()
    state = _mpi.state_of(comm)
    if state.inflight is not None:  # one pipelined call in flight per communicator
        state.inflight.wait_quietly()
    size, rank = state.size, state.rank  # (not state.comm: its duplication may still be in flight)
    key, keep = _reuse.key_of(sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass, chunk_bytes,
                              _spec.is_in_place(sendbuf, MPI))
    job = state.memo.lookup(key)
    if job is None:
        job = _protocol.prepare(sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass,
                                size, rank, MPI, chunk_bytes)
        if job.error is None and key is not None:
            state.memo.store(key, keep, job)
    decision = None
    if job.error is None and job.kind:
        decision = state.costs.decide(job.bypass, job.strategy)
        if decision.mode == "compressed":  # in place: it encodes from a copy (only raw calls can skip it)
            job.take_snapshot()
        stats = CallStats(decision.mode, decision.reason, decision.encoder, model=decision.model)
        stats.raw_bytes, stats.recv_raw_bytes = remote_bytes(job, rank)
        if decision.mode == "compressed" and (job.send.device or job.recv.device):
            stats.codec = state.placement.choose() if _device.gpu_codec_usable() else "cpu"
    else:
        stats = CallStats("passthrough", "not float")
        if job.error is None:
            stats.raw_bytes, stats.recv_raw_bytes = remote_bytes(job, rank)
    if job.in_place:
        stats.in_place = "copy"  # (raw_send may hand MPI the buffer instead)
    return MPI, state, job, decision, stats, start


def agree_to_start(state, job, decision, stats, MPI, blob_sizes=None, post_payload=None, streamed=False):
    """The handshake (raises on every rank if any has a problem), then commit the decision.
    ``streamed``: a compressed blocking call that exchanges segment by segment (it must be
    agreed: its messages differ from those of a call that compresses everything first)."""
    start = time.perf_counter()
    mode = 0 if decision is None else _handshake.STREAMED if streamed else MODE_CODES[decision.mode]
    agreement = _handshake.handshake(state.comm, job, state, mode, MPI, blob_sizes, post_payload)
    state.costs.commit(decision)
    stats.handshake_s = time.perf_counter() - start
    return agreement


def remote_bytes(job, rank: int):
    """Bytes this rank sends to, and receives from, other ranks (its own segment excluded)."""
    s, r = job.send, job.recv
    return (int(s.counts.sum() - s.counts[rank]) * s.elem_size, int(r.counts.sum() - r.counts[rank]) * r.elem_size)


def host_flat(spec, preserve: bool):
    """``spec.flat`` on the host: itself, or a staging copy of a GPU buffer."""
    if not spec.device:
        return spec.flat
    return _device.to_host(spec.flat) if preserve else np.empty(spec.flat.shape, dtype=spec.flat.dtype)


def codec_flat(spec, receiving: bool, place, stats=None):
    """Where this side's segments are encoded from / decoded into: the GPU buffer itself when
    the codec runs on the GPU (``place``: ``CallStats.codec``, see :mod:`._placement`), else
    ``spec.flat`` or its host staging copy (a receive buffer's staging copy keeps what will
    not be received). The copy's time counts in ``stats.staging_s``."""
    if spec.device and place == "gpu":
        return spec.flat
    start = time.perf_counter()
    flat = host_flat(spec, not (receiving and spec.tiles_flat))
    if stats is not None and spec.device:
        stats.staging_s += time.perf_counter() - start
    return flat


def codec_flats(job, stats, rank: int):
    """(send, receive) flats of a compressed call (:func:`codec_flat`), made before its
    handshake: a staging copy that fails (out of host memory, a GPU fault) is then this
    rank's error, agreed on like any other; (None, None) with ``job.error`` set."""
    try:
        return codec_flat(job.send, False, stats.codec, stats), codec_flat(job.recv, True, stats.codec, stats)
    except Exception as exc:
        job.error = LocalError.from_exception(exc, rank, "staging the buffers through host memory")
        return None, None


def blob_placement(send_flat) -> dict:
    """``encode``'s keyword for blobs of ``send_flat``'s segments: on the device for a CUDA-aware
    MPI when the segments are on the device (empty otherwise: host blobs, the default)."""
    return {"on_device": True} if _device.is_device(send_flat) and _device.cuda_aware_mpi() else {}


def put_back(spec, flat, stats=None) -> None:
    """After decoding into ``codec_flat(spec)``: copy a host staging buffer back to the GPU
    (its time counts in ``stats.staging_s``), and wait until the GPU has written the receive
    buffer (the caller may read it on any stream once the call returns, as after a plain
    Alltoallv)."""
    if spec.device and not _device.is_device(flat):
        start = time.perf_counter()
        _device.to_device(flat, spec.flat)
        if stats is not None:
            stats.staging_s += time.perf_counter() - start
    if spec.device:
        _device.results_ready(spec.flat)


def _own_segment(job, rank: int, send_flat, recv_flat) -> None:
    """Copy this rank's own segment (exact), wherever the two buffers live."""
    s, r = job.send, job.recv
    if s.counts[rank]:
        _device.copy(recv_flat[r.displs[rank]:r.displs[rank] + r.counts[rank]],
                     send_flat[s.displs[rank]:s.displs[rank] + s.counts[rank]])



def stage_raw(job):
    """The MPI messages of a plain exchange of the caller's buffers, and the finisher to call
    after it (None: nothing to do): GPU buffers are staged through host buffers unless MPI is
    CUDA-aware. The staging copies run here, before anything is posted."""
    s, r = job.send, job.recv
    if not (s.device or r.device):
        return s.mpi_message(), r.mpi_message(), None
    if _device.cuda_aware_mpi():  # device sides as their flat views: contiguous 1-D, in memory order
        _device.ready_for_mpi(s.flat, r.flat)
        smsg, rmsg = ([x.flat if x.device and x.flat is not None else x.buf, (x.counts, x.displs), x.datatype]
                      for x in (s, r))
        return smsg, rmsg, None
    send_host, recv_host = host_flat(s, True), host_flat(r, not r.tiles_flat)  # keep what is not received
    smsg = [send_host, (s.counts, s.displs), s.datatype]
    rmsg = [recv_host, (r.counts, r.displs), r.datatype]

    def finish_copy():
        if r.device:
            put_back(r, recv_host)
    return smsg, rmsg, finish_copy


def has_empty_segment(job, rank: int) -> bool:
    """Whether this rank sends 0 bytes to, or expects 0 bytes from, another rank (or sends
    itself other than it expects). Such a rank does not fuse its payload with the handshake.
    Why: MPI sends no message for a count of 0, so a mismatch where one side of the pair is 0
    is no MPI error a fused payload returns with: a receiver expecting data from a sender of 0
    waits forever, and data sent to a receiver expecting 0 stays queued for the next call (both
    found by a fuzzing review). Any such mismatch has a rank on its empty side: that rank
    waits for the verdict, and on a mismatch its filler completes the fused peers' exchange
    (see _handshake). Its own segment's pair is its own: 0 to itself and 0 from itself fuse."""
    sent = job.send.counts * job.send.elem_size
    expected = job.recv.counts * job.recv.elem_size
    if sent[rank] != expected[rank]:
        return True
    return bool(np.count_nonzero(sent) + (sent[rank] == 0) < sent.size
                or np.count_nonzero(expected) + (expected[rank] == 0) < expected.size)


def fuses(state, job, rank: int) -> bool:
    """Whether this raw call posts its payload with the handshake (see _handshake): not in
    place (MPI_IN_PLACE needs every rank's flag first), no empty segment of its own
    (:func:`has_empty_segment`), and none on any rank in the last agreed table
    (``memo.sequenced``). Why the last: when one rank waits for the verdict, the others gain
    little from posting earlier (the payload completes only once that rank has posted it too),
    and on shared cores their spinning in the payload slows it. Measured, 4 ranks / 2 cores,
    10.6 MB per rank, rank 1 sending rank 0 nothing: 0.58-0.63x plain with the other two
    fused, 0.87-0.91x with every rank waiting. Declining to fuse is always safe (the
    protocol mixes fused and waiting ranks), so a rank may judge from what it last saw."""
    return job.fill_send is None and not state.memo.sequenced and not has_empty_segment(job, rank)


def raw_send(job, agreement, staged, stats, MPI):
    """The send side of a raw exchange after its handshake: ``MPI.IN_PLACE`` when every rank
    sends in place (``agreement.in_place``), else the staged send message (for a rank in place,
    its copy of the receive buffer, taken now)."""
    if agreement.in_place:
        stats.in_place = "mpi"
        return MPI.IN_PLACE
    job.take_snapshot()
    return staged[0]


def finish(state, stats, start, alt=None, fused=False, failed=False):
    """Record a completed call: total time, last stats, the measurement for the next call."""
    stats.total_s = time.perf_counter() - start
    if stats.codec is not None and not failed:  # (not total_s: the caller's time before wait() is not the call's)
        state.placement.record(stats.codec, stats.compress_s + stats.transfer_s + stats.decompress_s + stats.staging_s)
    state.pending = measurement(stats, 0.0, alt, fused)  # no latency correction: skew makes it unreliable
    state.last = stats
    return stats


def calibrate(segments, plan, row, encoder: str) -> np.ndarray:
    """Measure the other encoder on the same segments: (inv ratio, s/byte compress, s/byte decompress)."""
    other = "compact" if encoder == "fast" else "fast"
    raw = sum(seg.nbytes for _, seg in segments)
    if not raw:
        return None
    d, first = segments[0]
    _segment.warm_up(first, plan, d, row, other)
    start = time.perf_counter()
    blobs = [_segment.encode(seg, 0, plan, d, row, other) for d, seg in segments]
    mid = time.perf_counter()
    for (_, seg), blob in zip(segments, blobs):
        _segment.decode(blob, _device.empty_like(seg))
    end = time.perf_counter()
    return np.array([sum(b.size for b in blobs) / raw, (mid - start) / raw, (end - mid) / raw])


def _exclusive_cumsum(sizes: np.ndarray) -> np.ndarray:
    displs = np.zeros_like(sizes)
    np.cumsum(sizes[:-1], out=displs[1:])
    return displs



def _compress_all(job, decision, stats, rank: int, size: int, send_host):
    """Compress every remote segment of ``send_host`` (before the handshake); returns (blobs,
    alt calibration).

    GPU segments are compressed on the GPU; their blobs stay there for a CUDA-aware MPI."""
    s = job.send
    blobs, alt = {}, None
    if job.error is not None:  # (staging failed)
        return blobs, alt
    on_device = blob_placement(send_host)
    segments = [(d, send_host[s.displs[d]:s.displs[d] + s.counts[d]]) for d in range(size)
                if d != rank and s.counts[d] > 0]
    start = time.perf_counter()
    try:
        if segments:  # compile time is not codec time
            _segment.warm_up(segments[0][1], job.plan, segments[0][0], s.row, decision.encoder)
            start = time.perf_counter()
        for d, seg in segments:
            blobs[d] = _segment.encode(seg, 0, job.plan, d, s.row, decision.encoder, **on_device)
        stats.compress_s += time.perf_counter() - start
        if decision.calibrate:
            alt = calibrate(segments, job.plan, s.row, decision.encoder)
    except Exception as exc:  # reported in the handshake: every rank raises, nobody waits
        job.error = LocalError.from_exception(exc, rank, "compressing")
    return blobs, alt



def _compressed(state, job, decision, stats, MPI):
    pcomm = state.comm
    r = job.recv
    size, rank = pcomm.Get_size(), pcomm.Get_rank()
    send_host, recv_host = codec_flats(job, stats, rank)
    blobs, alt = _compress_all(job, decision, stats, rank, size, send_host)
    sizes = np.array([blobs[d].size if d in blobs else 0 for d in range(size)], dtype=np.int64)
    rsizes = agree_to_start(state, job, decision, stats, MPI, sizes).blob_sizes
    sdispls, rdispls = _exclusive_cumsum(sizes), _exclusive_cumsum(rsizes)
    device_blobs = any(_device.is_device(b) for b in blobs.values())
    sendbytes = _device.empty(int(sizes.sum()), np.uint8, like=send_host) if device_blobs else \
        np.empty(int(sizes.sum()), dtype=np.uint8)
    for d, blob in blobs.items():
        _device.copy(sendbytes[sdispls[d]:sdispls[d] + blob.size], blob)
    if _device.is_device(recv_host) and _device.cuda_aware_mpi() and rsizes.sum():  # frames land on the GPU
        recvbytes = _device.empty(int(rsizes.sum()), np.uint8, like=recv_host)
    else:
        recvbytes = np.empty(int(rsizes.sum()), dtype=np.uint8)
    _device.ready_for_mpi(sendbytes, recvbytes)
    start = time.perf_counter()
    _mpi.wait(pcomm.Ialltoallv([sendbytes, (sizes, sdispls), MPI.BYTE], [recvbytes, (rsizes, rdispls), MPI.BYTE]))
    stats.transfer_s = time.perf_counter() - start
    stats.sent_bytes, stats.recv_bytes = int(sizes.sum()), int(rsizes.sum())
    start = time.perf_counter()
    what, local = "copying its own segment", None
    try:
        _own_segment(job, rank, send_host, recv_host)  # a local copy, exact
        for src in range(size):
            if src == rank or not (r.counts[src] or rsizes[src]):
                continue
            what = f"decoding the segment from rank {src}"
            seg = recv_host[r.displs[src]:r.displs[src] + r.counts[src]]
            blob = recvbytes[rdispls[src]:rdispls[src] + rsizes[src]]
            if _segment.decode(blob, seg) != (0, seg.size):
                raise CorruptFrameError(f"the frames from rank {src} cover fewer than its {seg.size} elements")
    except Exception as exc:
        local = LocalError.from_exception(exc, rank, what)
        local.category = "decode"
    staged = stats.staging_s
    put_back(r, recv_host, stats)  # (its wait for the GPU's decodes is decompression time)
    stats.decompress_s += time.perf_counter() - start - (stats.staging_s - staged)
    _protocol.agree(pcomm, local, MPI, patient=True)
    return alt



def alltoallv(comm, sendbuf, recvbuf, *, abs_error=None, rel_error=None, strategy="auto", bounds=None,
              bypass="auto", express=True) -> CallStats:
    """Implementation of :func:`embzip.comm.Alltoallv` (see there); ``express=False``: the
    caller already tried the express lane."""
    held = _interrupts.enter()  # (the Comm wrapper's calls come here directly)
    try:
        return _alltoallv(comm, sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass, express)
    finally:
        _interrupts.leave(held)


def _alltoallv(comm, sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass, express) -> CallStats:
    if express:
        stats = _express.try_call(comm, sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass)
        if stats is not None:
            return stats
    MPI, state, job, decision, stats, start = begin(comm, sendbuf, recvbuf, abs_error, rel_error, strategy,
                                                    bounds, bypass)
    alt = None
    if decision is not None and decision.mode == "compressed":
        if decision.model.get("pays"):  # a slow link: overlap the phases (the model is agreed)
            from ._pipeline import exchange_segments  # (it imports this module)

            alt = exchange_segments(state, job, decision, stats, MPI)
        else:  # compute-bound (or nothing measured yet): compress everything, then one Alltoallv
            alt = _compressed(state, job, decision, stats, MPI)
    else:
        staged, post_payload = (None, None, None), None
        if job.error is None:
            try:  # before the handshake: a staging copy that fails is this rank's error, agreed on
                staged = stage_raw(job)
            except Exception as exc:
                job = dataclasses.replace(job, error=LocalError.from_exception(
                    exc, state.comm.Get_rank(), "staging the buffers through host memory"))
            else:  # the blocking payload exchange, run inside the handshake when it can (fuses)
                if fuses(state, job, state.comm.Get_rank()):
                    post_payload = functools.partial(state.comm.Alltoallv, staged[0], staged[1])

        t = time.perf_counter()
        agreement = agree_to_start(state, job, decision, stats, MPI, post_payload=post_payload)
        if agreement.fused:  # one phase: handshake_s is the part until the handshake completed
            stats.transfer_s, stats.handshake_s = time.perf_counter() - t, agreement.latency
            if staged[2] is not None:
                staged[2]()
            elif not state.memo.sequenced:  # (open_lane declines GPU buffers: they have no memo key)
                # a repeat can take the express lane (not when this call's table shows an empty
                # segment: the next call waits for the verdict, see fuses)
                _express.open_lane(state, job, 0 if decision is None else MODE_CODES[decision.mode], stats,
                                   (sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass))
        else:  # in place, an empty segment, or the pairwise handshake (above GATHER_MAX ranks): not fused
            send = raw_send(job, agreement, staged, stats, MPI)  # (an in-place copy is not transfer time)
            t = time.perf_counter()
            state.comm.Alltoallv(send, staged[1])
            if staged[2] is not None:
                staged[2]()
            stats.transfer_s = time.perf_counter() - t
            if not (job.send.device or job.recv.device) and state.comm.Get_size() <= _handshake.GATHER_MAX and (
                    agreement.in_place if job.in_place else state.memo.sequenced):
                # a repeat can take the sequenced express lane (with the buffers as they are:
                # MPI's in place on every rank, or an empty segment in this call's table)
                _express.open_lane(state, job, 0 if decision is None else MODE_CODES[decision.mode], stats,
                                   (sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass),
                                   sequenced=True)
        stats.sent_bytes, stats.recv_bytes = stats.raw_bytes, stats.recv_raw_bytes
        # (after a gathered handshake, every rank starts the payload as it arrives: a bandwidth sample)
        return finish(state, stats, start, alt, agreement.fused or agreement.in_place)
    return finish(state, stats, start, alt)
