"""The bypass decision: send raw when compression would not pay (the seed paper's model).

Compression pays when ``1/CR + B * (1/Tc + 1/Td) < 1`` (:func:`embzip.costmodel.pays`): ``B``
is the link bandwidth one rank sees during an all-to-all, ``Tc`` / ``Td`` the codec speeds
measured on the ranks themselves (under whatever contention the job has), ``CR`` the ratio
measured on the data. Every input comes from measurements all ranks reduced together, so every
rank computes the same decision and no vote is needed. Each input is the median of its last
``WINDOW`` measurements: one call slowed down by a noisy neighbour must not flip the choice.

Schedule on a communicator: calls compress until a compressed call's measurements have been
agreed (CR, Tc, Td; the other encoder is calibrated too when the strategy is ``"auto"``), then
send raw until a raw call's have (B): measurements are reduced in the next call's handshake,
and a call decides before its own handshake, so each phase lasts two calls. Then the model
decides, and what is not being used is re-measured now and then: the path not taken
("probe"), and with ``strategy="auto"`` the encoder not chosen, after 16 calls, then 32, ...
up to every 1024 while nothing changes.
"""

from __future__ import annotations

import collections

import numpy as np

from .. import costmodel
from .._jit import kernel
from ._stats import MEASUREMENT_FIELDS

__all__ = ["CostState", "Decision", "transfer_bandwidth"]

_F = {name: i for i, name in enumerate(MEASUREMENT_FIELDS)}
_ENC = {1: "fast", 2: "compact"}
FIRST_PROBE, LAST_PROBE = 16, 1024
WINDOW = 5
#: A compressed transfer updates the bandwidth estimate only when it moved this many bytes
#: per rank: smaller ones measure latency, not bandwidth.
MIN_BANDWIDTH_BYTES = 256 * 1024


_MODE, _RAW, _WIRE, _TRANSFER, _LATENCY, _INV_TRANSFER = (
    _F[name] for name in ("mode", "raw_bytes", "wire_bytes", "transfer_s", "latency_s", "inv_transfer_s"))


@kernel
def transfer_bandwidth(reduced):
    """Bytes/s one rank got in the transfer a MAX-reduced measurement vector describes, or 0.0
    when it says nothing about bandwidth. Compiled: the express lane calls it from its own
    compiled step, and :meth:`CostState.absorb` calls it too, so both read a call alike."""
    mode = reduced[_MODE]
    if mode == 0.0 or reduced[_RAW] <= 0.0:
        return 0.0
    wire, seconds = reduced[_WIRE], reduced[_TRANSFER]
    if mode == 2.0 and reduced[_INV_TRANSFER] > 0.0:  # the rank that waited for nobody
        seconds = 1.0 / reduced[_INV_TRANSFER]
    busy = seconds - reduced[_LATENCY]
    if 1e-6 > busy:  # max(busy, 1e-6), NaN kept as Python's max keeps it
        busy = 1e-6
    if wire > 0.0 and (mode == 2.0 or wire >= MIN_BANDWIDTH_BYTES):
        return wire / busy
    return 0.0


class Decision:
    """mode ("compressed" / "raw"), encoder, reason, whether to calibrate the other encoder."""

    __slots__ = ("mode", "encoder", "reason", "calibrate", "model", "next")

    def __init__(self, mode, encoder, reason, calibrate=False, model=None):
        self.mode, self.encoder, self.reason = mode, encoder, reason
        self.calibrate, self.model = calibrate, model or {}
        self.next = {}  # state updates to apply once every rank agreed the call goes ahead


