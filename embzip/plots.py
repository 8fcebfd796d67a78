"""Rate-distortion plots: embzip beside SZ3, ZFP, fp16 and int8 on the same array.

Two panels, drawn by ``embzip bench --plot out.png``:

- compression ratio against the error bound asked for (``rel_error``, log scale), and
- bits per value against the max error actually measured (log scale, normalized by the
  value range, so that curves of different data read the same way).

fp16 and int8 rowwise have no bound knob: they are one point each (their ratio does not
change with the bound), drawn as horizontal lines on the first panel.

matplotlib is an optional dependency (``pip install 'embzip[bench]'``), imported only when a
plot is drawn, with the non-interactive Agg backend (no display needed).

Examples
--------
>>> import numpy as np
>>> from embzip import plots
>>> x = np.random.default_rng(0).normal(size=(512, 16)).astype(np.float32)
>>> rows = plots.rate_distortion(x, rel_bounds=(1e-2, 1e-1), methods=("embzip-auto", "fp16"))
>>> [(r["key"], r["bound_value"]) for r in rows]
[('embzip-auto', 0.01), ('embzip-auto', 0.1), ('fp16', 0.01)]
>>> plots.plot_rate_distortion(rows, "/tmp/rd.png")  # doctest: +SKIP
"""

from __future__ import annotations

import sys

import numpy as np

from . import compare

__all__ = ["REL_SWEEP", "PLOT_METHODS", "require_matplotlib", "rate_distortion",
           "plot_rate_distortion", "bench_plot"]

#: The ``rel_error`` bounds swept (the seed paper's 0.01-0.05 sits in the middle).
REL_SWEEP = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 5e-2, 1e-1)
#: Methods on the plot; ``fixed``-rate ones (no bound knob) are measured once.
PLOT_METHODS = ("embzip-fast", "embzip-auto", "sz3", "zfp", "fp16", "int8")
_STYLE = {"embzip-fast": ("C0", "o", "--"), "embzip-compact": ("C0", "^", ":"),
          "embzip-auto": ("C0", "s", "-"), "sz3": ("C1", "D", "-"), "zfp": ("C2", "v", "-"),
          "qzstd3": ("C4", "x", "-"), "qzstd19": ("C4", "+", "--"),
          "fp16": ("C3", "*", ":"), "int8": ("C5", "P", ":")}


def require_matplotlib():
    """matplotlib with the Agg backend, or ImportError saying how to install it."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise ImportError("plots need matplotlib: pip install 'embzip[bench]'") from None
    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt
    return plt


def rate_distortion(data: np.ndarray, rel_bounds=REL_SWEEP, methods=PLOT_METHODS,
                    progress: bool = False) -> list:
    """Measure each method at each ``rel_error`` bound (one timed run each); result rows.

    Methods without a bound (fp16, int8) are measured at the first bound only. Rows are
    those of :func:`embzip.compare.measure` (``ratio``, ``max_error``, ``compressed_bytes``...);
    methods not installed come back with a ``status`` saying so and are left off plots.
    """
    chosen = compare.select_methods(list(methods))
    plan = [(m, b) for m in chosen for b in (rel_bounds if m.promises_bound else rel_bounds[:1])]
    rows = []
    for i, (method, bound) in enumerate(plan, 1):
        if progress:
            sys.stderr.write(f"plot {i}/{len(plan)}: rel {bound:g} {method.label}\n")
        row = compare.measure(method, data, compare.BoundSpec("rel", bound), repeat=1,
                              budget_s=0.5)
        row["values"] = int(data.size)  # for bits per value
        rows.append(row)
    return rows


def plot_rate_distortion(rows: list, path: str, title: str = "", value_range: float | None = None):
    """Draw the two panels from :func:`rate_distortion` rows into ``path`` (PNG, SVG, PDF)."""
    plt = require_matplotlib()
    fig, (ax_ratio, ax_bits) = plt.subplots(1, 2, figsize=(11, 4.2))
    ok = [r for r in rows if r["status"] == "ok"]
    for key in dict.fromkeys(r["key"] for r in ok):
        mine = sorted((r for r in ok if r["key"] == key), key=lambda r: r["bound_value"])
        color, marker, line = _STYLE.get(key, ("k", ".", "-"))
        label = mine[0]["method"]
        bits = [8.0 * r["compressed_bytes"] / r["values"] for r in mine]
        errors = [max(r["max_error"], 1e-30) / (value_range or 1.0) for r in mine]
        if mine[0]["promises_bound"]:
            ax_ratio.plot([r["bound_value"] for r in mine], [r["ratio"] for r in mine],
                          color=color, marker=marker, linestyle=line, label=label)
            ax_bits.plot(errors, bits, color=color, marker=marker, linestyle=line, label=label)
        else:  # one point: no bound knob
            ax_ratio.axhline(mine[0]["ratio"], color=color, linestyle=line, label=f"{label} (no bound)")
            ax_bits.plot(errors, bits, color=color, marker=marker, linestyle="none", markersize=10,
                         label=f"{label} (no bound)")
    ax_ratio.set(xscale="log", yscale="log", xlabel="error bound asked (rel_error, of the range)",
                 ylabel="compression ratio", title="ratio vs bound")
    ax_bits.set(xscale="log", xlabel="max error measured" + (" / value range" if value_range else ""),
                ylabel="bits per value", title="bits/value vs max error")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    # ratios read as "2, 5, 10, 20", not "2 x 10^0"
    ax_ratio.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_ratio.yaxis.set_major_formatter(ScalarFormatter())
    ax_ratio.yaxis.set_minor_formatter(NullFormatter())
    for ax in (ax_ratio, ax_bits):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bench_plot(data: np.ndarray, path: str, title: str = "", progress: bool = False) -> list:
    """Measure the sweep on ``data`` and draw it into ``path``; returns the rows."""
    rows = rate_distortion(data, progress=progress)
    finite = data[np.isfinite(data)]
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    plot_rate_distortion(rows, path, title=title, value_range=span or None)
    return rows
