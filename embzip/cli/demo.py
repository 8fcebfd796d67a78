"""``embzip demo``: embzip beside the reference compressors on real GloVe lookups."""

from __future__ import annotations

import json
import sys

from ._args import PROG, method_keys, method_list, positive_float, positive_int

__all__ = ["add", "verdicts", "headline"]


def add(subparsers):
    p = subparsers.add_parser(
        "demo", help="compare embzip with SZ3, ZFP, zstd, fp16, int8 on real GloVe lookups",
        description="Compress a Zipf(1.05) lookup batch of GloVe 6B 50d rows with embzip "
                    "and the reference compressors at rel_error 0.01/0.03/0.05 and abs_error "
                    "1e-3, print the table, and verify embzip's error bound (exit 1 if broken).")
    p.add_argument("--rows", type=positive_int, default=8192, help="batch rows (8192)")
    p.add_argument("--exponent", type=positive_float, default=1.05, help="Zipf exponent (1.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the lookup indices (0)")
    p.add_argument("--repeat", type=positive_int, default=3,
                   help="timed runs per measurement after a warm-up; median reported (3)")
    p.add_argument("--methods", type=method_list, default=None,
                   help="comma-separated subset: " + ", ".join(method_keys()))
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--json", metavar="PATH", help="also write the result rows as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=_run_demo)


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
    from .. import compare
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
    from .. import compare
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
