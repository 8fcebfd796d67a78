"""The iteration-wise level: a non-increasing factor on the bound over training."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from ._checks import check_int, check_real

__all__ = ["Schedule"]

_KINDS = ("step", "linear", "log", "constant")
_FIELDS = ("kind", "start", "end", "steps", "horizon")
#: Beyond it ``log1p(horizon)`` overflows a float; no training runs that long.
_MAX_HORIZON = 2**63 - 1


@dataclass(frozen=True)
class Schedule:
    """Iteration-wise level: a factor multiplying the bound, non-increasing in the iteration.

    Parameters
    ----------
    kind : {"step", "linear", "log", "constant"}
        ``step``: ``start`` to ``end`` in ``steps`` equal drops, one every ``horizon / steps``
        iterations; ``linear``: a straight line; ``log``: proportional to ``log1p(iteration)``
        (fast early, slow later); ``constant``: always ``start`` (``end`` must equal it).
        After ``horizon`` iterations every kind gives ``end``.
    start, end : float
        Factor at iteration 0 and from ``horizon`` on; ``start >= end > 0``.
    steps : int
        Number of drops of the ``step`` kind (1 <= steps <= horizon).
    horizon : int
        Iterations over which the factor moves (1 <= horizon < 2**63).

    Examples
    --------
    >>> s = Schedule.step()            # 2x -> 1x in 10 steps over 65,536 iterations
    >>> s(0), s(6554), s(32768), s(65536)
    (2.0, 1.9, 1.5, 1.0)
    >>> Schedule.linear(start=3.0, horizon=10)(5)
    2.0
    >>> Schedule.constant(1.5)(10**9)
    1.5
    """

    kind: str = "step"
    start: float = 2.0
    end: float = 1.0
    steps: int = 10
    horizon: int = 65536

    def __post_init__(self):
        if not isinstance(self.kind, str):
            raise TypeError(f"kind must be a str, found {type(self.kind).__name__}")
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, found {self.kind!r}")
        start, end = check_real("start", self.start), check_real("end", self.end)
        if start < end:
            raise ValueError(f"schedules must not increase: start must be >= end, found start={start}, end={end}")
        if self.kind == "constant" and start != end:
            raise ValueError(f"a constant schedule needs start == end, found {start} and {end}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        horizon = check_int("horizon", self.horizon, minimum=1, maximum=_MAX_HORIZON)
        steps = check_int("steps", self.steps, minimum=1)
        if self.kind == "step" and steps > horizon:  # (it would make fewer drops than asked)
            raise ValueError(f"a step schedule needs steps <= horizon, found steps={steps}, horizon={horizon}")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "horizon", horizon)

    @classmethod
    def step(cls, start=2.0, end=1.0, steps=10, horizon=65536):
        """Step decay (the default: 2x -> 1x in 10 steps over the first 65,536 iterations)."""
        return cls("step", start, end, steps, horizon)

    @classmethod
    def linear(cls, start=2.0, end=1.0, horizon=65536):
        """Linear decay from ``start`` to ``end`` over ``horizon`` iterations."""
        return cls("linear", start, end, 1, horizon)

    @classmethod
    def log(cls, start=2.0, end=1.0, horizon=65536):
        """Logarithmic decay: ``start - (start - end) * log1p(i) / log1p(horizon)``."""
        return cls("log", start, end, 1, horizon)

    @classmethod
    def constant(cls, factor=1.0):
        """The same factor forever (``constant(1.0)``: the table bounds as they are)."""
        return cls("constant", factor, factor, 1, 1)

    def __call__(self, iteration) -> float:
        """Factor at ``iteration`` (an integer >= 0)."""
        i = check_int("iteration", iteration)
        if self.kind == "constant" or i >= self.horizon:
            return self.end if i >= self.horizon else self.start
        if self.kind == "step":
            frac = (i * self.steps // self.horizon) / self.steps
        elif self.kind == "linear":
            frac = i / self.horizon
        else:
            frac = math.log1p(i) / math.log1p(self.horizon)
        if frac <= 0.0:
            return self.start
        # round to 12 significant digits: 2 - 0.1 * 1 is 1.9, not 1.9000000000000001
        value = float(f"{self.start - (self.start - self.end) * min(frac, 1.0):.12g}")
        return min(self.start, max(self.end, value))

    factor = __call__

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in _FIELDS}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`; a key left out takes its default, an unknown key raises
        ValueError."""
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a mapping, found {type(d).__name__}")
        unknown = sorted(str(k) for k in d if k not in _FIELDS)
        if unknown:  # (a misspelt key would otherwise leave its field at the default)
            raise ValueError(f"unknown schedule keys {unknown}; expected some of {_FIELDS}")
        return cls(**{k: d[k] for k in _FIELDS if k in d})
