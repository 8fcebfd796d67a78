"""What a bypassed call's Python costs with warm and with cold caches, beside plain mpi4py.

Run in one process (or under mpiexec: then each call's time is the slowest rank's)::

    python bench/lane_cold.py --reps 300

Why: in a training loop the all-to-all runs after the step's compute, and its own payload of
megabytes passes through the caches, so the Python around MPI runs with cold caches, where
each step costs several times its warm time. A bypassed embzip call must cost what a plain
``Alltoallv`` costs, so this times both the way a loop calls them: a small payload (the
Python is what is measured), called back to back (warm), and after copying ``--flush-mb``
MB between calls (cold; the default is this machine's L3 and more). Forms: ``reused``, the
same bare arrays every call; ``loop``, the DLRM example's (new arrays every call,
``[buf, (counts, displs), MPI.FLOAT]`` specifications, a new TableLayout). embzip runs with
``bypass=True`` on the express lane. Medians of ``--reps`` calls per cell, printed as a
table by rank 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a source checkout

ROWS, TABLES, DIM = 64, 26, 50  # per rank: 64 samples x 26 tables x dim 50 (332 KB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--flush-mb", type=float, default=64.0, help="MB copied between cold calls")
    args = parser.parse_args()

    from mpi4py import MPI

    import embzip.comm as ec

    comm = MPI.COMM_WORLD
    size = comm.size
    rows = max(ROWS // size, 1) * size
    counts = np.full(size, rows // size * TABLES * DIM, np.int64)
    displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
    bounds = np.full(TABLES, 0.01)
    flush_src = np.ones(int(args.flush_mb * 1e6 / 8), np.float64)
    flush_dst = np.empty_like(flush_src)
    reused_send = np.random.default_rng(comm.rank).normal(size=(rows, TABLES * DIM)).astype(np.float32)
    reused_recv = np.empty_like(reused_send)
    layout = ec.TableLayout(DIM, bounds=bounds)
    pool = [np.random.default_rng(comm.rank + 7 * k).normal(size=(rows, TABLES * DIM)).astype(np.float32)
            for k in range(3)]
    turn = [0]

    def loop_specs():  # what examples/dlrm/train.py builds every step
        turn[0] = (turn[0] + 1) % len(pool)
        recv = np.empty(int(counts.sum()), np.float32)
        sd = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return ([pool[turn[0]], (counts.tolist(), sd.tolist()), MPI.FLOAT],
                [recv, (counts.tolist(), displs.tolist()), MPI.FLOAT])

    subs = {}

    def plain_reused():
        subs["plain"].Alltoallv(reused_send, reused_recv)

    def embzip_reused():
        ec.Alltoallv(subs["embzip"], reused_send, reused_recv, rel_error=0.01, bounds=layout, bypass=True)

    def plain_loop():
        send, recv = loop_specs()
        subs["plain"].Alltoallv(send, recv)

    def embzip_loop():
        send, recv = loop_specs()
        ec.Alltoallv(subs["embzip"], send, recv, rel_error=0.01, bounds=ec.TableLayout(DIM, bounds=bounds),
                     bypass=True)

    forms = {"reused": (plain_reused, embzip_reused), "loop": (plain_loop, embzip_loop)}
    rows_out = []
    for form, (plain, embzip) in forms.items():
        subs["plain"], subs["embzip"] = comm.Dup(), comm.Dup()
        for _ in range(20):
            plain()
            embzip()
        cells = {}
        for cold in (False, True):
            times = {"plain": [], "embzip": []}
            for _ in range(args.reps):
                for name, call in (("plain", plain), ("embzip", embzip)):
                    if cold:
                        np.copyto(flush_dst, flush_src)
                    subs[name].Barrier()
                    start = time.perf_counter()
                    call()
                    elapsed = time.perf_counter() - start
                    times[name].append(comm.allreduce(elapsed, op=MPI.MAX))
            for name, values in times.items():
                cells[(name, cold)] = float(np.median(values)) * 1e6
        rows_out.append((form, cells))
        for sub in subs.values():
            sub.Free()
    if comm.rank == 0:
        print(f"{size} rank(s), {rows * TABLES * DIM * 4 / 1e3:.0f} KB per rank, medians of {args.reps} calls, "
              f"cold = after copying {args.flush_mb:g} MB")
        print("| form | plain warm | embzip warm | plain cold | embzip cold | embzip - plain, cold |")
        print("|---|---:|---:|---:|---:|---:|")
        for form, c in rows_out:
            print(f"| {form} | {c['plain', False]:.1f} us | {c['embzip', False]:.1f} us | {c['plain', True]:.1f} us | "
                  f"{c['embzip', True]:.1f} us | {c['embzip', True] - c['plain', True]:.1f} us |")


if __name__ == "__main__":
    main()
