"""Rowwise quantize / dequantize / bag-lookup throughput: embzip.lowprec versus torch's ops.

    python bench/lowprec.py [--threads N] [--reps 15] [--stat median|min] [--bits 8 4 2] [--quick]

Both sides run in the same process on the same arrays, each with the same thread count; every
measurement is warmed up, then the two implementations are timed alternately ``--reps`` times
and the median time of each is reported (``--stat min``: the best, the least disturbed by other
load). The outputs are also compared, so a fast wrong answer cannot slip into the table.

Columns: GB/s of float32 table data (quantize reads it, dequantize writes it), or million
looked-up rows per second for the pooled lookups; "x" is embzip / torch (> 1: embzip faster).
``--clock cpu`` times process CPU time instead of wall time: on a machine shared with other
jobs it measures the work each implementation does rather than how much CPU it was given.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


CLOCK = time.perf_counter
STAT = np.median


def _best(fa, fb, reps):
    fa()
    fb()
    ta, tb = [], []
    for _ in range(reps):
        t = CLOCK()
        fa()
        ta.append(CLOCK() - t)
        t = CLOCK()
        fb()
        tb.append(CLOCK() - t)
    return float(STAT(ta)), float(STAT(tb))


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == np.float32:
        na, nb = np.isnan(a), np.isnan(b)
        bits_a, bits_b = a.view(np.uint32)[~na], b.view(np.uint32)[~nb]
        return np.array_equal(na, nb) and np.array_equal(bits_a, bits_b)
    return np.array_equal(a, b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="smaller arrays, for a smoke run")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time (all threads), robust on a shared machine")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="which of the --reps timings to report (interleaved runs)")
    ap.add_argument("--bits", type=int, nargs="+", choices=(8, 4, 2), default=[8, 4, 2])
    args = ap.parse_args(argv)
    global CLOCK, STAT
    STAT = np.median if args.stat == "median" else np.min
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time

    import numba
    import torch

    from embzip.lowprec import dequantize_rowwise, embedding_bag_rowwise, quantize_rowwise

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    q = torch.ops.quantized
    prepack = {8: q.embedding_bag_byte_prepack, 4: q.embedding_bag_4bit_prepack,
               2: q.embedding_bag_2bit_prepack}
    unpack = {8: q.embedding_bag_byte_unpack, 4: q.embedding_bag_4bit_unpack,
              2: q.embedding_bag_2bit_unpack}
    bag = {8: q.embedding_bag_byte_rowwise_offsets, 4: q.embedding_bag_4bit_rowwise_offsets,
           2: q.embedding_bag_2bit_rowwise_offsets}
    rng = np.random.default_rng(0)
    scale = 10 if args.quick else 1
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
          f"numba {numba.__version__}, threads {args.threads}, {args.stat} of {args.reps}, "
          f"{args.clock} clock\n")

    print(f"{'op':<12}{'bits':>5}{'table':>16}{'torch':>10}{'embzip':>10}{'x':>7}  same")
    for rows, dim in ((400_000 // scale, 64), (200_000 // scale, 128), (80_000 // scale, 300)):
        w = rng.standard_normal((rows, dim)).astype(np.float32)
        tw = torch.from_numpy(w)
        for bits in args.bits:
            a, b = _best(lambda: prepack[bits](tw), lambda: quantize_rowwise(w, bits), args.reps)
            p = quantize_rowwise(w, bits)
            same = _same(p, prepack[bits](tw).numpy())
            print(f"{'quantize':<12}{bits:>5}{f'{rows}x{dim}':>16}{w.nbytes / a / 1e9:>8.2f}GB"
                  f"{w.nbytes / b / 1e9:>8.2f}GB{a / b:>7.2f}  {same}")
            tp = torch.from_numpy(p)
            a, b = _best(lambda: unpack[bits](tp), lambda: dequantize_rowwise(p, bits), args.reps)
            same = _same(dequantize_rowwise(p, bits), unpack[bits](tp).numpy())
            print(f"{'dequantize':<12}{bits:>5}{f'{rows}x{dim}':>16}{w.nbytes / a / 1e9:>8.2f}GB"
                  f"{w.nbytes / b / 1e9:>8.2f}GB{a / b:>7.2f}  {same}")

    print(f"\n{'lookup':<12}{'bits':>5}{'table / ids':>20}{'torch':>10}{'embzip':>10}{'x':>7}  same"
          "   (Mrows/s; 8192 bags of 40)")
    n_bags, pool = 8192 // scale, 40
    for rows, dim in ((1_000_000 // scale, 64), (1_000_000 // scale, 128), (200_000 // scale, 300)):
        w = rng.standard_normal((rows, dim)).astype(np.float32)
        offsets = np.arange(n_bags, dtype=np.int64) * pool
        for dist in ("zipf", "uniform"):
            if dist == "zipf":  # hot rows repeat, as in recommendation traffic
                ids = (rng.zipf(1.05, n_bags * pool) - 1) % rows
            else:
                ids = rng.integers(0, rows, n_bags * pool)
            for bits in args.bits:
                p = quantize_rowwise(w, bits)
                tp, ti, to = torch.from_numpy(p), torch.from_numpy(ids), torch.from_numpy(offsets)
                a, b = _best(lambda: bag[bits](tp, ti, to),
                             lambda: embedding_bag_rowwise(p, bits, ids, offsets), args.reps)
                same = _same(embedding_bag_rowwise(p, bits, ids, offsets),
                             bag[bits](tp, ti, to).numpy())
                n = ids.size / 1e6
                table = f"{rows}x{dim} {dist}"
                print(f"{'bag sum':<12}{bits:>5}{table:>20}{n / a:>10.1f}{n / b:>10.1f}"
                      f"{a / b:>7.2f}  {same}")


if __name__ == "__main__":
    main()