def _median(values):
    """Median of a short window (None when empty); plain Python: it runs on every call."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


class CostState:
    """Agreed measurements of one communicator (identical on every rank)."""

    def __init__(self):
        # bytes/s one rank gets in an all-to-all, measured by raw and by compressed transfers
        self.bandwidths = {2: collections.deque(maxlen=WINDOW), 1: collections.deque(maxlen=WINDOW)}
        self.codecs = {}  # "fast"/"compact" -> deque of (inv_ratio, compress s/byte, decompress s/byte)
        self._codec = {}  # medians of ``codecs``, recomputed when a measurement arrives
        self.decision = None  # the model's last choice
        self.since_probe, self.interval = 0, FIRST_PROBE
        self.since_calibration, self.calibration_interval = 0, FIRST_PROBE
        self._codec_version = 0  # bumped whenever ``_codec`` changes: the key of ``_parameters``' memo
        self._parameters_version, self._parameters_codec, self._parameters_value = -1, None, None
        self._bandwidth = None  # ``bandwidth``, recomputed when a measurement arrives

    @property
    def raw_measured(self) -> bool:
        return bool(self.bandwidths[2])

    @property
    def bandwidth(self):
        """From raw transfers when there are any: compressed ones are smaller, so their time is
        more latency and they read low; they serve until a raw call (calibration, probe) ran."""
        return self._bandwidth

    def add_bandwidth(self, mode: int, value: float) -> None:
        """Record a bandwidth measured by a raw (``mode`` 2) or compressed (1) transfer."""
        self.bandwidths[mode].append(value)
        self._bandwidth = _median(self.bandwidths[2]) or _median(self.bandwidths[1])

    @property
    def codec(self):
        """Encoder -> (inv_ratio, compress s/byte, decompress s/byte), each the median of its window."""
        return self._codec

    def _record(self, encoder: str, values) -> None:
        self.codecs.setdefault(encoder, collections.deque(maxlen=WINDOW)).append(tuple(float(v) for v in values))
        self._codec = {e: tuple(_median([m[i] for m in window]) for i in range(3))
                       for e, window in self.codecs.items()}
        self._codec_version += 1

    def absorb(self, reduced: np.ndarray) -> None:
        """Fold in the previous call's measurements (already MAX-reduced over ranks)."""
        sample = transfer_bandwidth(np.ascontiguousarray(reduced, dtype=np.float64))
        # Python floats: reading numpy scalars one by one costs more, and here caches are cold
        reduced = reduced.tolist() if hasattr(reduced, "tolist") else list(reduced)
        mode = reduced[_MODE]
        if sample > 0:
            self.add_bandwidth(int(mode), float(sample))
        if mode == 1 and reduced[_RAW] > 0:
            encoder = _ENC.get(int(reduced[_F["encoder"]]), "fast")
            self._record(encoder, [reduced[_F["inv_ratio"]], reduced[_F["compress_spb"]], reduced[_F["decompress_spb"]]])
            if reduced[_F["alt_inv_ratio"]] > 0:
                other = "compact" if encoder == "fast" else "fast"
                self._record(other, reduced[_F["alt_inv_ratio"]:_F["alt_decompress_spb"] + 1])

    def _parameters(self, codec: dict):
        """Per encoder (ratio, EncoderCost, pays terms), and the encoders in choose()'s order
        with its terms: rebuilt only when the codec medians change, so that a call costs a few
        float operations (a run of bypassed calls should cost little Python)."""
        if self._parameters_version != self._codec_version or self._parameters_codec is not codec:
            params = {}
            for encoder, (inv_ratio, spb_c, spb_d) in codec.items():
                cost = costmodel.EncoderCost(1.0 / max(spb_c, 1e-15), 1.0 / max(spb_d, 1e-15))
                ratio = 1.0 / inv_ratio if inv_ratio > 0 else float("inf")
                # costmodel.pays(ratio, B, cost) is 1/ratio + B * per_byte < 1, evaluated so
                per_byte = 1.0 / cost.compress_bps + 1.0 / cost.decompress_bps
                params[encoder] = (ratio, cost, 1.0 / ratio if ratio > 0 else None, per_byte)
            # costmodel.choose(1, sizes, B, costs): the least 1/Tc + size/B + 1/Td, ties to the
            # faster compressor (the same operations in the same order: the same choice)
            by_speed = sorted(codec, key=lambda e: -params[e][1].compress_bps)
            order = [(e, 1 / params[e][1].compress_bps, codec[e][0], 1 / params[e][1].decompress_bps)
                     for e in by_speed]
            self._parameters_value = (params, order)
            self._parameters_version, self._parameters_codec = self._codec_version, codec
        return self._parameters_value

    def _encoder(self, strategy: str, codec: dict) -> str:
        bandwidth = self.bandwidth
        if strategy != "auto":
            return strategy
        if bandwidth is None or len(codec) < 2:
            return "fast"
        best, least = None, None
        for encoder, inv_compress, size, inv_decompress in self._parameters(codec)[1]:
            seconds = inv_compress + size / bandwidth + inv_decompress
            if least is None or seconds < least:
                best, least = encoder, seconds
        return best

    def model(self, encoder: str, codec=None) -> dict:
        codec = self.codec if codec is None else codec
        bandwidth = self.bandwidth
        if bandwidth is None or encoder not in codec:
            return {}
        ratio, cost, inv_ratio, per_byte = self._parameters(codec)[0][encoder]
        return {"bandwidth_Bps": bandwidth, "ratio": ratio, "compress_Bps": cost.compress_bps,
                "decompress_Bps": cost.decompress_bps,
                "pays": inv_ratio is not None and inv_ratio + bandwidth * per_byte < 1.0}

    def _compressed(self, encoder, reason, strategy, codec, model=None) -> Decision:
        """A compressed decision, calibrating the other encoder when it is due (strategy auto)."""
        if strategy != "auto":
            return Decision("compressed", encoder, reason, False, model)
        since = self.since_calibration + 1
        due = len(codec) < 2 or since >= self.calibration_interval
        decision = Decision("compressed", encoder, reason, due, model)
        decision.next = {"since_calibration": 0 if due else since,
                         "calibration_interval": min(2 * self.calibration_interval, LAST_PROBE) if due and
                         len(codec) == 2 else self.calibration_interval}
        return decision

    def decide(self, bypass, strategy: str) -> Decision:
        """The mode of this call; ``bypass`` is "auto", True (always raw) or False (always compress).

        Pure: the schedules advance only through :meth:`commit`, called once every rank has
        agreed the call can go ahead (so a call that raises leaves every rank's state alike).
        """
        codec = self.codec
        encoder = self._encoder(strategy, codec)
        model = self.model(encoder, codec)
        if bypass is True:
            return Decision("raw", None, "forced", model=model)
        if bypass is False:
            return self._compressed(encoder, "forced", strategy, codec, model)
        if not codec:
            return self._compressed(encoder, "calibration", strategy, codec)
        if not self.raw_measured:  # compressed transfers alone underestimate a fast link
            return Decision("raw", None, "calibration", model=model)
        choice = "compressed" if model.get("pays") else "raw"
        since, interval = (self.since_probe, self.interval) if choice == self.decision else (0, FIRST_PROBE)
        since += 1
        probe = since >= interval  # re-measure the path not taken
        mode = ("raw" if choice == "compressed" else "compressed") if probe else choice
        reason = "probe" if probe else "cost model"
        decision = self._compressed(encoder, reason, strategy, codec, model) if mode == "compressed" else \
            Decision("raw", None, reason, model=model)
        decision.next.update(decision=choice, since_probe=0 if probe else since,
                             interval=min(2 * interval, LAST_PROBE) if probe else interval)
        return decision

    def commit(self, decision: Decision) -> None:
        """Advance the schedules past ``decision`` (every rank, after the handshake)."""
        if decision is not None:
            for name, value in decision.next.items():
                setattr(self, name, value)
