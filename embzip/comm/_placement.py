"""Where a rank with GPU buffers runs the codec: on the GPU, or on the CPU after staging.

The CUDA codec has a fixed cost per frame (kernel launches, allocations, size read-backs:
~5-10 ms measured on an H100, see docs/cuda.md "Speed"), so for segments of a few MB the CPU
codec on the staged copy is faster, and for segments of hundreds of MB the GPU is. Which one
wins depends on the machine, the sizes and how many ranks share the GPU, so each rank
measures: frames are byte-identical from either codec, so the choice is this rank's alone and
needs no agreement.

``EMBZIP_COMM_CODEC`` = ``auto`` (default), ``gpu`` or ``cpu``. Under ``auto``, a
communicator's compressed calls with GPU buffers run twice on the GPU, then twice on the
CPU; the first call of each is dropped (it carries compilation and memory-pool growth).
Then the place with the smaller median call time (of its last ``SAMPLES``) is used, and the
other is tried again after 16 calls, then 32, ... up to every 1024 while the choice holds.
The whole call's time is compared, not the codec's alone: staging copies, and the overlap
of a pipelined call, count.
"""

from __future__ import annotations

import collections
import os
import statistics
import warnings

from ._cost_kernels import FIRST_PROBE, LAST_PROBE

__all__ = ["CodecPlacement", "setting", "PLACES", "SAMPLES"]

PLACES = ("gpu", "cpu")
SAMPLES = 3
_WARM_UP = 1  # calls per place dropped before measuring


def setting() -> str:
    """``EMBZIP_COMM_CODEC``: ``auto``, ``gpu`` or ``cpu`` (another value warns; auto)."""
    value = os.environ.get("EMBZIP_COMM_CODEC", "auto").strip().lower()
    if value in PLACES or value == "auto":
        return value
    # (warn, never raise: only ranks with GPU buffers read it, and one rank raising alone would
    # leave the others waiting)
    warnings.warn(f"EMBZIP_COMM_CODEC={value!r} is not auto/gpu/cpu: using auto", stacklevel=3)
    return "auto"


class CodecPlacement:
    """One communicator's measurements of the two places, and the choice they make."""

    def __init__(self):
        self.calls = {place: 0 for place in PLACES}
        self.seconds = {place: collections.deque(maxlen=SAMPLES) for place in PLACES}
        self.best = None
        self.since = 0  # calls since the other place was last tried
        self.interval = FIRST_PROBE

    def choose(self) -> str:
        """The place for the next compressed call with GPU buffers."""
        forced = setting()
        if forced != "auto":
            return forced
        for place in PLACES:  # exploring: each place until it has a measurement
            if not self.seconds[place]:
                return place
        if self.since >= self.interval:
            return PLACES[1 - PLACES.index(self.best)]
        return self.best

    def record(self, place: str, seconds: float) -> None:
        """A completed compressed call that ran the codec at ``place`` took ``seconds``."""
        self.calls[place] += 1
        if self.calls[place] > _WARM_UP:
            self.seconds[place].append(seconds)
        if not all(self.seconds.values()):
            return
        best = min(PLACES, key=lambda p: statistics.median(self.seconds[p]))
        if self.best is None:  # both measured: the first choice
            self.since = 0
        elif place != self.best:  # the other place was tried
            self.since = 0
            self.interval = FIRST_PROBE if best != self.best else min(2 * self.interval, LAST_PROBE)
        else:
            self.since += 1
        self.best = best
