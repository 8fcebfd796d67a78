"""embzip beside SZ3, ZFP, quantize+zstd, fp16 and int8 rowwise: one process, same data.

Datasets: a Zipf(1.05) lookup batch of 8192 GloVe 6B 50d rows (hot rows repeat), the first
8192 GloVe rows in order (no repeats), and 64 MiB of synthetic embedding-like float32
(see ``embzip.compare.synthetic``). Bounds: rel_error 0.01 / 0.03 / 0.05 of the range, and
abs_error 1e-3. Prints the table and writes ``results/compare.md`` and ``results/compare.json``
beside this script.

Usage::

    python bench/compare.py              # full run (several minutes: zstd-19 on 64 MiB is slow)
    python bench/compare.py --quick      # 8 MiB synthetic
    python bench/compare.py --repeat 5 --methods embzip-auto,sz3
    python bench/compare.py --threads 1  # embzip on one numba thread
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    from embzip import compare
except ModuleNotFoundError:  # run from a source checkout that was never pip-installed
    sys.path.insert(0, str(HERE.parent))
    from embzip import compare
DATASET_KEYS = ("glove-zipf", "glove-zipf-clipped", "glove-order", "synthetic")


def build_datasets(keys, synthetic_bytes: int) -> dict:
    """Name -> array for the chosen dataset keys; GloVe ones are skipped if not installed."""
    builders = {
        "glove-zipf": ("glove zipf 8192", lambda: compare.glove_zipf_batch(8192, 1.05, 0)),
        "glove-zipf-clipped": ("glove zipf clipped 8192",
                               lambda: compare.glove_zipf_batch_clipped(8192, 1.05, 0)),
        "glove-order": ("glove in order 8192", lambda: compare.glove_in_order(8192)),
        "synthetic": (f"synthetic {synthetic_bytes / compare.MiB:g} MiB",
                      lambda: compare.synthetic(synthetic_bytes)),
    }
    datasets = {}
    for key in keys:
        name, build = builders[key]
        try:
            datasets[name] = build()
        except compare.GloveUnavailableError as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
    return datasets


def environment() -> dict:
    """Machine and package versions, so a pasted table says where it was measured."""
    versions = {}
    for package in ("embzip", "numpy", "numba", "pysz", "zfpy", "zstandard"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        import numba
        threads = numba.get_num_threads()
    except ImportError:
        threads = None
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "numba_threads": threads, "versions": versions}


def write_reports(out_dir: Path, results: list, env: dict, descriptions: list) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    lines = [
        "# embzip vs reference compressors", "",
        f"Measured {env['date']} on {env['machine']}, {env['cpus']} CPUs "
        f"(numba threads: {env['numba_threads']}; 1-min load average before/after: "
        f"{env.get('load_avg_1min')}), Python {env['python']}; {versions}.", "",
        "Same process, same data. Ratio = raw bytes / compressed bytes; MB/s of the raw input, "
        "median of the timed runs after a warm-up. Max error measured in float64 on the decoded "
        "values, divided by the absolute bound (a rel bound is resolved as rel * (max - min)). "
        "'<= bound': NO = broke the bound it aims at; no = fp16 / int8, which promise none. "
        "embzip uses numba threads; the baselines run single-threaded.", "",
    ] + [f"- {d}" for d in descriptions] + ["", compare.format_markdown(results), ""]
    (out_dir / "compare.md").write_text("\n".join(lines))
    with open(out_dir / "compare.json", "w") as fh:
        json.dump({"environment": env, "datasets": descriptions,
                   "results": compare.json_ready(results)}, fh, indent=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 MiB synthetic instead of 64 MiB")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs after a warm-up (3)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated keys: " + ", ".join(m.key for m in compare.METHODS))
    parser.add_argument("--datasets", default=",".join(DATASET_KEYS),
                        help="comma-separated: " + ", ".join(DATASET_KEYS))
    parser.add_argument("--threads", type=int, default=None,
                        help="numba threads for embzip (default: numba's, one per core)")
    parser.add_argument("--out", type=Path, default=HERE / "results",
                        help="folder for compare.md / compare.json (bench/results)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    keys = [k.strip() for k in args.datasets.split(",") if k.strip()]
    if unknown := [k for k in keys if k not in DATASET_KEYS]:
        parser.error(f"unknown dataset {unknown[0]!r}; choose from {', '.join(DATASET_KEYS)}")
    methods = None
    if args.methods:
        try:
            methods = compare.select_methods([k.strip() for k in args.methods.split(",")])
        except ValueError as exc:
            parser.error(str(exc))

    if args.threads is not None:
        import numba
        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            parser.error(f"--threads must be in 1..{numba.config.NUMBA_NUM_THREADS}")
        numba.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    datasets = build_datasets(keys, (8 if args.quick else 64) * compare.MiB)
    descriptions = [compare.describe(name, data) for name, data in datasets.items()]
    for line in descriptions:
        print(line)
    start = time.perf_counter()
    results = compare.run_comparison(
        datasets, compare.DEFAULT_BOUNDS, methods=methods, repeat=args.repeat,
        progress=lambda d, b, m: print(f"  {d} | {b.label} | {m.label}", file=sys.stderr))
    print(f"\nmeasured in {time.perf_counter() - start:.0f} s\n")
    print(compare.format_table(results))
    env = environment()
    # Other processes on the machine change the timings (numba's threads wait on each other).
    env["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    write_reports(args.out, results, env, descriptions)
    print(f"\nwrote {args.out / 'compare.md'} and {args.out / 'compare.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
