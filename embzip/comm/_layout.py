"""Error bounds per destination and per table: which frames a segment becomes, with which bound.

A segment (the elements for one destination) is compressed as one frame, or, with per-table
bounds, as one frame per group of tables that share a bound value. ``rel_error`` is relative
to the range of the values *in that frame* (the destination's segment, or the group's
columns of it), exactly as :func:`embzip.compress` resolves it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from .._jit import kernel

__all__ = ["TableLayout", "BoundPlan", "resolve"]


@dataclasses.dataclass(frozen=True)
class TableLayout:
    """Column layout of ``[batch, tables * dim]`` payloads, optionally with one bound per table.

    Each destination's segment is read as rows of ``tables * dim`` values where columns
    ``t*dim : (t+1)*dim`` belong to table ``t`` (a DLRM forward all-to-all: rows are samples,
    each table contributes one ``dim``-long embedding vector per sample). Rows of ``dim``
    values are embedding vectors, so repeated vectors are stored once.

    Parameters
    ----------
    dim : int
        Embedding dimension: the length of one table's vector.
    bounds : array_like, optional
        Bound per table, shape ``(tables,)`` (every destination) or ``(size, tables)`` (per
        destination and table), in the mode of the ``abs_error`` / ``rel_error`` argument of
        the call; ``None`` or NaN entries take that argument's value. Tables that share a
        value are compressed together (one frame per distinct value and destination).
        Omitted: every table gets the call's bound and each segment is one frame.

    Segments must be whole rows of ``tables * dim`` values; with per-table bounds, a 2-D (or
    N-d, C-ordered) host send buffer must also be shaped ``[..., tables * dim]``,
    ``[..., tables, dim]`` or ``[batch * tables, dim]``, so that a wrong table count is an
    error rather than bounds applied to the wrong columns (flat and GPU buffers are not
    checked: their rows are not known).

    Examples
    --------
    >>> from embzip.comm import TableLayout
    >>> layout = TableLayout(dim=50, bounds=[0.01] * 20 + [0.05] * 6)  # 26 tables
    >>> layout.tables
    26
    """

    dim: int
    bounds: object = None

    def __post_init__(self):
        if isinstance(self.dim, bool) or not isinstance(self.dim, numbers.Integral) or self.dim <= 0:
            raise ValueError(f"TableLayout.dim must be a positive integer, found {self.dim!r}")
        if self.bounds is not None:
            arr = _bound_array(self.bounds, "TableLayout.bounds")
            if arr.ndim not in (1, 2) or arr.shape[-1] == 0:
                raise ValueError(f"TableLayout.bounds must have shape (tables,) or (size, tables), found {arr.shape}")
            object.__setattr__(self, "bounds", arr)

    @property
    def tables(self):
        """Number of tables (None when no per-table bounds are given)."""
        return None if self.bounds is None else int(self.bounds.shape[-1])


def _bound_array(values, what: str) -> np.ndarray:
    """Float array of bounds, NaN for None entries; rejects non-numbers, <= 0 and infinities."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":  # (a training loop's case: 3x faster)
        arr = values.astype(np.float64)  # (a copy: the layout keeps its own)
    else:
        try:
            arr = np.array(values, dtype=object)
            # (astype would take True as 1.0 and "0.5" as 0.5: as scalar bounds, they are refused)
            if any(v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real))
                   for v in arr.flat):
                raise TypeError
            arr = np.where(np.equal(arr, None), np.nan, arr).astype(np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{what} must hold real numbers or None") from None
    bad = _first_bad_bound(arr.reshape(-1))
    if bad >= 0:
        raise ValueError(f"{what} entries must be finite and > 0, found {arr.reshape(-1)[bad]!r}")
    return arr


@kernel
def _first_bad_bound(flat):
    """Index of the first entry that is neither NaN (the default bound) nor finite and > 0, or
    -1 (one compiled call: numpy's four small-array steps cost ~4 us a TableLayout)."""
    for i in range(flat.size):
        v = flat[i]
        if v == v and not (0.0 < v < np.inf):
            return i
    return -1


def _check_scalar(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, found {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be finite and > 0, found {value!r}")
    return value


@dataclasses.dataclass
class BoundPlan:
    """How every destination's segment is cut into frames, and each frame's bound."""

    mode: str  # "abs" or "rel": the keyword passed to embzip.compress
    per_dest: np.ndarray  # float64 [size]: each destination's segment bound
    dim: int  # row width of a frame (0: use the buffer's own row width, or 1-D)
    table_bounds: object  # float64 [size, tables] resolved per-table bounds, or None

    def groups(self, d: int):
        """[(table indices, bound)] for destination ``d``, or None for one frame per segment."""
        if self.table_bounds is None:
            return None
        row = self.table_bounds[d]
        values = list(dict.fromkeys(row.tolist()))  # distinct, in order of first table
        if len(values) == 1:
            return None
        return [(np.flatnonzero(row == v), v) for v in values]

    def row_unit(self, row_hint: int) -> int:
        """Elements per row of the segments (chunks are cut on row boundaries)."""
        if self.table_bounds is not None:
            return self.dim * self.table_bounds.shape[1]
        return self.dim or row_hint or 1


def resolve(abs_error, rel_error, bounds, size: int, send_counts: np.ndarray, row: int = 0,
            across: int = 0) -> BoundPlan:
    """Validate the bound arguments of a call against this rank's send counts (and the send
    buffer's row width ``row``, 0 when it has none; ``across``: the length of the axis before
    the row's in an N-d buffer, N >= 3, else 0)."""
    if (abs_error is None) == (rel_error is None):
        raise ValueError(f"give exactly one of abs_error and rel_error (it picks the mode and is the default "
                         f"bound), found abs_error={abs_error!r}, rel_error={rel_error!r}")
    mode, default = ("abs", _check_scalar("abs_error", abs_error)) if abs_error is not None else \
        ("rel", _check_scalar("rel_error", rel_error))
    per_dest = np.full(size, default)
    dim, table_bounds = 0, None
    if isinstance(bounds, TableLayout):
        dim = bounds.dim
        if bounds.bounds is not None:
            arr = bounds.bounds
            if arr.ndim == 2 and arr.shape[0] != size:
                raise ValueError(f"TableLayout.bounds has shape {arr.shape}: a 2-D one needs one row per rank ({size})")
            table_bounds = np.broadcast_to(arr, (size, arr.shape[-1])).copy()
            table_bounds[np.isnan(table_bounds)] = default
        unit = dim * (table_bounds.shape[1] if table_bounds is not None else 1)
        bad = np.flatnonzero(send_counts % unit)
        if bad.size:
            what = f"{table_bounds.shape[1]} tables x dim {dim}" if table_bounds is not None else f"dim {dim}"
            raise ValueError(f"send counts[{bad[0]}] is {send_counts[bad[0]]}, not a whole number of rows of "
                             f"{unit} values ({what}) as the TableLayout says")
        tables = 0 if table_bounds is None else table_bounds.shape[1]
        if tables and row and row != unit and not (row == dim and across in (0, tables)):
            shape = f"[..., {across}, {row}]" if across else f"{row} values wide"
            raise ValueError(f"the send buffer's rows are {shape}, neither the TableLayout's rows of {unit} values "
                             f"({tables} tables x dim {dim}) nor [..., {tables}, {dim}] or [..., {dim}]: its bounds "
                             f"would fall on the wrong columns; is the table count right?")
    elif bounds is not None:
        if isinstance(bounds, (str, bytes)) or np.ndim(bounds) != 1:
            raise TypeError(f"bounds must be a TableLayout or one bound per destination (a sequence of {size}), "
                            f"found {type(bounds).__name__}")
        arr = _bound_array(bounds, "bounds")
        if arr.shape != (size,):
            raise ValueError(f"bounds must hold one bound per destination ({size}), found {arr.shape[0]}")
        per_dest = np.where(np.isnan(arr), default, arr)
    return BoundPlan(mode=mode, per_dest=per_dest, dim=dim, table_bounds=table_bounds)
