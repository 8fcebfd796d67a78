"""Both levels together: ``bound(table, iteration)``, and the JSON form a job logs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ._checks import check_real
from .schedule import Schedule
from .tables import TableClasses

__all__ = ["Policy"]

_FORMAT = "embzip.adaptive"
_VERSION = 1
_FIELDS = ("format", "version", "mode", "tables", "schedule")


def _product(bound: float, factor: float) -> float:
    """``bound * factor`` rounded to 12 significant digits (0.03 * 2 is 0.06, not 0.06000000000000001)."""
    return float(f"{bound * factor:.12g}")


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

    Every bound it can return (class bound times a factor between the schedule's ``end`` and
    ``start``) must be finite and > 0: a policy whose products reach 0 or infinity is refused
    (ValueError) when made.

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

    With the comm layer (every rank, every step; ``my_tables``: the tables this rank sends,
    in the order of its payload's columns; ``abs_error=`` in place of ``rel_error=`` when
    ``policy.mode`` is ``"abs"``)::

        layout = embzip.comm.TableLayout(dim, bounds=policy.bounds(step)[my_tables])
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
        bounds = self.tables.class_bounds.values()
        lo, hi = _product(min(bounds), self.schedule.end), _product(max(bounds), self.schedule.start)
        if not (lo > 0 and math.isfinite(hi)):  # each factor is sound; their product may not be
            raise ValueError(f"this policy's bounds reach {lo!r} .. {hi!r} (class bounds {dict(self.tables.class_bounds)} "
                             f"times schedule factors {self.schedule.end} .. {self.schedule.start}): every bound "
                             f"must be finite and > 0")

    @classmethod
    def fixed(cls, tables, rel=0.03, names=None, mode="rel"):
        """Every table at ``rel`` at every iteration (the paper's non-adaptive baseline; with
        ``mode="abs"``, ``rel`` is an absolute bound)."""
        rel = check_real("rel", rel)
        return cls(TableClasses.uniform(tables, "base", {"tight": rel, "base": rel, "loose": rel}, names),
                   Schedule.constant(1.0), mode)

    @classmethod
    def dual(cls, metrics, *, by="size", thresholds=None, class_bounds=None, schedule=None, names=None,
             mode="rel"):
        """Table classes from ``metrics`` (sizes or access counts) and a schedule (default step);
        ``class_bounds`` are absolute with ``mode="abs"`` (then give them: the defaults are
        fractions of the range)."""
        if by == "size":
            tables = TableClasses.by_size(metrics, thresholds, class_bounds=class_bounds, names=names)
        elif by == "frequency":
            tables = TableClasses.by_frequency(metrics, thresholds, class_bounds=class_bounds, names=names)
        else:
            raise ValueError(f"by must be 'size' or 'frequency', found {by!r}")
        return cls(tables, Schedule.step() if schedule is None else schedule, mode)

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
        factor = check_real("factor", factor)
        bounds = {c: _product(b, factor) for c, b in self.tables.class_bounds.items()}
        return Policy(TableClasses(self.tables.assignment, bounds, self.tables.names), self.schedule, self.mode)

    @property
    def n_tables(self) -> int:
        return self.tables.tables

    def bound(self, table, iteration) -> float:
        """Bound for ``table`` (index or name) at ``iteration`` (int >= 0)."""
        return _product(self.tables.bound(table), self.schedule(iteration))

    def bounds(self, iteration) -> np.ndarray:
        """Bounds of all tables at ``iteration``, float64 ``(tables,)``."""
        f = self.schedule(iteration)
        return np.array([_product(b, f) for b in self.tables.bounds()], dtype=np.float64)

    def default(self, iteration) -> float:
        """The ``base`` class bound at ``iteration`` (a scalar default for the call), whether or
        not a table is in ``base``."""
        return _product(self.tables.class_bounds["base"], self.schedule(iteration))

    def range(self) -> tuple:
        """``(smallest, largest)`` of every bound this policy can return: :meth:`bound`,
        :meth:`bounds` and :meth:`default`, at any iteration."""
        returned = [*self.tables.bounds(), self.tables.class_bounds["base"]]
        return _product(min(returned), self.schedule.end), _product(max(returned), self.schedule.start)

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": _VERSION, "mode": self.mode,
                "tables": self.tables.to_dict(), "schedule": self.schedule.to_dict()}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a mapping, found {type(d).__name__}")
        if d.get("format") != _FORMAT:
            raise ValueError(f"not an embzip policy: format is {d.get('format')!r}, expected {_FORMAT!r}")
        unknown = sorted(str(k) for k in d if k not in _FIELDS)
        if unknown:  # (a misspelt key would otherwise leave its field at the default)
            raise ValueError(f"unknown policy keys {unknown}; expected some of {_FIELDS}")
        if type(d.get("version")) is not int or d["version"] != _VERSION:  # (true == 1 == 1.0)
            raise ValueError(f"unsupported policy version {d.get('version')!r}, expected {_VERSION}")
        return cls(TableClasses.from_dict(d["tables"]), Schedule.from_dict(d["schedule"]), d.get("mode", "rel"))

    def to_json(self, **kwargs) -> str:
        """JSON text; :meth:`from_json` gives back an equal policy."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text):
        """Inverse of :meth:`to_json`. Raises TypeError when ``text`` is not str or bytes, and
        ValueError for anything wrong in it: malformed JSON, or JSON that is not a policy
        (a value of the wrong type included)."""
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"from_json needs str or bytes, found {type(text).__name__}")
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as exc:  # (JSONDecodeError, bad UTF-8; nesting too deep)
            raise ValueError(f"not valid JSON: {exc}") from None
        try:
            return cls.from_dict(d)
        except KeyError as exc:
            raise ValueError(f"policy JSON lacks the key {exc}") from None
        except TypeError as exc:  # (the text is what is wrong, not the caller's argument)
            raise ValueError(f"policy JSON holds a value of the wrong type: {exc}") from None
