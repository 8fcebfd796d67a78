"""The pipelined, nonblocking call: chunks compressed, sent, received and decoded concurrently.

A background thread (MPI must provide THREAD_MULTIPLE, which mpi4py requests by default;
otherwise this part runs inside ``Ialltoallv``) does all MPI work: the handshake (so that
``Ialltoallv`` returns before the other ranks have called it, as MPI's does), then it posts an ``Isend`` (tag ``1 + k``) for each chunk k as soon as a second thread has
compressed it, receives (``Improbe``) and decodes whatever has arrived, and keeps MPI's
progress going meanwhile, so compression, transfer and decompression overlap. Both sides derive each segment's chunking from agreed
values (counts, the sender's row width, ``chunk_bytes``), so every rank knows exactly how many
messages to expect: a rank that fails to compress still sends one empty message per chunk,
a rank that fails to decode still receives everything, and the final ``Allreduce`` of an
error flag makes every rank raise. No message is left unmatched, nothing hangs.

GPU buffers: chunks are compressed on the GPU and decoded on the GPU into the receive buffer
(see :mod:`._device`); the chunk messages are device buffers with a CUDA-aware MPI, else host
buffers that hold only the compressed bytes.
"""

from __future__ import annotations

import dataclasses
import queue
import time

import numpy as np

from . import _device, _interrupts, _protocol, _segment, _threads
from ._collective import agree_to_start, begin, blob_placement, calibrate, codec_flats, put_back, raw_send, stage_raw
from ._errors import LocalError
from ._request import Request

__all__ = ["ialltoallv", "chunking", "exchange_segments", "WHOLE_SEGMENTS"]

MAX_CHUNKS = 4096
#: ``chunk_bytes`` that makes each destination's segment one chunk (one frame, one message).
WHOLE_SEGMENTS = 1 << 62
_EMPTY = np.zeros(0, dtype=np.uint8)


