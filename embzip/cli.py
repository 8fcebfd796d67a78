"""The ``embzip`` command.

Each subcommand is a pair: ``_add_<name>(subparsers)`` declares its arguments and sets
``func``; ``_run_<name>(args) -> int`` does the work and returns the exit status. Adding a
subcommand is adding a pair and one line in :data:`SUBCOMMANDS`.

Exit statuses: 0 success, 1 the work failed (e.g. a bound was violated, a frame is corrupt),
2 bad arguments, 130 interrupted. Errors are one line on stderr, never a traceback
(``EMBZIP_DEBUG=1`` re-raises unexpected errors to show one).

Examples
--------
>>> main(["demo", "--rows", "512", "--repeat", "1", "--methods", "embzip-auto"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import EmbzipError

__all__ = ["main", "build_parser"]

PROG = "embzip"


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line on stderr (no usage dump) and exit 2."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _method_list(text: str) -> list:
    from . import compare
    keys = [k.strip() for k in text.split(",") if k.strip()]
    try:
        compare.select_methods(keys)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not keys:
        raise argparse.ArgumentTypeError("expected a comma-separated list of methods")
    return keys


# ---------------------------------------------------------------------------------------- demo
def _add_demo(subparsers):
    p = subparsers.add_parser(
        "demo", help="compare embzip with SZ3, ZFP, zstd, fp16, int8 on real GloVe lookups",
        description="Compress a Zipf(1.05) lookup batch of GloVe 6B 50d rows with embzip "
                    "and the reference compressors at rel_error 0.01/0.03/0.05 and abs_error "
                    "1e-3, print the table, and verify embzip's error bound (exit 1 if broken).")
    p.add_argument("--rows", type=_positive_int, default=8192, help="batch rows (8192)")
    p.add_argument("--exponent", type=_positive_float, default=1.05, help="Zipf exponent (1.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the lookup indices (0)")
    p.add_argument("--repeat", type=_positive_int, default=3,
                   help="timed runs per measurement after a warm-up; median reported (3)")
    p.add_argument("--methods", type=_method_list, default=None,
                   help="comma-separated subset: " + ", ".join(_method_keys()))
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--json", metavar="PATH", help="also write the result rows as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_run_demo)


def _method_keys():
    from . import compare
    return [m.key for m in compare.METHODS]


def _progress_printer(enabled: bool):
    if not enabled:
        return None

    def show(dataset, spec, method):
        sys.stderr.write(f"\r\033[K  measuring {dataset} {spec.label} {method.label} ...")
        sys.stderr.flush()
    return show


def verdicts(results: list) -> list:
    """``(label, held, line)`` per embzip strategy present in ``results``.

    ``held`` is True only when every row of that strategy decoded and stayed within its bound.
    """
    out = []
    for label in dict.fromkeys(r["method"] for r in results if r["key"].startswith("embzip")):
        rows = [r for r in results if r["method"] == label]
        failed = [r for r in rows if r["status"] != "ok"]
        broken = [r for r in rows if r["status"] == "ok" and not r["within_bound"]]
        if failed:
            r = failed[0]
            out.append((label, False, f"{label}: FAILED at {r['bound']} ({r['status']})"))
        elif broken:
            where = ", ".join(f"{r['bound']} (max error / bound {r['max_error_over_bound']:.7f})"
                              for r in broken)
            out.append((label, False, f"{label}: BOUND VIOLATED at {where}"))
        else:
            worst = max(r["max_error_over_bound"] for r in rows)
            out.append((label, True, f"{label}: bound held at all {len(rows)} bounds "
                                     f"(worst max error / bound {worst:.7f})"))
    return out


def headline(results: list) -> list:
    """Per bound: best embzip ratio beside the best ratio of a bounded baseline."""
    from . import compare
    lines = []
    for bound in dict.fromkeys(r["bound"] for r in results):
        ok = [r for r in results if r["bound"] == bound and r["status"] == "ok"]
        ours = [r for r in ok if r["key"].startswith("embzip")]
        theirs = [r for r in ok if not r["key"].startswith("embzip") and r["promises_bound"]
                  and r["within_bound"]]
        if ours and theirs:
            a = max(ours, key=lambda r: r["ratio"])
            b = max(theirs, key=lambda r: r["ratio"])
            lines.append(f"{bound}: {a['method']} {compare.format_ratio(a['ratio'])}x vs best "
                         f"bounded baseline {b['method']} {compare.format_ratio(b['ratio'])}x")
    return lines


def _run_demo(args) -> int:
    from . import compare
    try:
        data = compare.glove_zipf_batch(args.rows, args.exponent, args.seed)
        name = "glove zipf"
    except compare.GloveUnavailableError as exc:
        print(f"{PROG}: note: {exc}; using a synthetic Zipf batch instead", file=sys.stderr)
        data = compare.synthetic_zipf_batch(args.rows, args.exponent, args.seed)
        name = "synthetic zipf"
    print(compare.describe(name, data))
    print(f"bounds: rel_error 0.01 / 0.03 / 0.05 of the batch range, abs_error 1e-3; "
          f"median of {args.repeat} run(s) after a warm-up; MB/s of the raw input")
    results = compare.run_comparison(
        {name: data}, compare.DEFAULT_BOUNDS, methods=args.methods, repeat=args.repeat,
        progress=_progress_printer(not args.quiet and sys.stderr.isatty()))
    if not args.quiet and sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    print()
    print(compare.format_markdown(results) if args.markdown else compare.format_table(results))
    print("('<= bound': NO = broke the bound it aims at; no = fp16 / int8, which promise none)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(compare.json_ready(results), fh, indent=1)
    print()
    for line in headline(results):
        print(line)
    chosen = [f"{r['bound']}: {r['detail']}" for r in results
              if r["key"] == "embzip-auto" and r["status"] == "ok" and r.get("detail")]
    if chosen:
        print("embzip auto chose: " + "; ".join(chosen))
    checks = verdicts(results)
    if not checks:
        print("no embzip method selected: nothing to verify")
        return 0
    for _, _, line in checks:
        print(line)
    return 0 if all(held for _, held, _ in checks) else 1


# ------------------------------------------------------------------------ compress / decompress
def _add_bound_args(p, required: bool):
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--abs-error", type=_positive_float, metavar="X",
                       help="every finite element decodes within X")
    group.add_argument("--rel-error", type=_positive_float, metavar="X",
                       help="the bound is X * (max - min) of the finite values")


def _load_npy(path: str):
    import numpy as np
    # allow_pickle=False: a .npy from elsewhere must not run code when loaded
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:  # numpy's message does not name the file
        raise ValueError(f"{path}: not a .npy array file ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, np.ndarray):  # an .npz archive loads as a mapping
        raise ValueError(f"{path}: expected a .npy array file, found an .npz archive")
    return data


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _info_dict(info) -> dict:
    """A :class:`embzip.FrameInfo` as plain JSON types."""
    return {"dtype": str(info.dtype), "shape": list(info.shape), "error_mode": info.error_mode,
            "error_value": info.error_value, "abs_error": info.abs_error,
            "strategy": info.strategy, "stages": list(info.stages), "sections": info.sections,
            "raw_size": info.raw_size, "frame_size": info.frame_size,
            "unique_rows": info.unique_rows, "ratio": info.ratio}


def _shape_text(shape) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


def _add_compress(subparsers):
    p = subparsers.add_parser("compress", help="compress a .npy float array into a frame",
                              description="Compress IN.npy (float32/float64) into the frame OUT.")
    p.add_argument("input", metavar="IN.npy")
    p.add_argument("output", metavar="OUT.ezf")
    _add_bound_args(p, required=True)
    p.add_argument("--strategy", choices=("fast", "compact", "auto"), default="auto",
                   help="fast: bit-pack; compact: rANS; auto: pick per stream (default)")
    p.add_argument("--json", action="store_true", help="print the frame's header as JSON")
    p.set_defaults(func=_run_compress)


def _run_compress(args) -> int:
    import embzip
    data = _load_npy(args.input)
    frame = embzip.compress(data, abs_error=args.abs_error, rel_error=args.rel_error,
                            strategy=args.strategy)
    # compress fully before opening OUT: a failure leaves no half-written file behind
    with open(args.output, "wb") as fh:
        fh.write(frame.tobytes())
    info = embzip.inspect(frame)
    if args.json:
        print(json.dumps({"input": args.input, "output": args.output, **_info_dict(info)}))
    else:
        print(f"{args.input} -> {args.output}: {info.dtype} {_shape_text(info.shape)}, "
              f"{info.raw_size} -> {info.frame_size} bytes (ratio {info.ratio:.2f}x), "
              f"abs_error {info.abs_error:.6g}, {' '.join(info.stages)}")
    return 0


def _add_decompress(subparsers):
    p = subparsers.add_parser("decompress", help="decode a frame into a .npy file",
                              description="Decode the frame IN into OUT.npy (original dtype "
                                          "and shape).")
    p.add_argument("input", metavar="IN.ezf")
    p.add_argument("output", metavar="OUT.npy")
    p.add_argument("--no-verify", action="store_true", help="skip the payload CRC32C check")
    p.set_defaults(func=_run_decompress)


def _run_decompress(args) -> int:
    import numpy as np
    import embzip
    array = embzip.decompress(_read_bytes(args.input), verify=not args.no_verify)
    with open(args.output, "wb") as fh:  # a handle: np.save(path) would append ".npy"
        np.save(fh, array, allow_pickle=False)
    return 0


def _add_inspect(subparsers):
    p = subparsers.add_parser("inspect", help="show a frame's header, stages, sizes and ratio",
                              description="Read a frame's header (checked by its CRC; the "
                                          "payload is not decoded).")
    p.add_argument("input", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the header as one JSON object")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args) -> int:
    import embzip
    info = embzip.inspect(_read_bytes(args.input))
    if args.json:
        print(json.dumps({"file": args.input, **_info_dict(info)}))
        return 0
    bound = f"{info.error_mode} {info.error_value:.6g}"
    lines = [f"file:        {args.input}",
             f"array:       {info.dtype} {_shape_text(info.shape)}",
             f"bound:       {bound} (every finite element within {info.abs_error:.9g})",
             f"strategy:    {info.strategy}",
             f"stages:      {' -> '.join(info.stages)}",
             "sections:    " + ", ".join(f"{k} {v} B" for k, v in info.sections.items()),
             f"size:        {info.raw_size} -> {info.frame_size} bytes "
             f"(ratio {info.ratio:.2f}x)"]
    if info.unique_rows is not None:  # deduplicated: rows are all axes but the last
        rows = info.raw_size // (info.dtype.itemsize * info.shape[-1])
        lines.append(f"unique rows: {info.unique_rows} of {rows}")
    print("\n".join(lines))
    return 0


# ---------------------------------------------------------------------------------------- bench
def _bound_list(text: str) -> list:
    """``rel:0.01,abs:1e-3`` -> BoundSpecs."""
    from . import compare
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


def _add_bench(subparsers):
    p = subparsers.add_parser(
        "bench", help="side-by-side comparison on a .npy file or the GloVe batch",
        description="Compress FILE.npy (default: a Zipf lookup batch of GloVe rows) with "
                    "embzip and SZ3, ZFP, zstd, fp16, int8 at each bound; print the table "
                    "(exit 1 if embzip broke a bound).")
    p.add_argument("input", metavar="FILE.npy", nargs="?", help="float array (default GloVe)")
    p.add_argument("--rows", type=_positive_int, default=8192, help="GloVe batch rows (8192)")
    p.add_argument("--bounds", type=_bound_list, default=None,
                   help="comma-separated rel:X / abs:X (default rel:0.01,rel:0.03,rel:0.05,"
                        "abs:0.001)")
    p.add_argument("--methods", type=_method_list, default=None,
                   help="comma-separated subset: " + ", ".join(_method_keys()))
    p.add_argument("--repeat", type=_positive_int, default=3,
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
    from . import compare
    if args.plot:  # fail before minutes of measuring, not after
        from . import plots
        plots.require_matplotlib()
    if args.input:
        data, name = _load_npy(args.input), args.input
        if data.dtype.kind != "f" or data.dtype.itemsize not in (4, 8):
            raise TypeError(f"{args.input}: expected a float32 or float64 array, found {data.dtype}")
    else:
        try:
            data, name = compare.glove_zipf_batch(args.rows), "glove zipf"
        except compare.GloveUnavailableError as exc:
            print(f"{PROG}: note: {exc}; using a synthetic Zipf batch", file=sys.stderr)
            data, name = compare.synthetic_zipf_batch(args.rows), "synthetic zipf"
    bounds = args.bounds or list(compare.DEFAULT_BOUNDS)
    methods = args.methods or _method_keys()
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
        from . import plots
        plots.bench_plot(data, args.plot, title=name, progress=not args.quiet)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0 if all(held for _, held, _ in checks) else 1


# ---------------------------------------------------------------------------------------- main
def _version() -> str:
    try:
        from importlib.metadata import version
        return version("embzip")
    except Exception:  # running from a source tree that was never installed
        import embzip
        return getattr(embzip, "__version__", "unknown")


SUBCOMMANDS = (_add_demo, _add_compress, _add_decompress, _add_inspect, _add_bench)


def build_parser() -> argparse.ArgumentParser:
    """The ``embzip`` argument parser with every subcommand registered."""
    parser = _OneLineParser(prog=PROG, description="Error-bounded lossy compression of "
                                                   "embedding batches.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv=None) -> int:
    """Run the ``embzip`` command; returns the exit status (console script and ``-m``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        choices = ", ".join(a.__name__[len("_add_"):] for a in SUBCOMMANDS)
        print(f"{PROG}: error: missing command (choose from: {choices}; see '{PROG} --help')",
              file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except EmbzipError as exc:  # a bad frame: the data's fault, not the arguments'
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ValueError, TypeError)) else 1
    except Exception as exc:  # EmbzipError and anything unforeseen: one line, not a traceback
        if os.environ.get("EMBZIP_DEBUG"):
            raise
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
