"""Adaptive error bounds: per table (classes) and per iteration (schedules).

The seed paper (Feng et al., SC'24, "dual-level adaptive lossy compression") sets the bound of
each embedding table's all-to-all payload from two levels:

* **table-wise**: every table is put in a class, ``tight`` / ``base`` / ``loose``, by its size
  or its access frequency; each class has a relative bound (default 0.01 / 0.03 / 0.05 of the
  value range, SZ's "REL" mode);
* **iteration-wise**: a schedule multiplies the bound, loose early in training and tighter later
  (default: step decay from 2x to 1x in 10 steps over the first 65,536 iterations).

:class:`Policy` combines both and answers ``bound(table, iteration)``; ``bounds(iteration)`` gives
the vector for every table, ready for ``embzip.comm.TableLayout(dim, bounds=...)``. All three
classes are small immutable values that round-trip through JSON (``to_json`` / ``from_json``), so
a job can log the policy it used and a later job can reload it.

Examples
--------
>>> from embzip.adaptive import Policy, Schedule, TableClasses
>>> tables = TableClasses.by_size([10, 5_000, 2_000_000], thresholds=(1_000, 1_000_000))
>>> tables.assignment
('loose', 'base', 'tight')
>>> policy = Policy(tables, Schedule.step())
>>> policy.bound(2, 0)            # tight table, first iteration: 0.01 * 2
0.02
>>> policy.bound(2, 100_000)      # after the decay: 0.01 * 1
0.01
>>> Policy.from_json(policy.to_json()) == policy
True
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

__all__ = ["CLASSES", "DEFAULT_CLASS_BOUNDS", "TableClasses", "Schedule", "Policy"]

#: The class names, from the tightest bound to the loosest.
CLASSES = ("tight", "base", "loose")
#: Default relative bound of each class (fraction of the value range).
DEFAULT_CLASS_BOUNDS = {"tight": 0.01, "base": 0.03, "loose": 0.05}

_KINDS = ("step", "linear", "log", "constant")
_FORMAT = "embzip.adaptive"
_VERSION = 1


def _real(name, value, *, positive=True, allow_zero=False):
    """A finite real number (not bool), optionally > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, found {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, found {value!r}")
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, found {value!r}")
    return value


def _int(name, value, *, minimum=0):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, found {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, found {value}")
    return value


# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableClasses:
    """Table-wise level: a class (``tight`` / ``base`` / ``loose``) and its bound for every table.

    Parameters
    ----------
    assignment : sequence of str
        The class of table ``t`` at position ``t``; each one of :data:`CLASSES`.
    class_bounds : mapping, optional
        Bound of each class (all three keys), ``tight <= base <= loose``, all finite and > 0.
        Default :data:`DEFAULT_CLASS_BOUNDS` (0.01 / 0.03 / 0.05).
    names : sequence of str, optional
        Table names (unique), so that ``bound("user_id", it)`` works as well as ``bound(0, it)``.

    Examples
    --------
    >>> t = TableClasses(["tight", "loose"], names=["user", "gender"])
    >>> t.bound("gender"), t.bound(0)
    (0.05, 0.01)
    >>> TableClasses.by_frequency([9e6, 4e3, 12], thresholds=(100, 1e6)).assignment
    ('tight', 'base', 'loose')
    """

    assignment: tuple
    class_bounds: Mapping = field(default_factory=lambda: dict(DEFAULT_CLASS_BOUNDS))
    names: tuple = None

    def __post_init__(self):
        if isinstance(self.assignment, (str, bytes)) or not isinstance(self.assignment, Sequence):
            raise TypeError(f"assignment must be a sequence of class names, found {type(self.assignment).__name__}")
        assignment = tuple(self.assignment)
        if not assignment:
            raise ValueError("assignment must name at least one table")
        for t, c in enumerate(assignment):
            if not isinstance(c, str):
                raise TypeError(f"assignment[{t}] must be a class name (str), found {type(c).__name__} {c!r}")
            if c not in CLASSES:
                raise ValueError(f"assignment[{t}] must be one of {CLASSES}, found {c!r}")
        if not isinstance(self.class_bounds, Mapping):
            raise TypeError(f"class_bounds must be a mapping of {CLASSES} to bounds, "
                            f"found {type(self.class_bounds).__name__}")
        if set(self.class_bounds) != set(CLASSES):
            raise ValueError(f"class_bounds must have exactly the keys {CLASSES}, found {tuple(self.class_bounds)}")
        bounds = {c: _real(f"class_bounds[{c!r}]", self.class_bounds[c]) for c in CLASSES}
        if not bounds["tight"] <= bounds["base"] <= bounds["loose"]:
            raise ValueError(f"class bounds must satisfy tight <= base <= loose, found {bounds}")
        names = self.names
        if names is not None:
            if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
                raise TypeError(f"names must be a sequence of str, found {type(names).__name__}")
            names = tuple(names)
            if not all(isinstance(n, str) for n in names):
                raise TypeError("names must all be str")
            if len(names) != len(assignment):
                raise ValueError(f"names has {len(names)} entries, assignment has {len(assignment)}")
            if len(set(names)) != len(names):
                raise ValueError("names must be unique")
        object.__setattr__(self, "assignment", assignment)
        object.__setattr__(self, "class_bounds", bounds)
        object.__setattr__(self, "names", names)

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def uniform(cls, tables, cls_name="base", class_bounds=None, names=None):
        """Every one of ``tables`` tables in the same class (``base`` by default).

        >>> TableClasses.uniform(3).assignment
        ('base', 'base', 'base')
        """
        tables = _int("tables", tables, minimum=1)
        return cls((cls_name,) * tables, _default_bounds(class_bounds), names)

    @classmethod
    def by_size(cls, sizes, thresholds=None, *, largest="tight", class_bounds=None, names=None):
        """Classes from table sizes (rows).

        Parameters
        ----------
        sizes : sequence of real
            Rows (or bytes) of each table, >= 0.
        thresholds : (low, high), optional
            ``size >= high`` goes to the ``largest`` class, ``size < low`` to the opposite one,
            the rest to ``base``. Default: the 1/3 and 2/3 quantiles of ``sizes``.
        largest : {"tight", "loose"}
            Class of the largest tables (default ``tight``: a large table's rows are the ones
            the model has seen least, so their errors are corrected least by training).
        class_bounds, names
            As for :class:`TableClasses`.

        >>> TableClasses.by_size([2, 30, 40_000], thresholds=(10, 1000)).assignment
        ('loose', 'base', 'tight')
        >>> TableClasses.by_size([2, 30, 40_000], (10, 1000), largest="loose").assignment
        ('tight', 'base', 'loose')
        """
        return cls(_classify(sizes, thresholds, largest, "sizes"), _default_bounds(class_bounds), names)

    @classmethod
    def by_frequency(cls, counts, thresholds=None, *, hottest="tight", class_bounds=None, names=None):
        """Classes from access frequency (lookups per table, or per-row mean accesses).

        ``count >= high`` goes to ``hottest`` (default ``tight``: an error in a hot table
        reaches many samples), ``count < low`` to the opposite class, the rest to ``base``.
        Default thresholds: the 1/3 and 2/3 quantiles of ``counts``.

        >>> TableClasses.by_frequency([5, 50, 500], thresholds=(10, 100)).assignment
        ('loose', 'base', 'tight')
        """
        return cls(_classify(counts, thresholds, hottest, "counts"), _default_bounds(class_bounds), names)

    # -- queries -----------------------------------------------------------------------------
    @property
    def tables(self) -> int:
        """Number of tables."""
        return len(self.assignment)

    def index(self, table) -> int:
        """Position of ``table`` (an index or, when names were given, a name)."""
        if isinstance(table, str):
            if self.names is None or table not in self.names:
                raise ValueError(f"unknown table name {table!r}; names are {self.names}")
            return self.names.index(table)
        t = _int("table", table)
        if t >= len(self.assignment):
            raise ValueError(f"table must be < {len(self.assignment)}, found {t}")
        return t

    def bound(self, table) -> float:
        """Bound of ``table``'s class."""
        return self.class_bounds[self.assignment[self.index(table)]]

    def bounds(self) -> np.ndarray:
        """Bound of every table, float64 of shape ``(tables,)``."""
        return np.array([self.class_bounds[c] for c in self.assignment], dtype=np.float64)

    def __hash__(self):
        return hash((self.assignment, tuple(self.class_bounds.items()), self.names))

    def to_dict(self) -> dict:
        return {"assignment": list(self.assignment), "class_bounds": dict(self.class_bounds),
                "names": None if self.names is None else list(self.names)}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a mapping, found {type(d).__name__}")
        return cls(d["assignment"], d.get("class_bounds") or dict(DEFAULT_CLASS_BOUNDS), d.get("names"))


def _default_bounds(class_bounds):
    return dict(DEFAULT_CLASS_BOUNDS) if class_bounds is None else class_bounds


def _classify(metrics, thresholds, top, what):
    if isinstance(metrics, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of numbers")
    values = [_real(f"{what}[{i}]", v, allow_zero=True) for i, v in enumerate(metrics)]
    if not values:
        raise ValueError(f"{what} must not be empty")
    if top not in ("tight", "loose"):
        raise ValueError(f"the class of the top group must be 'tight' or 'loose', found {top!r}")
    if thresholds is None:
        lo, hi = (float(x) for x in np.quantile(values, [1 / 3, 2 / 3]))
    else:
        if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence) or len(thresholds) != 2:
            raise TypeError(f"thresholds must be a pair (low, high), found {thresholds!r}")
        lo = _real("thresholds[0]", thresholds[0], positive=False)
        hi = _real("thresholds[1]", thresholds[1], positive=False)
        if lo > hi:
            raise ValueError(f"thresholds must satisfy low <= high, found ({lo}, {hi})")
    bottom = "loose" if top == "tight" else "tight"
    return tuple(top if v >= hi else bottom if v < lo else "base" for v in values)


# ----------------------------------------------------------------------------------------------
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
        Number of drops of the ``step`` kind (>= 1).
    horizon : int
        Iterations over which the factor moves (>= 1).

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
        start, end = _real("start", self.start), _real("end", self.end)
        if start < end:
            raise ValueError(f"schedules must not increase: start must be >= end, found start={start}, end={end}")
        if self.kind == "constant" and start != end:
            raise ValueError(f"a constant schedule needs start == end, found {start} and {end}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "steps", _int("steps", self.steps, minimum=1))
        object.__setattr__(self, "horizon", _int("horizon", self.horizon, minimum=1))

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
        i = _int("iteration", iteration)
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
        return {"kind": self.kind, "start": self.start, "end": self.end, "steps": self.steps,
                "horizon": self.horizon}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a mapping, found {type(d).__name__}")
        return cls(**{k: d[k] for k in ("kind", "start", "end", "steps", "horizon") if k in d})


# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """Dual-level policy: ``bound(table, iteration) = class bound of table * schedule(iteration)``.

    Parameters
    ----------
    tables : TableClasses
        The table-wise level.
    schedule : Schedule, optional
        The iteration-wise level (default :meth:`Schedule.step`).
    mode : {"rel", "abs"}
        How the comm layer reads the bounds: ``rel_error`` (fraction of the range, default) or
        ``abs_error``.

    Examples
    --------
    >>> p = Policy.fixed(3, rel=0.02)       # 3 tables, 0.02 always
    >>> p.bounds(0).tolist()
    [0.02, 0.02, 0.02]
    >>> d = Policy.dual([100, 10**4, 10**7], by="size", thresholds=(1e3, 1e6))
    >>> d.bounds(0).tolist(), d.bounds(70_000).tolist()
    ([0.1, 0.06, 0.02], [0.05, 0.03, 0.01])
    >>> d.range()
    (0.01, 0.1)

    With the comm layer (every rank, every step)::

        layout = embzip.comm.TableLayout(dim, bounds=policy.bounds(step))
        embzip.comm.Alltoallv(comm, send, recv, rel_error=policy.default(step), bounds=layout)
    """

    tables: TableClasses
    schedule: Schedule = field(default_factory=Schedule.step)
    mode: str = "rel"

    def __post_init__(self):
        if not isinstance(self.tables, TableClasses):
            raise TypeError(f"tables must be a TableClasses, found {type(self.tables).__name__}")
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, found {type(self.schedule).__name__}")
        if self.mode not in ("rel", "abs"):
            raise ValueError(f"mode must be 'rel' or 'abs', found {self.mode!r}")

    @classmethod
    def fixed(cls, tables, rel=0.03, names=None):
        """Every table at ``rel`` at every iteration (the paper's non-adaptive baseline)."""
        rel = _real("rel", rel)
        return cls(TableClasses.uniform(tables, "base", {"tight": rel, "base": rel, "loose": rel}, names),
                   Schedule.constant(1.0))

    @classmethod
    def dual(cls, metrics, *, by="size", thresholds=None, class_bounds=None, schedule=None, names=None):
        """Table classes from ``metrics`` (sizes or access counts) and a schedule (default step)."""
        if by == "size":
            tables = TableClasses.by_size(metrics, thresholds, class_bounds=class_bounds, names=names)
        elif by == "frequency":
            tables = TableClasses.by_frequency(metrics, thresholds, class_bounds=class_bounds, names=names)
        else:
            raise ValueError(f"by must be 'size' or 'frequency', found {by!r}")
        return cls(tables, Schedule.step() if schedule is None else schedule)

    def scaled(self, factor) -> "Policy":
        """The same classes and schedule with every class bound times ``factor`` (finite, > 0).

        The backward all-to-all carries gradients, whose value range is set by a few large
        entries: the forward bounds zero most of them. A scaled copy keeps one policy for both
        directions (the DLRM example measured 0.1 for gradients: see its README section).

        Examples
        --------
        >>> Policy.fixed(2, rel=0.03).scaled(0.1).bounds(0).tolist()
        [0.003, 0.003]
        """
        factor = _real("factor", factor)
        bounds = {c: float(f"{b * factor:.12g}") for c, b in self.tables.class_bounds.items()}
        return Policy(TableClasses(self.tables.assignment, bounds, self.tables.names), self.schedule, self.mode)

    @property
    def n_tables(self) -> int:
        return self.tables.tables

    def bound(self, table, iteration) -> float:
        """Bound for ``table`` (index or name) at ``iteration`` (int >= 0)."""
        return float(f"{self.tables.bound(table) * self.schedule(iteration):.12g}")

    def bounds(self, iteration) -> np.ndarray:
        """Bounds of all tables at ``iteration``, float64 ``(tables,)``."""
        f = self.schedule(iteration)
        return np.array([float(f"{b * f:.12g}") for b in self.tables.bounds()], dtype=np.float64)

    def default(self, iteration) -> float:
        """The ``base`` class bound at ``iteration`` (a scalar default for the call)."""
        return float(f"{self.tables.class_bounds['base'] * self.schedule(iteration):.12g}")

    def range(self) -> tuple:
        """``(smallest, largest)`` bound this policy can ever return."""
        used = self.tables.bounds()
        return (float(f"{used.min() * self.schedule.end:.12g}"), float(f"{used.max() * self.schedule.start:.12g}"))

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": _VERSION, "mode": self.mode,
                "tables": self.tables.to_dict(), "schedule": self.schedule.to_dict()}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a mapping, found {type(d).__name__}")
        if d.get("format") != _FORMAT:
            raise ValueError(f"not an embzip policy: format is {d.get('format')!r}, expected {_FORMAT!r}")
        if d.get("version") != _VERSION:
            raise ValueError(f"unsupported policy version {d.get('version')!r}, expected {_VERSION}")
        return cls(TableClasses.from_dict(d["tables"]), Schedule.from_dict(d["schedule"]), d.get("mode", "rel"))

    def to_json(self, **kwargs) -> str:
        """JSON text; :meth:`from_json` gives back an equal policy."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text):
        """Inverse of :meth:`to_json`. Raises ValueError on malformed text or content."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"from_json needs str or bytes, found {type(text).__name__}")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        try:
            return cls.from_dict(d)
        except KeyError as exc:
            raise ValueError(f"policy JSON lacks the key {exc}") from None