def chunking(count: int, unit: int, itemsize: int, chunk_bytes: int):
    """[(offset, count)] element ranges of a segment's chunks (whole rows of ``unit`` values)."""
    if count <= 0:
        return []
    rows = count // unit
    k = max(1, min(rows, -(-count * itemsize // max(chunk_bytes, 1)), MAX_CHUNKS))
    cuts = [(i * rows // k) * unit for i in range(k + 1)]
    return [(cuts[i], cuts[i + 1] - cuts[i]) for i in range(k)]


class _Pipeline:
    """The thread's work for one compressed pipelined call."""

    def __init__(self, pcomm, job, decision, stats, MPI, flats, chunk_bytes=None):
        self.pcomm, self.job, self.decision, self.stats, self.MPI = pcomm, job, decision, stats, MPI
        chunk_bytes = job.chunk_bytes if chunk_bytes is None else chunk_bytes
        self.size, self.rank = pcomm.Get_size(), pcomm.Get_rank()
        s, r = job.send, job.recv
        itemsize = s.flat.dtype.itemsize
        self.my_units = my_units = _protocol.chunk_units(job)
        self.out_chunks = [chunking(int(s.counts[d]), int(my_units[d]), itemsize, chunk_bytes)
                           if d != self.rank else [] for d in range(self.size)]
        self.in_chunks = [chunking(int(r.counts[src]), int(job.units[src]), itemsize, chunk_bytes)
                          if src != self.rank else [] for src in range(self.size)]
        self.expected = sum(len(c) for c in self.in_chunks)
        # GPU buffers themselves when the codec runs on the GPU, else host arrays (codec_flats,
        # staged before the handshake)
        self.send_host, self.recv_host = flats
        self.blob_kw = blob_placement(self.send_host)
        self.recv_on_device = _device.is_device(self.recv_host) and _device.cuda_aware_mpi()
        self.decode_on_device = _device.is_device(self.recv_host)  # (then decoding takes _device.LOCK)
        self.deferred = []  # (source, chunk, blob) received while the codec lock was taken (_poll)
        self.deferred_count = 0
        # the caller's GPU, for this call's threads (which would start on device 0)
        self.gpu = _device.current_device() if s.device or r.device else None
        self.compress_error = self.decode_error = None  # set by the producer / by this thread
        self.bad_source = set()

    def run(self, request: Request):
        start, staged = time.perf_counter(), self.stats.staging_s  # (the copies before the handshake are not in start..)
        s, r, rank = self.job.send, self.job.recv, self.rank
        try:
            _device.use_device(self.gpu)  # (this may be the Ialltoallv thread)
            if s.counts[rank]:  # own segment: a local copy, exact
                _device.copy(self.recv_host[r.displs[rank]:r.displs[rank] + r.counts[rank]],
                             self.send_host[s.displs[rank]:s.displs[rank] + s.counts[rank]])
            self._exchange()
            put_back(r, self.recv_host, self.stats)
        except Exception as exc:  # an MPI or internal failure: still reach the agreement
            failure = LocalError.from_exception(exc, rank, "exchanging chunks")
        else:
            failure = None
        local = self.compress_error or self.decode_error or failure
        st = self.stats
        st.transfer_s = max(time.perf_counter() - start - st.compress_s - st.decompress_s - (st.staging_s - staged), 0.0)
        st.overlapped = True  # transfer_s is what overlap left over: not a bandwidth measurement
        try:
            _protocol.agree(self.pcomm, local, self.MPI, patient=True)
        except Exception as exc:
            request._error = exc

    def _exchange(self):
        MPI, s = self.MPI, self.job.send
        first = next((d for d in range(self.size) if self.out_chunks[d]), None)
        if first is not None:  # compile time is not codec time
            offset, count = self.out_chunks[first][0]
            region = self.send_host[int(s.displs[first]) + offset:int(s.displs[first]) + offset + count]
            _segment.warm_up(region, self.job.plan, first, int(self.my_units[first]), self.decision.encoder)
        # Two threads: this one only talks to MPI (posts sends, probes, receives, decodes), so
        # MPI keeps making progress (a rendezvous send moves only while MPI is being called)
        # while the other compresses the next chunk in numba, which releases the GIL.
        ready = queue.SimpleQueue()
        producer = _threads.start("embzip-compress", self._compress_chunks, ready)
        sends, keep, producing, nap = [], [], True, 1e-5
        while producing or self.expected:
            busy = False
            while producing:
                try:
                    item = ready.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    producing = False
                    break
                d, k, blob = item
                keep.append(blob)
                sends.append(self.pcomm.Isend([blob, MPI.BYTE], d, tag=1 + k))
                busy = True
            busy |= self._poll() > 0
            if sends:
                MPI.Request.Testall(sends)  # drives progress of the sends in flight
            if not busy:  # nothing happened: nap rather than spin (cores are shared)
                time.sleep(nap)
                nap = min(2 * nap, 1e-4)
            else:
                nap = 1e-5
        producer.result()  # (it reports its failures through compress_error)
        while self.deferred:  # one chunk at a time, MPI driven between them (sends may be in flight)
            self._decode_deferred(wait=True, limit=1)
            if sends:
                MPI.Request.Testall(sends)
        while not MPI.Request.Testall(sends):  # receivers drain them; nap meanwhile
            time.sleep(1e-4)

    def _compress_chunks(self, ready):
        """Producer thread: compress every chunk in send order; queue (dest, chunk, blob), then None."""
        s = self.job.send
        order = [(self.rank + i) % self.size for i in range(1, self.size)]
        try:
            for k in range(max((len(c) for c in self.out_chunks), default=0)):
                for d in order:
                    if k >= len(self.out_chunks[d]):
                        continue
                    blob = _EMPTY
                    if self.compress_error is None:
                        offset, count = self.out_chunks[d][k]
                        seg_start = int(s.displs[d]) + offset
                        t = time.perf_counter()
                        try:
                            _device.use_device(self.gpu)  # (a thread of its own)
                            blob = _segment.encode(self.send_host[seg_start:seg_start + count], offset,
                                                   self.job.plan, d, int(self.my_units[d]), self.decision.encoder,
                                                   **self.blob_kw)
                            _device.ready_for_mpi(blob)  # (another thread sends it)
                            self.stats.sent_bytes += blob.size
                        except Exception as exc:  # keep sending (empty) messages: receivers count on them
                            self.compress_error = LocalError.from_exception(exc, self.rank, "compressing")
                            blob = _EMPTY
                        self.stats.compress_s += time.perf_counter() - t
                    ready.put((d, k, blob))
        finally:
            ready.put(None)

    def _poll(self) -> int:
        """Receive every chunk that has arrived and decode what can be; return how many arrived.

        A GPU chunk whose decode would wait for the codec lock (the other thread is encoding)
        is kept for a later poll instead: blocked on the lock, this thread would stop calling
        MPI, and sends and receives in flight would stop moving meanwhile.
        """
        MPI = self.MPI
        self._decode_deferred(wait=False, limit=1)  # one per poll: the caller drives the sends between polls
        handled = 0
        while self.expected:
            status = MPI.Status()
            msg = self.pcomm.Improbe(MPI.ANY_SOURCE, MPI.ANY_TAG, status)
            if msg is None:
                return handled
            src, k, n = status.Get_source(), status.Get_tag() - 1, status.Get_count(MPI.BYTE)
            on_device = self.recv_on_device and n > 0
            blob = _device.empty(n, np.uint8, like=self.recv_host) if on_device else np.empty(n, dtype=np.uint8)
            _device.ready_for_mpi(blob)
            msg.Recv([blob, MPI.BYTE])
            self.expected -= 1
            handled += 1
            self.stats.recv_bytes += n
            if n == 0:
                continue  # the sender reports its own failure
            if not self.decode_on_device:
                self._decode(src, k, blob)
            elif _device.LOCK.acquire(blocking=False):
                try:
                    self._decode(src, k, blob)
                finally:
                    _device.LOCK.release()
            else:
                self.deferred.append((src, k, blob))
        return handled

    def _decode_deferred(self, wait: bool, limit: int | None = None) -> None:
        """Decode (up to ``limit`` of) the chunks :meth:`_poll` kept, if the codec lock is free
        (or, ``wait``, once it is)."""
        if not self.deferred or not _device.LOCK.acquire(blocking=wait):
            return
        try:
            done = 0
            while self.deferred and (limit is None or done < limit):
                self._decode(*self.deferred.pop(0))
                self.deferred_count += 1
                done += 1
        finally:
            _device.LOCK.release()

    def _decode(self, src: int, k: int, blob) -> None:
        """Decode chunk ``k`` from rank ``src`` into the receive buffer (errors are recorded)."""
        if src in self.bad_source or self.decode_error is not None:
            return  # after a failure, only drain
        r = self.job.recv
        t = time.perf_counter()
        try:
            chunks = self.in_chunks[src]
            if not 0 <= k < len(chunks):
                raise ValueError(f"rank {src} sent chunk {k}, expected chunks 0..{len(chunks) - 1}")
            seg = self.recv_host[r.displs[src]:r.displs[src] + r.counts[src]]
            placed = _segment.decode(blob, seg)
            if placed != chunks[k]:
                raise ValueError(f"chunk {k} from rank {src} covers elements {placed}, expected {chunks[k]}")
        except Exception as exc:
            self.decode_error = LocalError.from_exception(exc, self.rank, f"decoding chunk {k} from rank {src}")
            self.decode_error.category = "decode"
            self.bad_source.add(src)
        self.stats.decompress_s += time.perf_counter() - t


class _Outcome:
    """Where :meth:`_Pipeline.run` leaves the agreed error of a blocking call."""

    _error = None


def exchange_segments(state, job, decision, stats, MPI):
    """The compressed exchange of a blocking call on a slow link (the cost model says
    compression pays): the pipeline with one chunk per destination.

    Why: segments compressed one after the other are sent as each is ready, and decoded as
    each arrives, so compression, transfer and decompression overlap across destinations,
    while each segment stays one frame (deduplicated as a whole: chunks of a DLRM segment
    compress ~20% worse). Measured with 4 ranks on 2 cores at 1 Gbit/s (DLRM step): 50-61 ms
    per call against 64-72 ms for compress-all-then-Alltoallv, and 67-80 ms with 0.5-2 MB
    chunks. On shared memory (nothing to hide behind) its threads cost 8-18% more than
    compress-all, which therefore stays the exchange of compute-bound calls. Returns the other
    encoder's calibration (or None); raises the agreed error.
    """
    s, rank = job.send, state.comm.Get_rank()
    flats = codec_flats(job, stats, rank)
    agree_to_start(state, job, decision, stats, MPI, streamed=True)
    outcome = _Outcome()
    _Pipeline(state.comm, job, decision, stats, MPI, flats, chunk_bytes=WHOLE_SEGMENTS).run(outcome)
    if outcome._error is not None:
        raise outcome._error
    if not decision.calibrate:
        return None
    try:  # a measurement only: one that fails is skipped (the next calibration retries)
        segments = [(d, flats[0][s.displs[d]:s.displs[d] + s.counts[d]]) for d in range(s.counts.size)
                    if d != rank and s.counts[d] > 0]
        return calibrate(segments, job.plan, s.row, decision.encoder)
    except Exception:
        return None


def ialltoallv(comm, sendbuf, recvbuf, *, abs_error=None, rel_error=None, strategy="auto", bounds=None,
               bypass="auto", chunk_bytes=512 * 1024) -> Request:
    """Implementation of :func:`embzip.comm.Ialltoallv` (see there)."""
    held = _interrupts.enter()  # (below THREAD_MULTIPLE the whole exchange runs in the call)
    try:
        return _ialltoallv(comm, sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass, chunk_bytes)
    finally:
        _interrupts.leave(held)


def _ialltoallv(comm, sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass, chunk_bytes) -> Request:
    MPI, state, job, decision, stats, start = begin(
        comm, sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass, chunk_bytes)
    if decision is not None and decision.mode == "compressed":
        decision.calibrate = False  # the pipeline measures one encoder; the other is calibrated by a blocking call
    raw = decision is None or decision.mode == "raw"
    staged = None
    if raw and job.error is None:
        try:  # before the handshake: a staging copy that fails is this rank's error, agreed on
            staged = stage_raw(job)
        except Exception as exc:
            job = dataclasses.replace(job, error=LocalError.from_exception(
                exc, state.rank, "staging the buffers through host memory"))
    flats = None if raw or job.error is not None else codec_flats(job, stats, state.rank)
    request = Request(state, stats, start)
    gpu = _device.current_device() if job.error is None and (job.send.device or job.recv.device) else None

    def handshake_then_exchange(request):
        # in the call's MPI thread: Ialltoallv returns before the other ranks have started it,
        # as MPI's does (a rank that waited in the handshake for a rank that first waits for
        # it, a Recv say, hung); an agreed error is then raised by wait() / test()
        try:
            _device.use_device(gpu)  # (the caller's GPU: a new thread starts on device 0)
        except Exception as exc:  # this rank's error, agreed on: the others wait in the handshake
            job.error = job.error or LocalError.from_exception(exc, state.rank, "selecting the caller's GPU")
        agreement = agree_to_start(state, job, decision, stats, MPI)
        if raw:
            request._on_done = staged[2]
            request._mpi_request = state.comm.Ialltoallv(raw_send(job, agreement, staged, stats, MPI), staged[1])
            stats.sent_bytes, stats.recv_bytes = stats.raw_bytes, stats.recv_raw_bytes
        else:  # (built after the handshake: it cuts chunks on the row widths agreed there)
            _Pipeline(state.comm, job, decision, stats, MPI, flats).run(request)

    if MPI.Query_thread() >= MPI.THREAD_MULTIPLE:
        request._work = _threads.start("embzip-ialltoallv", handshake_then_exchange, request)
    else:  # one thread for MPI: all of it here (still pipelined), and the call returns complete
        try:
            handshake_then_exchange(request)
        except Exception as exc:  # raised by wait() / test(), as with THREAD_MULTIPLE
            request._error = exc
    state.inflight = request
    return request
