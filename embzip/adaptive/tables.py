"""The table-wise level: every table's class (tight / base / loose) and the class bounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from ._checks import check_int, check_real

__all__ = ["CLASSES", "DEFAULT_CLASS_BOUNDS", "TableClasses"]

#: The class names, from the tightest bound to the loosest.
CLASSES = ("tight", "base", "loose")
#: Default relative bound of each class (fraction of the value range); read-only.
DEFAULT_CLASS_BOUNDS = MappingProxyType({"tight": 0.01, "base": 0.03, "loose": 0.05})
_FIELDS = ("assignment", "class_bounds", "names")


@dataclass(frozen=True)
class TableClasses:
    """Table-wise level: a class (``tight`` / ``base`` / ``loose``) and its bound for every table.

    Parameters
    ----------
    assignment : sequence of str
        The class of table ``t`` at position ``t``; each one of :data:`CLASSES`.
    class_bounds : mapping, optional
        Bound of each class (all three keys), ``tight <= base <= loose``, all finite and > 0.
        Default :data:`DEFAULT_CLASS_BOUNDS` (0.01 / 0.03 / 0.05). Kept as a read-only
        mapping: a TableClasses, like every object here, cannot change once made.
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
    class_bounds: Mapping = field(default_factory=lambda: DEFAULT_CLASS_BOUNDS)
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
        bounds = {c: check_real(f"class_bounds[{c!r}]", self.class_bounds[c]) for c in CLASSES}
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
        object.__setattr__(self, "class_bounds", MappingProxyType(bounds))
        object.__setattr__(self, "names", names)

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def uniform(cls, tables, cls_name="base", class_bounds=None, names=None):
        """Every one of ``tables`` tables in the same class (``base`` by default).

        >>> TableClasses.uniform(3).assignment
        ('base', 'base', 'base')
        """
        tables = check_int("tables", tables, minimum=1)
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
            the rest to ``base``. Default: the 1/3 and 2/3 quantiles of ``sizes``, with a size
            equal to one going to ``base`` (tied tables share a class: three of 1 row and one
            of 1000 are ``base`` and the ``largest`` class, not all ``largest``).
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
        Default thresholds: the 1/3 and 2/3 quantiles of ``counts`` (a count equal to one goes
        to ``base``, as for :meth:`by_size`).

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
        t = check_int("table", table)
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

    def __reduce__(self):  # (a read-only mapping does not pickle; the constructor's arguments do)
        return type(self), (self.assignment, dict(self.class_bounds), self.names)

    def to_dict(self) -> dict:
        return {"assignment": list(self.assignment), "class_bounds": dict(self.class_bounds),
                "names": None if self.names is None else list(self.names)}

    @classmethod
    def from_dict(cls, d):
        """Inverse of :meth:`to_dict`: ``assignment`` is needed; ``class_bounds`` left out (or
        None) is the default, ``names`` left out is None; an unknown key raises ValueError."""
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a mapping, found {type(d).__name__}")
        unknown = sorted(str(k) for k in d if k not in _FIELDS)
        if unknown:  # (a misspelt key would otherwise leave its field at the default)
            raise ValueError(f"unknown table-class keys {unknown}; expected some of {_FIELDS}")
        return cls(d["assignment"], _default_bounds(d.get("class_bounds")), d.get("names"))


def _default_bounds(class_bounds):
    return DEFAULT_CLASS_BOUNDS if class_bounds is None else class_bounds


def _classify(metrics, thresholds, top, what):
    if isinstance(metrics, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of numbers")
    values = [check_real(f"{what}[{i}]", v, allow_zero=True) for i, v in enumerate(metrics)]
    if not values:
        raise ValueError(f"{what} must not be empty")
    if top not in ("tight", "loose"):
        raise ValueError(f"the class of the top group must be 'tight' or 'loose', found {top!r}")
    bottom = "loose" if top == "tight" else "tight"
    if thresholds is None:
        # Strict on both sides: with ties a quantile is a table's own value, and ">= high"
        # would put every table equal to it (all of [1, 1, 1, 1000]) in the top class.
        lo, hi = (float(x) for x in np.quantile(values, [1 / 3, 2 / 3]))
        return tuple(top if v > hi else bottom if v < lo else "base" for v in values)
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence) or len(thresholds) != 2:
        raise TypeError(f"thresholds must be a pair (low, high), found {thresholds!r}")
    lo = check_real("thresholds[0]", thresholds[0], positive=False)
    hi = check_real("thresholds[1]", thresholds[1], positive=False)
    if lo > hi:
        raise ValueError(f"thresholds must satisfy low <= high, found ({lo}, {hi})")
    return tuple(top if v >= hi else bottom if v < lo else "base" for v in values)
