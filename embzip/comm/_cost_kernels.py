"""The cost model's state as one float64 vector, and the compiled steps that read and update it.

Why compiled: a bypassed call must cost what a plain ``Alltoallv`` costs, and its decision
and bookkeeping ran as ~20-30 us of Python with caches cold after megabytes of payload
(measured: the decision ~9-14 us, advancing the schedule ~6 us, recording the bandwidth
~12 us, on 2 ranks / 2 cores with 10.6 MB per rank). Here they are a few hundred
instructions, and the express lane runs them inside its one compiled call
(:mod:`._native`); :class:`._costs.CostState` calls the same kernels, so both paths decide
alike by construction.

The vector (offsets below):

- bandwidth windows: per mode (raw, then compressed) ``WINDOW`` values in a ring, their count
  and the next slot; the estimate (the raw median, else the compressed one; 0.0: none);
  scratch for sorting;
- per encoder (fast, compact) the cost model's terms, written by Python when the codec
  medians change (``_TERM_NAMES``), and the encoders in ``costmodel.choose`` order;
- the schedule (``SCHEDULE_NAMES``);
- the last decision (``_OUT``): mode, encoder, reason, calibrate, the model (present flag,
  bandwidth, ratio, compress and decompress B/s, pays), and the schedule update it carries
  (per field a flag and a value), applied by :func:`commit_next` once every rank agreed.
"""

from __future__ import annotations

import numpy as np

from .._jit import kernel
from ._stats import MEASUREMENT_FIELDS

__all__ = ["WINDOW", "FIRST_PROBE", "LAST_PROBE", "MIN_BANDWIDTH_BYTES", "SIZE", "transfer_bandwidth",
           "record_bandwidth", "decide_into", "commit_next", "REASONS", "SCHEDULE_NAMES"]

FIRST_PROBE, LAST_PROBE = 16, 1024
WINDOW = 5
#: A compressed transfer updates the bandwidth estimate only when it moved this many bytes
#: per rank: smaller ones measure latency, not bandwidth.
MIN_BANDWIDTH_BYTES = 256 * 1024

_F = {name: i for i, name in enumerate(MEASUREMENT_FIELDS)}
_MODE, _RAW, _WIRE, _TRANSFER, _LATENCY, _INV_TRANSFER = (
    _F[name] for name in ("mode", "raw_bytes", "wire_bytes", "transfer_s", "latency_s", "inv_transfer_s"))

# bandwidth windows
PART = WINDOW + 2  # one mode's ring, count, next slot
ESTIMATE = 2 * PART
_SCRATCH = ESTIMATE + 1
# encoder terms: inv_compress, size and inv_decompress are costmodel.choose's; pays_inv and
# per_byte costmodel.pays' (pays_inv NaN: never pays); the rest is what CallStats.model shows
TERM_NAMES = ("present", "inv_compress", "size", "inv_decompress", "pays_inv", "per_byte", "ratio",
              "compress_bps", "decompress_bps")
_PRESENT, _INV_C, _SIZE, _INV_D, _PAYS_INV, _PER_BYTE, _RATIO, _C_BPS, _D_BPS = range(len(TERM_NAMES))
TERMS = _SCRATCH + WINDOW
ORDER = TERMS + 2 * len(TERM_NAMES)  # how many encoders are measured, then their indices fastest first
SCHEDULE = ORDER + 3
SCHEDULE_NAMES = ("decision", "since_probe", "interval", "since_calibration", "calibration_interval")
_DECISION, _SINCE_PROBE, _INTERVAL, _SINCE_CAL, _CAL_INTERVAL = range(len(SCHEDULE_NAMES))
OUT = SCHEDULE + len(SCHEDULE_NAMES)
# the last decision: mode (1 compressed, 2 raw), encoder (0 none, 1 fast, 2 compact), reason
# (an index of REASONS), calibrate, then the model, then (flag, value) per schedule field
OUT_MODE, OUT_ENCODER, OUT_REASON, OUT_CALIBRATE, OUT_MODEL = range(5)
OUT_NEXT = OUT_MODEL + 6  # model: present, bandwidth, ratio, compress B/s, decompress B/s, pays
SIZE = OUT + OUT_NEXT + 2 * len(SCHEDULE_NAMES)
REASONS = ("forced", "calibration", "cost model", "probe")
_FORCED, _CALIBRATION, _COST_MODEL, _PROBE = range(len(REASONS))
_COMPRESSED, _RAW_MODE = 1, 2
# embzip.comm._protocol.BYPASS_CODES and strategies "auto", "fast", "compact" as 0, 1, 2
BYPASS_AUTO, BYPASS_TRUE, BYPASS_FALSE = 1, 2, 3


@kernel
def transfer_bandwidth(reduced):
    """Bytes/s one rank got in the transfer a MAX-reduced measurement vector describes, or 0.0
    when it says nothing about bandwidth."""
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


