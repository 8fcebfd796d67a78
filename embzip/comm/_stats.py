"""Per-call statistics, and the measurement vector each rank contributes to the cost model."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["CallStats", "measurement", "MEASUREMENT_FIELDS", "MODE_CODES"]

MODE_CODES = {"compressed": 1, "raw": 2}
ENCODER_CODES = {"fast": 1, "compact": 2}

#: What one rank measured in a call, as sent to the next call's reduction (MAX over ranks).
#: Times per byte and inverse ratios make "max" mean "the slowest / least compressible rank".
MEASUREMENT_FIELDS = (
    "mode",  # 1 compressed, 2 raw (0: nothing measured)
    "encoder",  # 1 fast, 2 compact
    "raw_bytes",  # float bytes this rank sent to other ranks, uncompressed
    "wire_bytes",  # bytes it put on the wire for them (0: the transfer time says nothing of bandwidth)
    "transfer_s",  # time of the payload exchange
    "latency_s",  # time of a tiny collective just before it (the fixed cost of any exchange)
    "compress_spb",  # seconds per raw byte, compressing
    "decompress_spb",  # seconds per raw byte received, decompressing
    "inv_ratio",  # wire / raw for the frames
    "alt_inv_ratio",  # the same for the other encoder, when it was calibrated (else 0)
    "alt_compress_spb",
    "alt_decompress_spb",
    # 1 / transfer_s: its MAX is 1 / the *fastest* rank's transfer. An uncompressed call fuses
    # its handshake with the payload, so a rank that arrived early counts its wait for the late
    # ones as transfer; the last to arrive waited for nobody. (0, the "nothing measured" value,
    # is neutral under MAX.)
    "inv_transfer_s",
)


@dataclasses.dataclass(slots=True)  # (slots: a bypassed call builds one in ~1 us less)
class CallStats:
    """What one call did on this rank.

    Attributes
    ----------
    mode : str
        ``"compressed"``, ``"raw"`` (float data sent uncompressed: the bypass) or
        ``"passthrough"`` (non-float data, always sent as is).
    reason : str
        Why: ``"cost model"``, ``"calibration"``, ``"probe"``, ``"forced"``, ``"not float"``.
    strategy : str or None
        The encoder used for the frames: ``"fast"`` or ``"compact"``.
    raw_bytes, sent_bytes : int
        Payload bytes this rank sent to *other* ranks: before compression, and on the wire
        (frames, or the raw bytes when bypassed). The segment for itself is copied locally.
    recv_raw_bytes, recv_bytes : int
        The same for what it received.
    handshake_s, compress_s, transfer_s, decompress_s, total_s : float
        Seconds on this rank: agreement collectives, compressing, the payload exchange (for a
        pipelined call: the time not spent compressing or decompressing), decompressing, all.
        An uncompressed call runs its handshake and exchange together: ``transfer_s`` covers
        both and ``handshake_s`` is the part until the handshake completed.
    model : dict
        Cost-model inputs the decision used (agreed across ranks): ``bandwidth_Bps``,
        ``ratio``, ``compress_Bps``, ``decompress_Bps``, ``pays``; empty before calibration.
    overlapped : bool
        A pipelined compressed call: phases overlapped, so ``transfer_s`` is only the part of
        the wall time not spent compressing or decompressing.
    codec : str or None
        Where this rank ran the codec for its GPU buffers in a compressed call: ``"gpu"``, or
        ``"cpu"`` (the buffers staged through host memory). None when it had no GPU buffer or
        the call was not compressed. See ``EMBZIP_COMM_CODEC`` in docs/comm.md.
    staging_s : float
        Seconds copying GPU buffers to and from host memory for the CPU codec (``codec ==
        "cpu"``); not part of ``compress_s`` / ``decompress_s``, which are codec time.
    in_place : str or None
        A call with ``MPI.IN_PLACE`` as sendbuf on this rank: ``"mpi"`` when the buffer went to
        MPI's own in-place ``Alltoallv`` (a raw call in place on every rank, host buffers), else
        ``"copy"`` (a copy of the receive buffer was sent). None for a call with a send buffer.
    """

    mode: str
    reason: str
    strategy: object = None
    raw_bytes: int = 0
    sent_bytes: int = 0
    recv_raw_bytes: int = 0
    recv_bytes: int = 0
    handshake_s: float = 0.0
    compress_s: float = 0.0
    transfer_s: float = 0.0
    decompress_s: float = 0.0
    total_s: float = 0.0
    model: dict = dataclasses.field(default_factory=dict)
    overlapped: bool = False
    codec: object = None
    staging_s: float = 0.0
    in_place: object = None

    @property
    def bypassed(self) -> bool:
        """True when float data went uncompressed (the cost model said compression would not pay)."""
        return self.mode == "raw"

    @property
    def ratio(self) -> float:
        """raw_bytes / sent_bytes (1.0 when nothing was sent)."""
        return self.raw_bytes / self.sent_bytes if self.sent_bytes else 1.0


def measurement(stats: CallStats, latency_s: float, alt=None, fused: bool = False) -> np.ndarray:
    """This rank's measurement vector (see MEASUREMENT_FIELDS) for the next call's reduction."""
    vec = np.zeros(len(MEASUREMENT_FIELDS))
    if stats.mode not in MODE_CODES or stats.raw_bytes <= 0:
        return vec
    vec[0] = MODE_CODES[stats.mode]
    vec[1] = ENCODER_CODES.get(stats.strategy, 0)
    vec[2], vec[3] = stats.raw_bytes, 0 if stats.overlapped else stats.sent_bytes
    vec[4], vec[5] = stats.transfer_s, latency_s
    # only a fused call's transfer starts when the rank arrives (a pipelined raw call's Wait may
    # start after the data moved): elsewhere 0, and the cost model uses the slowest transfer
    vec[12] = 1.0 / stats.transfer_s if fused and stats.transfer_s > 0 else 0.0
    if stats.mode == "compressed":
        vec[6] = stats.compress_s / stats.raw_bytes
        vec[7] = stats.decompress_s / max(stats.recv_raw_bytes, 1)
        vec[8] = stats.sent_bytes / stats.raw_bytes  # the ratio, even when wire bytes are withheld
        if alt is not None:
            vec[9:12] = alt
    return vec
