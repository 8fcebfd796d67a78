"""``embzip bench``: rate-distortion of embzip and the baselines on GloVe or your .npy."""

from __future__ import annotations

import argparse
import json
import sys

from ._args import PROG, load_npy, method_keys, method_list, positive_int
from .demo import verdicts

__all__ = ["add"]


def _bound_list(text: str) -> list:
    """``rel:0.01,abs:1e-3`` -> BoundSpecs."""
    from .. import compare
    specs = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        kind, _, value = item.partition(":")
        try:
            specs.append(compare.BoundSpec(kind.strip(), float(value)))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad bound {item!r} (want rel:X or abs:X): {exc}") from None
    if not specs:
        raise argparse.ArgumentTypeError("expected bounds like rel:0.01,abs:1e-3")
    return specs


def add(subparsers):
    p = subparsers.add_parser(
        "bench", help="side-by-side comparison on a .npy file or the GloVe batch",
        description="Compress FILE.npy (default: a Zipf lookup batch of GloVe rows) with "
                    "embzip and SZ3, ZFP, zstd, fp16, int8 at each bound; print the table "
                    "(exit 1 if embzip broke a bound).")
    p.add_argument("input", metavar="FILE.npy", nargs="?", help="float array (default GloVe)")
    p.add_argument("--rows", type=positive_int, default=8192, help="GloVe batch rows (8192)")
    p.add_argument("--bounds", type=_bound_list, default=None,
                   help="comma-separated rel:X / abs:X (default rel:0.01,rel:0.03,rel:0.05,"
                        "abs:0.001)")
    p.add_argument("--methods", type=method_list, default=None,
                   help="comma-separated subset: " + ", ".join(method_keys()))
    p.add_argument("--repeat", type=positive_int, default=3,
                   help="timed runs per measurement after a warm-up; median reported (3)")
    p.add_argument("--json", action="store_true", help="print the result rows as JSON")
    p.add_argument("--plot", metavar="OUT.png",
                   help="also draw rate-distortion curves (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_run_bench)


def _bench_progress(total: int, enabled: bool):
    """A progress bar on stderr, one step per measurement (redrawn in place on a terminal)."""
    if not enabled:
        return None
    tty = sys.stderr.isatty()
    done = [0]

    def show(dataset, spec, method):
        done[0] += 1
        filled = int(20 * (done[0] - 1) / total)
        line = f"[{'#' * filled}{'.' * (20 - filled)}] {done[0]}/{total} {spec.label} {method.label}"
        sys.stderr.write(f"\r\033[K{line}" if tty else line + "\n")
        sys.stderr.flush()
    return show


def _run_bench(args) -> int:
    from .. import compare
    if args.plot:  # fail before minutes of measuring, not after
        from .. import plots
        plots.require_matplotlib()
    if args.input:
        data, name = load_npy(args.input), args.input
        if data.dtype.kind != "f" or data.dtype.itemsize not in (4, 8):
            raise TypeError(f"{args.input}: expected a float32 or float64 array, found {data.dtype}")
    else:
        try:
            data, name = compare.glove_zipf_batch(args.rows), "glove zipf"
        except compare.GloveUnavailableError as exc:
            print(f"{PROG}: note: {exc}; using a synthetic Zipf batch", file=sys.stderr)
            data, name = compare.synthetic_zipf_batch(args.rows), "synthetic zipf"
    bounds = args.bounds or list(compare.DEFAULT_BOUNDS)
    methods = args.methods or method_keys()
    show = _bench_progress(len(bounds) * len(methods), not args.quiet)
    results = compare.run_comparison({name: data}, bounds, methods=methods, repeat=args.repeat,
                                     progress=show)
    if show is not None and sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    checks = verdicts(results)
    if args.json:
        print(json.dumps(compare.json_ready(results)))
    else:
        print(compare.describe(name, data))
        print(compare.format_table(results))
        for _, _, line in checks:
            print(line)
    if args.plot:
        from .. import plots
        plots.bench_plot(data, args.plot, title=name, progress=not args.quiet)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0 if all(held for _, held, _ in checks) else 1
