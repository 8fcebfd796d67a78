"""Tables of comparison results: plain text, markdown, JSON-ready."""

from __future__ import annotations

import math

import numpy as np

from .datasets import MiB

COLUMNS = ("dataset", "bound", "method", "ratio", "comp MB/s", "decomp MB/s",
           "max err/bound", "<= bound")


def format_ratio(v: float) -> str:
    """Ratio with 3 significant digits: ``6.55``, ``25.8``."""
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _err_text(v):
    # A violation by float rounding (1.0000169) must not print as "1.0000".
    if v <= 1.0 or v >= 1.001:
        return f"{v:.4f}" if v < 100 else f"{v:.3g}"
    return f"{v:.7f}"


def _cells(row) -> list:
    head = [row["dataset"], row["bound"], row["method"]]
    if row["status"] != "ok":
        return head + [row["status"], "", "", "", ""]
    # "NO": broke a bound it aims at; "no": fp16 / int8, which promise no bound.
    held = "yes" if row["within_bound"] else ("NO" if row["promises_bound"] else "no")
    return head + [format_ratio(row["ratio"]), f"{row['compress_MBps']:.0f}",
                   f"{row['decompress_MBps']:.0f}", _err_text(row["max_error_over_bound"]), held]


def format_table(results: list) -> str:
    """Plain-text table, a blank line between (dataset, bound) groups.

    Examples
    --------
    >>> format_table([]).split()[:3]
    ['dataset', 'bound', 'method']
    """
    rows = [_cells(r) for r in results]
    ok_rows = [cells for cells, r in zip(rows, results) if r["status"] == "ok"]
    widths = [max([len(c)] + [len(r[i]) for r in (ok_rows if i > 2 else rows)])
              for i, c in enumerate(COLUMNS)]
    numeric = {3, 4, 5, 6}

    def line(cells, ok=True):
        if not ok:  # the status text spans the measurement columns
            return "  ".join(c.ljust(w) for c, w in zip(cells[:3], widths)) + "  " + cells[3]
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(list(COLUMNS)), "  ".join("-" * w for w in widths)]
    previous = None
    for result, cells in zip(results, rows):
        group = (result["dataset"], result["bound"])
        if previous is not None and group != previous:
            out.append("")
        previous = group
        out.append(line(cells, result["status"] == "ok"))
    return "\n".join(out)


def format_markdown(results: list) -> str:
    """The same table as GitHub markdown (pasteable into notes and issues)."""
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * 3 + "---:|" * 4 + "---|"]
    for row in results:
        out.append("| " + " | ".join(_cells(row)) + " |")
    return "\n".join(out)


def json_ready(results: list) -> list:
    """``results`` with non-finite floats as None, so ``json.dump`` writes strict JSON."""
    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v
    return [{k: clean(v) for k, v in row.items()} for row in results]


def describe(name: str, data: np.ndarray) -> str:
    """One line about a dataset: shape, dtype, size, value range, share of unique rows."""
    rows2d = data.reshape(data.shape[0], -1) if data.ndim > 1 else data.reshape(-1, 1)
    unique = np.unique(rows2d, axis=0).shape[0] if data.ndim > 1 else None
    text = (f"{name}: {data.dtype} {'x'.join(map(str, data.shape))} "
            f"({data.nbytes / MiB:.2f} MiB), values [{float(data.min()):.4g}, "
            f"{float(data.max()):.4g}]")
    if unique is not None:
        text += f", {unique / rows2d.shape[0]:.1%} unique rows"
    return text
