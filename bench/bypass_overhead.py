"""What a bypassed embzip Alltoallv costs over a plain one: a tight A/B on one machine.

Run under mpiexec (any rank count)::

    mpiexec -n 2 python bench/bypass_overhead.py --mb 10.6 --reps 200

Methods, interleaved call by call after a Barrier, each on its own communicator: plain
``comm.Alltoallv``; the control (the bypass's MPI calls without embzip: an ``Iallgather`` of
the handshake's size in flight during a blocking ``Alltoallv``); embzip with ``bypass=True``
(always raw: the express lane's steady state); embzip with ``bypass="auto"`` (the cost model
decides; on a fast link it sends raw but probes compression after 16, 32, ... calls). Time per
call is the slowest rank's; medians and the ratio to plain are printed by rank 0. The payload
is random float32 (the bypass never looks at the values), ``--mb`` MB per rank. ``--in-place``
adds both with ``MPI.IN_PLACE`` as the send buffer (embzip hands the buffer to MPI's in-place
call after its handshake: a sequenced express lane). ``--empty``: rank 1 sends rank 0 nothing
(in place: nor rank 0 rank 1), so those ranks have an empty segment and wait for the
handshake before their payload (a sequenced lane; see ``has_empty_segment``). ``--fresh`` adds
plain and ``bypass=True`` calls on other arrays each call (three pairs in turn, and a new
TableLayout for embzip: a training loop's new arrays of every step; the lane moves onto them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a source checkout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=10.6, help="payload MB per rank")
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--in-place", action="store_true", help="also time MPI.IN_PLACE calls")
    parser.add_argument("--empty", action="store_true", help="rank 1 sends rank 0 nothing (an empty segment)")
    parser.add_argument("--fresh", action="store_true", help="also time calls on new arrays each call")
    args = parser.parse_args()

    from mpi4py import MPI

    import embzip.comm as ec
    from embzip.comm._handshake import row_size

    comm = MPI.COMM_WORLD
    n = int(args.mb * 1e6 / 4) // (50 * comm.size) * 50 * comm.size  # whole rows of 50 per rank
    counts = np.full((comm.size, comm.size), n // comm.size, np.int64)  # [source, destination]
    if args.empty and comm.size > 1:
        counts[1, 0] = 0
    placed = counts.copy()  # in place: symmetric
    if comm.size > 1:
        placed[0, 1] = placed[1, 0]
    sc, rc = counts[comm.rank], counts[:, comm.rank]
    send = [np.random.default_rng(comm.rank).normal(size=int(sc.sum())).astype(np.float32), sc]
    recv = [np.zeros(int(rc.sum()), np.float32), rc]
    both = [np.random.default_rng(comm.rank).normal(size=int(placed[comm.rank].sum())).astype(np.float32),
            placed[comm.rank]]
    layout = ec.TableLayout(dim=50)
    row, table = np.zeros(row_size(comm.size)), np.zeros((comm.size, row_size(comm.size)))

    def control(c):
        request = c.Iallgather(row, table)
        c.Alltoallv(send, recv)
        request.Wait()

    methods = {
        "plain Alltoallv": lambda c: c.Alltoallv(send, recv),
        "control (gather + Alltoallv)": control,
        "embzip bypass=True": lambda c: ec.Alltoallv(c, send, recv, rel_error=0.01, bounds=layout, bypass=True),
        "embzip bypass=auto": lambda c: ec.Alltoallv(c, send, recv, rel_error=0.01, bounds=layout),
    }
    if args.fresh:
        sends = [[send[0].copy(), sc] for _ in range(3)]
        recvs = [[np.zeros_like(recv[0]), rc] for _ in range(3)]
        turn = [0]

        def fresh(call):  # the next of three pairs each call
            def turned(c):
                turn[0] = (turn[0] + 1) % 3
                return call(c, sends[turn[0]], recvs[turn[0]])
            return turned

        methods["plain Alltoallv, new arrays"] = fresh(lambda c, s, r: c.Alltoallv(s, r))
        methods["embzip bypass=True, new arrays"] = fresh(
            lambda c, s, r: ec.Alltoallv(c, s, r, rel_error=0.01, bounds=ec.TableLayout(dim=50), bypass=True))
    if args.in_place:
        methods["plain Alltoallv, in place"] = lambda c: c.Alltoallv(MPI.IN_PLACE, both)
        methods["embzip bypass=True, in place"] = lambda c: ec.Alltoallv(c, MPI.IN_PLACE, both, rel_error=0.01,
                                                                       bounds=layout, bypass=True)
    subs = {name: comm.Dup() for name in methods}
    times = {name: [] for name in methods}
    modes = {name: set() for name in methods}
    for name, call in methods.items():
        for _ in range(args.warmup):
            call(subs[name])
    for _ in range(args.reps):
        for name, call in methods.items():
            subs[name].Barrier()
            start = time.perf_counter()
            stats = call(subs[name])
            times[name].append(comm.allreduce(time.perf_counter() - start, op=MPI.MAX))
            if hasattr(stats, "mode"):
                modes[name].add(stats.mode)
    if comm.rank == 0:
        plain = float(np.median(times["plain Alltoallv"]))
        empty = ", rank 1 sends rank 0 nothing" if args.empty and comm.size > 1 else ""
        print(f"{comm.size} ranks, {n * 4 / 1e6:.1f} MB per rank{empty}, median of {args.reps} calls")
        print("| method | median us | vs plain (new arrays: plain on new arrays) | modes |\n|---|---:|---:|---|")
        for name, values in times.items():
            median = float(np.median(values))
            base = float(np.median(times["plain Alltoallv, new arrays"])) if "new arrays" in name else plain
            print(f"| {name} | {median * 1e6:.0f} | {base / median:.3f}x | {'/'.join(sorted(modes[name])) or '-'} |")
    for sub in subs.values():
        sub.Free()


if __name__ == "__main__":
    main()
