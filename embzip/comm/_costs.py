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

The state lives in one float64 vector updated by compiled kernels (:mod:`._cost_kernels`), so
that the express lane can decide and record inside its one compiled call; this class is the
Python face of that vector (the codec medians, which change only on compressed calls, are
kept here and written into it as the model's terms).
"""

from __future__ import annotations

import collections

import numpy as np

from .. import costmodel
from . import _cost_kernels as K
from ._cost_kernels import FIRST_PROBE, LAST_PROBE, MIN_BANDWIDTH_BYTES, WINDOW, transfer_bandwidth
from ._protocol import BYPASS_CODES
from ._stats import ENCODER_CODES, MEASUREMENT_FIELDS

__all__ = ["CostState", "Decision", "transfer_bandwidth", "FIRST_PROBE", "LAST_PROBE", "WINDOW",
           "MIN_BANDWIDTH_BYTES", "STRATEGY_CODES"]

_F = {name: i for i, name in enumerate(MEASUREMENT_FIELDS)}
_ENC = {1: "fast", 2: "compact"}
_MODES = {1: "compressed", 2: "raw"}
_DECISIONS = {0: None, 1: "compressed", 2: "raw"}
STRATEGY_CODES = {"auto": 0, "fast": 1, "compact": 2}
_MODE, _RAW = _F["mode"], _F["raw_bytes"]


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


def decision_of(vector) -> Decision:
    """The Decision the vector's last-decision part holds (see :func:`._cost_kernels.decide_into`)."""
    out = vector[K.OUT:K.SIZE].tolist()  # Python floats: cheaper than numpy scalars one by one
    mode, encoder, reason, calibrate = out[K.OUT_MODE], out[K.OUT_ENCODER], out[K.OUT_REASON], out[K.OUT_CALIBRATE]
    model = {}
    if out[K.OUT_MODEL]:
        bandwidth, ratio, compress, decompress, pays = out[K.OUT_MODEL + 1:K.OUT_NEXT]
        model = {"bandwidth_Bps": bandwidth, "ratio": ratio, "compress_Bps": compress,
                 "decompress_Bps": decompress, "pays": pays != 0.0}
    decision = Decision(_MODES[int(mode)], _ENC.get(int(encoder)) if mode == 1 else None, K.REASONS[int(reason)],
                        calibrate != 0.0, model)
    for field, name in enumerate(K.SCHEDULE_NAMES):
        if out[K.OUT_NEXT + 2 * field]:
            value = int(out[K.OUT_NEXT + 2 * field + 1])
            decision.next[name] = _DECISIONS[value] if name == "decision" else value
    return decision


class CostState:
    """Agreed measurements of one communicator (identical on every rank)."""

    __slots__ = ("vector", "codecs", "_codec")

    def __init__(self):
        self.vector = K.empty()  # bandwidth windows, model terms, schedules, the last decision
        # Compiled now, on a scratch vector: its first call from here may come long after the
        # others (bandwidths are recorded inside the express lane's compiled call), and a
        # compile mid-run stalls every rank (measured: 0.3-0.5 s on a probe call, 4 ranks / 2 cores).
        K.record_bandwidth(K.empty(), 2, 1.0)
        self.codecs = {}  # "fast"/"compact" -> deque of (inv_ratio, compress s/byte, decompress s/byte)
        self._codec = {}  # medians of ``codecs``, recomputed when a measurement arrives

    @property
    def bandwidths(self) -> dict:
        """Mode (2 raw, 1 compressed) -> the bandwidths (bytes/s) in its window, oldest first."""
        out = {}
        for mode, part in ((2, 0), (1, K.PART)):
            count, slot = int(self.vector[part + WINDOW]), int(self.vector[part + WINDOW + 1])
            ring = self.vector[part:part + WINDOW].tolist()
            out[mode] = ring[slot:] + ring[:slot] if count == WINDOW else ring[:count]
        return out

    @property
    def raw_measured(self) -> bool:
        return bool(self.vector[WINDOW] > 0)

    @property
    def bandwidth(self):
        """From raw transfers when there are any: compressed ones are smaller, so their time is
        more latency and they read low; they serve until a raw call (calibration, probe) ran."""
        estimate = self.vector.item(K.ESTIMATE)  # (a Python float)
        return estimate if estimate != 0.0 else None

    def add_bandwidth(self, mode: int, value: float) -> None:
        """Record a bandwidth measured by a raw (``mode`` 2) or compressed (1) transfer."""
        K.record_bandwidth(self.vector, mode, value)

    @property
    def codec(self):
        """Encoder -> (inv_ratio, compress s/byte, decompress s/byte), each the median of its window."""
        return self._codec

    @property
    def schedule(self) -> dict:
        """The probe and calibration schedules (the model's last choice, calls since, intervals)."""
        values = self.vector[K.SCHEDULE:K.SCHEDULE + len(K.SCHEDULE_NAMES)].tolist()
        out = dict(zip(K.SCHEDULE_NAMES, (int(v) for v in values)))
        out["decision"] = _DECISIONS[out["decision"]]
        return out

    def _record(self, encoder: str, values) -> None:
        self.codecs.setdefault(encoder, collections.deque(maxlen=WINDOW)).append(tuple(float(v) for v in values))
        self._codec = {e: tuple(_median([m[i] for m in window]) for i in range(3))
                       for e, window in self.codecs.items()}
        self._write_terms()

    def _write_terms(self) -> None:
        """The model's terms per encoder, from the codec medians (computed here in Python, as
        costmodel computes them, so that the compiled decision reproduces its results bit for
        bit), and the encoders in costmodel.choose's order."""
        codec, vector = self._codec, self.vector
        speeds = {}
        for encoder, (inv_ratio, spb_c, spb_d) in codec.items():
            cost = costmodel.EncoderCost(1.0 / max(spb_c, 1e-15), 1.0 / max(spb_d, 1e-15))
            ratio = 1.0 / inv_ratio if inv_ratio > 0 else float("inf")
            # costmodel.pays(ratio, B, cost) is 1/ratio + B * per_byte < 1, evaluated so
            per_byte = 1.0 / cost.compress_bps + 1.0 / cost.decompress_bps
            # costmodel.choose(1, sizes, B, costs): the least 1/Tc + size/B + 1/Td
            terms = (1.0, 1 / cost.compress_bps, inv_ratio, 1 / cost.decompress_bps,
                     1.0 / ratio if ratio > 0 else float("nan"), per_byte, ratio, cost.compress_bps,
                     cost.decompress_bps)
            at = K.TERMS + (ENCODER_CODES[encoder] - 1) * len(K.TERM_NAMES)
            vector[at:at + len(terms)] = terms
            speeds[encoder] = cost.compress_bps
        # ties to the faster compressor, then to the first recorded (sorted is stable, as choose's)
        by_speed = sorted(codec, key=lambda e: -speeds[e])
        vector[K.ORDER] = len(by_speed)
        vector[K.ORDER + 1:K.ORDER + 1 + len(by_speed)] = [ENCODER_CODES[e] - 1 for e in by_speed]

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

    def decide(self, bypass, strategy: str) -> Decision:
        """The mode of this call; ``bypass`` is "auto", True (always raw) or False (always compress).

        Pure: the schedules advance only through :meth:`commit`, called once every rank has
        agreed the call can go ahead (so a call that raises leaves every rank's state alike).
        """
        K.decide_into(self.vector, bypass_code(bypass), STRATEGY_CODES[strategy])
        return decision_of(self.vector)

    def commit(self, decision: Decision) -> None:
        """Advance the schedules past ``decision`` (every rank, after the handshake)."""
        if decision is not None:
            for name, value in decision.next.items():
                if name == "decision":
                    value = {None: 0, "compressed": 1, "raw": 2}[value]
                self.vector[K.SCHEDULE + K.SCHEDULE_NAMES.index(name)] = value


def bypass_code(bypass) -> int:
    """The BYPASS_CODES code of a (validated) bypass argument."""
    return BYPASS_CODES[True] if bypass is True else BYPASS_CODES[False] if bypass is False else BYPASS_CODES["auto"]
