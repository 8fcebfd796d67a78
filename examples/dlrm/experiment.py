"""Accuracy and speed of the DLRM example across all-to-all compression settings and links.

    sudo python examples/dlrm/experiment.py --links unshaped 1gbit      # the full experiment
    python examples/dlrm/experiment.py --links unshaped --seeds 0        # no root: shared memory only

Runs ``train.py`` under ``mpiexec -n RANKS`` for each link x seed x configuration:

    uncompressed        --compress none
    forward fixed       --compress forward --policy fixed
    forward dual        --compress forward --policy dual
    fwd+bwd dual        --compress forward+backward --policy dual

Links (``--links``, several in one invocation):

* ``unshaped``: the machine as it is (MPICH on one host: shared memory).
* a tc rate such as ``1gbit`` (root): every rank runs inside one private network namespace
  whose loopback is capped with ``tc tbf``, and MPICH is forced onto TCP (no shared memory, OFI
  tcp provider), so the all-to-all bytes cross the shaped link. All ranks share that one link.
  ``tc -s qdisc`` is read before and after every run (the ``link MB`` column proves the bytes
  crossed it). The namespace is deleted on exit, also on errors, Ctrl-C and SIGTERM.

Writes into ``--out`` (default ``results/``): ``dlrm.md`` (one table per link: test AUC and
logloss mean +- half the spread over seeds, iteration time and its split into compute /
all-to-all forward / all-to-all backward, bytes sent, speedup against uncompressed on the same
link), ``dlrm.json`` (every run, with its per-iteration training loss and time),
``dlrm_loss.png`` (training loss vs iteration, mean over seeds, per config and link) and
``dlrm_time.png`` (stacked bars compute / a2a fwd / a2a bwd per config and link).

Default size (why): per rank 1024 samples x 8 tables x dim 128. Each all-to-all then carries
12.6 MB (all ranks) per iteration; at 1 Gbit/s that is ~100 ms per direction against ~60 ms of
compute on a 2-core machine, so uncompressed all-to-all is ~3/4 of the iteration: the regime of
production DLRMs (large global batch, many / wide tables) where compressing it can pay. With
the train.py defaults (256 x dim 16) it carries 0.4 MB and is a few ms of the step. 80
iterations at Adam lr 0.002 (~4 epochs at global batch 4096) reach test AUC ~0.78; dim 128
overfits MovieLens-100K soon after (longer runs lose AUC).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
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
UNSHAPED = "unshaped"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--links", nargs="+", default=[UNSHAPED, "1gbit"],
                   help=f"'{UNSHAPED}' and / or tc rates such as 1gbit (shaped links need root)")
    p.add_argument("--slow-link", metavar="RATE", help="old spelling of --links RATE")
    p.add_argument("--iterations", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=1024, help="samples per rank per iteration")
    p.add_argument("--dim", type=int, default=128, help="embedding dimension")
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--horizon", type=int, default=None,
                   help="iterations of the dual policy's step decay (default: --iterations, so that its "
                        "iteration-wise level, 2x -> 1x the class bounds, acts within the run)")
    p.add_argument("--timing-skip", type=int, default=6,
                   help="iterations left out of the timings (first-call setup, embzip's calibration calls)")
    p.add_argument("--configs", nargs="+", default=[c for c, _ in CONFIGS], help="subset of the configuration names")
    p.add_argument("--timeout", type=int, default=600, help="seconds per run")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more train.py arguments (last)")
    args = p.parse_args(argv)
    if args.horizon is None:
        args.horizon = args.iterations
    if args.slow_link:
        args.links = [args.slow_link]
    unknown = set(args.configs) - {c for c, _ in CONFIGS}
    if unknown:
        p.error(f"unknown configs {sorted(unknown)}; choose from {[c for c, _ in CONFIGS]}")
    for link in args.links:
        if link != UNSHAPED and not re.fullmatch(r"[0-9.]+[kmgt]?(bit|bps)", link):
            p.error(f"--links: {link!r} is neither '{UNSHAPED}' nor a tc rate such as 1gbit")
    if any(link != UNSHAPED for link in args.links) and os.geteuid() != 0:
        p.error("a shaped link needs root (ip netns, tc); run with sudo or use --links unshaped")
    return args


def link_label(link):
    return "unshaped (MPICH shared memory)" if link == UNSHAPED else f"{link} (TCP loopback shaped with tc tbf)"


class Namespace:
    """A private network namespace with a loopback capped at ``rate``; deleted by ``close``."""

    def __init__(self, rate):
        self.name, self.rate = f"embzip-dlrm-{os.getpid()}", rate
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
            subprocess.run(["ip", "netns", "exec", self.name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
                            "rate", rate, "burst", "256kb", "latency", "50ms"], check=True)
        except BaseException:
            self.close()
            raise

    def wrap(self):
        return ["ip", "netns", "exec", self.name]

    def sent_bytes(self):
        out = subprocess.run([*self.wrap(), "tc", "-s", "qdisc", "show", "dev", "lo"],
                             capture_output=True, text=True, check=True).stdout
        m = re.search(r"Sent (\d+) bytes", out)
        return int(m.group(1)) if m else 0

    def close(self):
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout.split()
        for pid in pids:  # only processes inside our own namespace
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def run_one(mpiexec, env, args, seed, cfg_args, ns=None):
    cmd = [*(ns.wrap() if ns else []), mpiexec, "-n", str(args.ranks), *(TCP_ENV if ns else []), sys.executable,
           TRAIN, "--iterations", str(args.iterations), "--batch-size", str(args.batch_size), "--dim", str(args.dim),
           "--lr", str(args.lr), "--timing-skip", str(args.timing_skip), "--seed", str(seed),
           "--horizon", str(args.horizon),
           "--log-every", str(max(1, args.iterations // 4)), *cfg_args, *args.extra]
    before = ns.sent_bytes() if ns else None
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("result "))
    res = json.loads(line[len("result "):])
    res["wall_s"] = time.perf_counter() - t0
    if ns:  # everything the run put on the shaped link (test pass and MPI setup included)
        res["link_bytes"] = ns.sent_bytes() - before
    return res


def _ms(xs):
    m = statistics.fmean(xs)
    s = (max(xs) - min(xs)) / 2 if len(xs) > 1 else 0.0
    return m, s


def table(results, link, configs):
    """Markdown lines of one link's table."""
    rs_link = [r for r in results if r["link"] == link]
    base = [r for r in rs_link if r["config"] == "uncompressed"]
    base_iter = statistics.fmean(r["iter_s"] for r in base) if base else None
    base_auc = {r["seed"]: r["auc"] for r in base}
    shaped = any("link_bytes" in r for r in rs_link)
    head = ["config", "test AUC", "ΔAUC", "test logloss", "iteration ms", "compute ms", "a2a fwd ms",
            "a2a bwd ms", "fwd MB sent (raw)", "bwd MB sent (raw)", *(["link MB"] if shaped else []), "speedup"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in configs:
        rs = [r for r in rs_link if r["config"] == n]
        if not rs:
            continue
        auc, ll = _ms([r["auc"] for r in rs]), _ms([r["logloss"] for r in rs])
        paired = [r["auc"] - base_auc[r["seed"]] for r in rs if r["seed"] in base_auc]
        dauc = f"{statistics.fmean(paired):+.4f}" if paired else "n/a"
        it = _ms([1e3 * r["iter_s"] for r in rs])
        comp = statistics.fmean(1e3 * r.get("compute_s", r["iter_s"] - r["a2a_fwd_s"] - r["a2a_bwd_s"]) for r in rs)
        f, b = _ms([1e3 * r["a2a_fwd_s"] for r in rs]), _ms([1e3 * r["a2a_bwd_s"] for r in rs])
        # the median call (older results have none): a bypassed call's cost, without the
        # compressed calibration and probe calls that the mean carries
        med = {d: statistics.fmean(1e3 * r[f"a2a_{d}_median_s"] for r in rs)
               if all(f"a2a_{d}_median_s" in r for r in rs) else None for d in ("fwd", "bwd")}
        a2a = {d: f"{m[0]:.1f} ± {m[1]:.1f}" + ("" if med[d] is None else f" (median {med[d]:.1f})")
               for d, m in (("fwd", f), ("bwd", b))}
        per = lambda k: statistics.fmean(r[k] / r["iterations"] / 1e6 for r in rs)  # noqa: E731
        sp = base_iter / statistics.fmean(r["iter_s"] for r in rs) if base_iter else float("nan")
        cells = [n, f"{auc[0]:.4f} ± {auc[1]:.4f}", dauc, f"{ll[0]:.4f} ± {ll[1]:.4f}", f"{it[0]:.1f} ± {it[1]:.1f}",
                 f"{comp:.1f}", a2a["fwd"], a2a["bwd"],
                 f"{per('fwd_sent'):.2f} ({per('fwd_raw'):.2f})", f"{per('bwd_sent'):.2f} ({per('bwd_raw'):.2f})"]
        if shaped:
            cells.append(f"{statistics.fmean(r['link_bytes'] / r['iterations'] / 1e6 for r in rs):.2f}")
        cells.append(f"{sp:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(results, args, meta=None):
    """Write dlrm.md, dlrm.json and the two PNGs into ``args.out``; returns the markdown."""
    os.makedirs(args.out, exist_ok=True)
    configs = [c for c, _ in CONFIGS if c in args.configs]
    links = [lk for lk in args.links if any(r["link"] == lk for r in results)]
    lines = [f"# DLRM on MovieLens-100K: compressed all-to-all ({args.ranks} ranks)", "",
             f"{args.iterations} iterations x {args.batch_size} samples per rank, embedding dim {args.dim}, "
             f"8 tables, Adam lr {args.lr}; seeds {args.seeds}. Policies: fixed rel 0.03; dual = table "
             f"classes by size (0.01 / 0.03 / 0.05) x step decay 2x -> 1x over {args.horizon} iterations. "
             "The test pass compresses whenever the forward does (cost model off). "
             "Mean ± half the spread over seeds. "
             "ΔAUC: mean over seeds of (config - uncompressed) with the same seed. Times per iteration "
             f"(slowest rank, first {args.timing_skip} iterations excluded); compute = iteration - all-to-all; "
             "a2a median: the slowest rank's median call (without the few compressed calibration and probe "
             "calls that the mean of a bypassed configuration carries). "
             "MB: payload sent to other ranks per iteration, all ranks together (raw: uncompressed size); "
             "link MB: bytes through the shaped qdisc per iteration (tc -s, whole run incl. test pass). "
             "Speedup: uncompressed iteration time / this one, on the same link.", ""]
    for link in links:
        lines += [f"## {link_label(link)}", "", *table(results, link, configs), ""]
    if meta:
        lines += [f"Command: `{meta['command']}`; {meta['cores']} cores; {meta['date']}; "
                  f"{meta['minutes']:.1f} minutes.", ""]
    md = "\n".join(lines)
    with open(os.path.join(args.out, "dlrm.md"), "w") as fh:
        fh.write(md)
    with open(os.path.join(args.out, "dlrm.json"), "w") as fh:
        json.dump({"meta": meta or {}, "args": {k: v for k, v in vars(args).items()}, "runs": results}, fh, indent=1)
    plots(results, args, configs, links)
    return md


def plots(results, args, configs, links):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        print("matplotlib not installed: no plots")
        return
    colors = {n: f"C{i}" for i, n in enumerate(c for c, _ in CONFIGS)}

    # training loss vs iteration, mean over seeds (moving average of 5 iterations), one panel per link
    fig, axes = plt.subplots(1, len(links), figsize=(5.5 * len(links), 3.6), squeeze=False, sharey=True)
    for ax, link in zip(axes[0], links):
        for n in configs:
            curves = [r["losses"] for r in results if r["link"] == link and r["config"] == n and r.get("losses")]
            if not curves:
                continue
            m = np.mean([c[:min(map(len, curves))] for c in curves], axis=0)
            k = min(5, len(m))
            sm = np.convolve(m, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(k, len(m) + 1), sm, label=n, color=colors[n], lw=1.4)
        ax.set_title(link_label(link), fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss (mean over seeds)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"DLRM / MovieLens-100K, {args.ranks} ranks, batch {args.batch_size}/rank, dim {args.dim}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "dlrm_loss.png"), dpi=120)
    plt.close(fig)

    # stacked bars: compute / a2a fwd / a2a bwd, per config, grouped by link
    fig, ax = plt.subplots(figsize=(1.9 * len(configs) * len(links) + 1.5, 3.8))
    parts = (("compute", "compute_s", "0.7"), ("a2a fwd", "a2a_fwd_s", "C0"), ("a2a bwd", "a2a_bwd_s", "C3"))
    x, ticks, labels, top = 0.0, [], [], 0.0
    for li, link in enumerate(links):
        base = [r["iter_s"] for r in results if r["link"] == link and r["config"] == "uncompressed"]
        for n in configs:
            rs = [r for r in results if r["link"] == link and r["config"] == n]
            if not rs:
                continue
            bottom = 0.0
            for pi, (label, key, color) in enumerate(parts):
                v = 1e3 * statistics.fmean(r[key] if key in r else r["iter_s"] - r["a2a_fwd_s"] - r["a2a_bwd_s"]
                                           for r in rs)
                ax.bar(x, v, bottom=bottom, color=color, width=0.8, label=label if (li, n) == (0, configs[0]) else None)
                bottom += v
            it = 1e3 * statistics.fmean(r["iter_s"] for r in rs)
            sp = f"\n{statistics.fmean(base) / statistics.fmean(r['iter_s'] for r in rs):.2f}x" if base else ""
            ax.text(x, max(bottom, it), f"{it:.0f} ms{sp}", ha="center", va="bottom", fontsize=7)
            top = max(top, bottom, it)
            ticks.append(x)
            labels.append(f"{n}\n{link}")
            x += 1.0
        x += 0.6
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_ylabel("ms per iteration (slowest rank)")
    ax.set_title(f"DLRM / MovieLens-100K, {args.ranks} ranks: where an iteration goes", fontsize=10)
    ax.legend(fontsize=8)
    ax.set_ylim(0, 1.2 * top if top > 0 else 1)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "dlrm_time.png"), dpi=120)
    plt.close(fig)


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: the namespace is deleted


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = "mpiexec"
    env = dict(os.environ, EMBZIP_NUMBA_CACHE="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "embzip-dlrm-numba-cache"))
    # fill numba's cache from one process so the ranks never write it concurrently
    subprocess.run([sys.executable, TRAIN, "--warm-only"], env=env, check=True)

    t_start, results = time.perf_counter(), []
    for link in args.links:
        ns = None
        try:
            if link != UNSHAPED:
                ns = Namespace(link)
            for seed in args.seeds:
                for name, cfg in CONFIGS:
                    if name not in args.configs:
                        continue
                    res = run_one(mpiexec, env, args, seed, cfg, ns)
                    res.update(config=name, link=link)
                    results.append(res)
                    print(f"[{link}] {name:14s} seed {seed}: auc {res['auc']:.4f} logloss {res['logloss']:.4f} "
                          f"iter {1e3 * res['iter_s']:.1f} ms (a2a fwd {1e3 * res['a2a_fwd_s']:.1f} "
                          f"bwd {1e3 * res['a2a_bwd_s']:.1f}) wall {res['wall_s']:.0f}s", flush=True)
        finally:
            if ns:
                ns.close()
    meta = dict(command="python " + " ".join([os.path.relpath(os.path.abspath(sys.argv[0]), ROOT), *sys.argv[1:]]),
                cores=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M %Z"),
                minutes=(time.perf_counter() - t_start) / 60)
    print(report(results, args, meta))


if __name__ == "__main__":
    main()