@kernel
def _window_median(vector, part):
    """The median of one mode's window as ``statistics.median`` computes it (0.0 when empty)."""
    count = int(vector[part + WINDOW])
    if count == 0:
        return 0.0
    for i in range(count):  # insertion sort into the scratch slots (ring order does not matter)
        value = vector[part + i]
        j = i
        while j > 0 and vector[_SCRATCH + j - 1] > value:
            vector[_SCRATCH + j] = vector[_SCRATCH + j - 1]
            j -= 1
        vector[_SCRATCH + j] = value
    if count % 2:
        return vector[_SCRATCH + count // 2]
    return 0.5 * (vector[_SCRATCH + count // 2 - 1] + vector[_SCRATCH + count // 2])


@kernel
def record_bandwidth(vector, mode, value):
    """Append ``value`` (bytes/s, > 0) to the window of ``mode`` (2 raw, 1 compressed), the
    oldest falling out past WINDOW, and update the estimate."""
    part = 0 if mode == 2 else PART
    count, slot = int(vector[part + WINDOW]), int(vector[part + WINDOW + 1])
    vector[part + slot] = value
    vector[part + WINDOW + 1] = (slot + 1) % WINDOW
    vector[part + WINDOW] = min(count + 1, WINDOW)
    estimate = _window_median(vector, 0)
    vector[ESTIMATE] = estimate if estimate != 0.0 else _window_median(vector, PART)


@kernel
def _encoder(vector, strategy, bandwidth):
    """costmodel.choose over the measured encoders (1 fast, 2 compact), or the strategy's."""
    if strategy != 0:
        return strategy
    count = int(vector[ORDER])
    if bandwidth == 0.0 or count < 2:
        return 1
    best, least = 0, 0.0
    for k in range(count):
        at = TERMS + int(vector[ORDER + 1 + k]) * len(TERM_NAMES)
        seconds = vector[at + _INV_C] + vector[at + _SIZE] / bandwidth + vector[at + _INV_D]
        if best == 0 or seconds < least:  # (the first of equals wins, as min() does)
            best, least = int(vector[ORDER + 1 + k]) + 1, seconds
    return best


@kernel
def _set_next(vector, field, value):
    vector[OUT + OUT_NEXT + 2 * field] = 1.0
    vector[OUT + OUT_NEXT + 2 * field + 1] = value


@kernel
def _compressed(vector, encoder, reason, strategy):
    """A compressed decision, calibrating the other encoder when it is due (strategy auto)."""
    out = OUT
    vector[out + OUT_MODE], vector[out + OUT_ENCODER], vector[out + OUT_REASON] = _COMPRESSED, encoder, reason
    if strategy != 0:
        return
    count = int(vector[ORDER])
    since = vector[SCHEDULE + _SINCE_CAL] + 1
    interval = vector[SCHEDULE + _CAL_INTERVAL]
    due = count < 2 or since >= interval
    vector[out + OUT_CALIBRATE] = due
    _set_next(vector, _SINCE_CAL, 0.0 if due else since)
    _set_next(vector, _CAL_INTERVAL, min(2 * interval, LAST_PROBE) if due and count == 2 else interval)


@kernel
def decide_into(vector, bypass, strategy):
    """The decision of a call (``bypass`` a BYPASS code, ``strategy`` 0 auto / 1 fast / 2
    compact) into the vector's last-decision part; returns its mode (1 compressed, 2 raw).
    Pure but for that part: the schedule advances through :func:`commit_next`."""
    out = OUT
    vector[out:SIZE] = 0.0
    estimate = vector[ESTIMATE]
    encoder = _encoder(vector, strategy, estimate)
    at = TERMS + (encoder - 1) * len(TERM_NAMES)
    model = estimate != 0.0 and vector[at + _PRESENT] != 0.0
    pays = False
    if model:
        pays = vector[at + _PAYS_INV] + estimate * vector[at + _PER_BYTE] < 1.0  # (NaN: False)
        m = out + OUT_MODEL
        vector[m], vector[m + 1], vector[m + 2], vector[m + 3] = 1.0, estimate, vector[at + _RATIO], vector[at + _C_BPS]
        vector[m + 4], vector[m + 5] = vector[at + _D_BPS], pays
    if bypass == BYPASS_TRUE:
        vector[out + OUT_MODE], vector[out + OUT_REASON] = _RAW_MODE, _FORCED
        return _RAW_MODE
    if bypass == BYPASS_FALSE:
        _compressed(vector, encoder, _FORCED, strategy)
        return _COMPRESSED
    if vector[ORDER] == 0:  # nothing measured yet: compress, and say nothing of a model
        vector[out + OUT_MODEL:out + OUT_NEXT] = 0.0
        _compressed(vector, encoder, _CALIBRATION, strategy)
        return _COMPRESSED
    if vector[WINDOW] == 0:  # no raw transfer measured: compressed ones alone underestimate a fast link
        vector[out + OUT_MODE], vector[out + OUT_REASON] = _RAW_MODE, _CALIBRATION
        return _RAW_MODE
    choice = _COMPRESSED if pays else _RAW_MODE
    since, interval = 0.0, float(FIRST_PROBE)
    if choice == vector[SCHEDULE + _DECISION]:
        since, interval = vector[SCHEDULE + _SINCE_PROBE], vector[SCHEDULE + _INTERVAL]
    since += 1
    probe = since >= interval  # re-measure the path not taken
    mode = (_RAW_MODE if choice == _COMPRESSED else _COMPRESSED) if probe else choice
    reason = _PROBE if probe else _COST_MODEL
    if mode == _COMPRESSED:
        _compressed(vector, encoder, reason, strategy)
    else:
        vector[out + OUT_MODE], vector[out + OUT_REASON] = _RAW_MODE, reason
    _set_next(vector, _DECISION, choice)
    _set_next(vector, _SINCE_PROBE, 0.0 if probe else since)
    _set_next(vector, _INTERVAL, min(2 * interval, LAST_PROBE) if probe else interval)
    return mode


@kernel
def commit_next(vector):
    """Apply the last decision's schedule update (every rank, once the call is agreed)."""
    for field in range(len(SCHEDULE_NAMES)):
        if vector[OUT + OUT_NEXT + 2 * field] != 0.0:
            vector[SCHEDULE + field] = vector[OUT + OUT_NEXT + 2 * field + 1]


def empty() -> np.ndarray:
    """A fresh vector: nothing measured, the schedules at their start."""
    vector = np.zeros(SIZE)
    vector[SCHEDULE + _INTERVAL] = vector[SCHEDULE + _CAL_INTERVAL] = FIRST_PROBE
    return vector
