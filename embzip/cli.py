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


# ---------------------------------------------------------------------------------------- main
def _version() -> str:
    try:
        from importlib.metadata import version
        return version("embzip")
    except Exception:  # running from a source tree that was never installed
        import embzip
        return getattr(embzip, "__version__", "unknown")


SUBCOMMANDS = (_add_demo,)


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
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ValueError, TypeError)) else 1
    except Exception as exc:  # EmbzipError and anything unforeseen: one line, not a traceback
        if os.environ.get("EMBZIP_DEBUG"):
            raise
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
