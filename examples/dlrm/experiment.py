"""Accuracy and speed of the DLRM example across all-to-all compression settings.

    python examples/dlrm/experiment.py --ranks 4 --seeds 0 1 2 --iterations 600
    sudo python examples/dlrm/experiment.py --slow-link 1gbit     # 4 ranks on a shaped 1 Gbit/s link

Runs ``train.py`` under ``mpiexec -n RANKS`` for each configuration x seed:

    uncompressed        --compress none
    forward fixed       --compress forward --policy fixed
    forward dual        --compress forward --policy dual
    fwd+bwd dual        --compress forward+backward --policy dual

and writes ``results/dlrm.md`` (test AUC and logloss mean +- spread over seeds, iteration time,
all-to-all time forward / backward, bytes sent, speedup against uncompressed in the same
run) plus ``results/dlrm_*.png`` and the raw ``results/dlrm.json``.

``--slow-link RATE`` (root) runs every configuration inside a private network namespace whose
loopback is capped with ``tc tbf`` and forces MPICH onto TCP (no shared memory), so the
all-to-all bytes cross the shaped link; the namespace is deleted on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TRAIN = os.path.join(HERE, "train.py")

CONFIGS = [
    ("uncompressed", ["--compress", "none"]),
    ("forward fixed", ["--compress", "forward", "--policy", "fixed"]),
    ("forward dual", ["--compress", "forward", "--policy", "dual"]),
    ("fwd+bwd dual", ["--compress", "forward+backward", "--policy", "dual"]),
]
TCP_ENV = ["-genv", "MPIR_CVAR_NOLOCAL", "1", "-genv", "MPIR_CVAR_CH4_NETMOD", "ofi",
           "-genv", "FI_PROVIDER", "tcp", "-genv", "FI_TCP_IFACE", "lo"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--configs", nargs="+", default=[c for c, _ in CONFIGS], help="subset of the configuration names")
    p.add_argument("--slow-link", metavar="RATE", help="tc rate, e.g. 1gbit (needs root)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more train.py arguments")
    return p.parse_args(argv)


def run_one(mpiexec, ranks, wrap, tcp, env, args, seed, cfg_args):
    cmd = [*wrap, mpiexec, "-n", str(ranks), *(TCP_ENV if tcp else []), sys.executable, TRAIN,
           "--iterations", str(args.iterations), "--batch-size", str(args.batch_size), "--seed", str(seed),
           "--log-every", str(max(1, args.iterations // 4)), *cfg_args, *args.extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("result "))
    res = json.loads(line[len("result "):])
    res["wall_s"] = time.perf_counter() - t0
    return res


def _ms(xs):
    m = statistics.fmean(xs)
    s = (max(xs) - min(xs)) / 2 if len(xs) > 1 else 0.0
    return m, s


def report(results, args, link):
    os.makedirs(args.out, exist_ok=True)
    names = [c for c in args.configs]
    base = [r for r in results if r["config"] == "uncompressed"]
    base_iter = statistics.fmean(r["iter_s"] for r in base) if base else None
    lines = [f"# DLRM on MovieLens-100K: compressed all-to-all ({args.ranks} ranks, {link})", "",
             f"{args.iterations} iterations x {args.batch_size} samples per rank, seeds {args.seeds}; "
             "mean +- half the spread over seeds; times per iteration (slowest rank, first 2 iterations excluded); "
             "bytes: payload sent to other ranks per iteration, all ranks.", "",
             "| config | test AUC | test logloss | iteration ms | a2a fwd ms | a2a bwd ms | fwd MB sent (raw) | "
             "bwd MB sent (raw) | speedup |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        rs = [r for r in results if r["config"] == n]
        if not rs:
            continue
        auc, ll = _ms([r["auc"] for r in rs]), _ms([r["logloss"] for r in rs])
        it = _ms([1e3 * r["iter_s"] for r in rs])
        f, b = _ms([1e3 * r["a2a_fwd_s"] for r in rs]), _ms([1e3 * r["a2a_bwd_s"] for r in rs])
        per = lambda k: statistics.fmean(r[k] / r["iterations"] / 1e6 for r in rs)  # noqa: E731
        sp = base_iter / statistics.fmean(r["iter_s"] for r in rs) if base_iter else float("nan")
        lines.append(f"| {n} | {auc[0]:.4f} ± {auc[1]:.4f} | {ll[0]:.4f} ± {ll[1]:.4f} | "
                     f"{it[0]:.1f} ± {it[1]:.1f} | "
                     f"{f[0]:.1f} | {b[0]:.1f} | {per('fwd_sent'):.3f} ({per('fwd_raw'):.3f}) | "
                     f"{per('bwd_sent'):.3f} ({per('bwd_raw'):.3f}) | {sp:.2f}x |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "dlrm.md"), "w") as fh:
        fh.write(md)
    with open(os.path.join(args.out, "dlrm.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    print(md)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots")
        return
    present = [n for n in names if any(r["config"] == n for r in results)]
    plots = (("auc", "test AUC", "dlrm_auc.png"), ("iter_s", "seconds per iteration", "dlrm_time.png"))
    for key, label, fname in plots:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for i, n in enumerate(present):
            ys = [r[key] for r in results if r["config"] == n]
            ax.scatter([i] * len(ys), ys, alpha=0.6)
            ax.errorbar(i, statistics.fmean(ys), fmt="k_", markersize=20)
        if key == "iter_s":
            for i, n in enumerate(present):
                rs = [r for r in results if r["config"] == n]
                ax.bar(i, statistics.fmean(r["a2a_fwd_s"] + r["a2a_bwd_s"] for r in rs), alpha=0.3, color="gray")
        ax.set_xticks(range(len(present)), present, rotation=15)
        ax.set_ylabel(label + (" (bars: all-to-all)" if key == "iter_s" else ""))
        ax.set_title(f"DLRM / MovieLens-100K, {args.ranks} ranks, {link}")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, fname), dpi=120)
        plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    unknown = set(args.configs) - {c for c, _ in CONFIGS}
    if unknown:
        raise SystemExit(f"unknown configs {sorted(unknown)}; choose from {[c for c, _ in CONFIGS]}")
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = "mpiexec"
    env = dict(os.environ, EMBZIP_NUMBA_CACHE="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "embzip-dlrm-numba-cache"))
    # fill numba's cache from one process so the ranks never write it concurrently
    subprocess.run([sys.executable, TRAIN, "--warm-only"], env=env, check=True)

    wrap, tcp, ns, link = [], False, None, "shared memory (unshaped)"
    if args.slow_link:
        ns = f"embzip-dlrm-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        wrap, tcp, link = ["ip", "netns", "exec", ns], True, f"TCP loopback shaped to {args.slow_link}"
    try:
        if ns:
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate",
                            args.slow_link, "burst", "256kb", "latency", "50ms"], check=True)
        results = []
        for seed in args.seeds:
            for name, cfg in CONFIGS:
                if name not in args.configs:
                    continue
                res = run_one(mpiexec, args.ranks, wrap, tcp, env, args, seed, cfg)
                res["config"] = name
                results.append(res)
                print(f"{name:14s} seed {seed}: auc {res['auc']:.4f} logloss {res['logloss']:.4f} "
                      f"iter {1e3 * res['iter_s']:.1f} ms (wall {res['wall_s']:.0f}s)", flush=True)
        report(results, args, link)
    finally:
        if ns:
            subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
