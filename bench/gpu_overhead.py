"""Where the time of a small GPU compress goes (run on a GPU machine; see bench/device_check.sh).

A 1 MiB fast round trip (compress + decompress of cupy float32) costs far more than its
kernels: this prints its wall time per call, the unit costs of what it is made of (a kernel
launch, a host read of a scalar, a device allocation, a cupy -> numba wrap), one cProfile of
20 round trips, and the wall time again with each suspected overhead switched off in turn.

    python bench/gpu_overhead.py [--kib 1024] [--profile-lines 30]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def per_call_us(fn, n: int, sync) -> float:
    for _ in range(3):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - start) / n * 1e6


def print_kernel_times(fn, sync, calls: int = 10) -> None:
    """Each kernel launch of ``fn`` timed alone (synchronize before and after: the times include
    ~40 us of launch and sync), summed per kernel over ``calls`` calls."""
    from numba.cuda import dispatcher

    launch = dispatcher._LaunchConfiguration.__call__
    times, grids = {}, {}

    def timed_launch(self, *args):
        sync()
        start = time.perf_counter()
        result = launch(self, *args)
        sync()
        name = self.dispatcher.py_func.__name__
        times.setdefault(name, []).append(time.perf_counter() - start)
        grids.setdefault(name, set()).add((int(np.prod(self.griddim)), int(np.prod(self.blockdim))))
        return result

    fn()
    dispatcher._LaunchConfiguration.__call__ = timed_launch
    try:
        for _ in range(calls):
            fn()
    finally:
        dispatcher._LaunchConfiguration.__call__ = launch
    print("\n| kernel (launch + sync each) | launches per call | us per call | max us | grid x block |\n|---|---:|---:|---:|---|")
    for name, t in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {name} | {len(t) / calls:g} | {sum(t) / calls * 1e6:.0f} | {max(t) * 1e6:.0f} | "
              f"{sorted(grids[name])[:4]} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kib", type=int, default=1024)
    parser.add_argument("--profile-lines", type=int, default=30)
    args = parser.parse_args()

    import cupy
    from numba import config, cuda

    import embzip
    from embzip.cuda import memory

    sync = cupy.cuda.Device().synchronize
    x = cupy.asarray(np.random.default_rng(0).normal(0, 0.1, (args.kib * 256 // 128, 128)).astype(np.float32))

    def round_trip():
        embzip.decompress(embzip.compress(x, rel_error=0.01, strategy="fast"))

    def compress_only():
        embzip.compress(x, rel_error=0.01, strategy="fast")

    frame = embzip.compress(x, rel_error=0.01, strategy="fast")

    def decompress_only():
        embzip.decompress(frame)

    print(f"{args.kib} KiB float32 on {cupy.cuda.runtime.getDeviceProperties(0)['name'].decode()}", flush=True)
    rows = [("round trip (fast)", per_call_us(round_trip, 30, sync)),
            ("compress (fast)", per_call_us(compress_only, 30, sync)),
            ("decompress (fast)", per_call_us(decompress_only, 30, sync))]

    one = memory.device_empty(1, np.int64)
    scratch = memory.Workspace()
    rows += [("launch: _fill[1, 1] on 1 element", per_call_us(lambda: memory._fill[1, 1](one, np.int64(0)), 500, sync)),
             ("host read of 1 element (copy_to_host)", per_call_us(lambda: one.copy_to_host(), 500, sync)),
             ("device_empty(1000, int64)", per_call_us(lambda: memory.device_empty(1000, np.int64), 500, sync)),
             ("workspace slice (1000, int64)", per_call_us(lambda: scratch.empty(1000, np.int64), 500, sync)),
             ("cupy.empty(1000)", per_call_us(lambda: cupy.empty(1000, np.int64), 500, sync)),
             ("cuda.as_cuda_array(cupy array)", per_call_us(lambda: cuda.as_cuda_array(x), 500, sync)),
             ("cuda.as_cuda_array(cupy array, sync=False)",
              per_call_us(lambda: cuda.as_cuda_array(x, sync=False), 500, sync)),
             ("cuda.device_array(1000)", per_call_us(lambda: cuda.device_array(1000, np.int64), 500, sync))]

    profile = cProfile.Profile()
    profile.enable()
    for _ in range(20):
        round_trip()
    sync()
    profile.disable()

    config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
    rows.append(("round trip, no occupancy warnings", per_call_us(round_trip, 30, sync)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows.append(("round trip, warnings ignored", per_call_us(round_trip, 30, sync)))
    config.CUDA_ARRAY_INTERFACE_SYNC = 0
    rows.append(("round trip, + no CAI stream sync", per_call_us(round_trip, 30, sync)))
    config.CUDA_ARRAY_INTERFACE_SYNC = 1
    memory._pool = False  # numba's allocator (cudaMalloc per array)
    rows.append(("round trip, numba allocator", per_call_us(round_trip, 30, sync)))
    memory._pool = None

    print("\n| what | us per call |\n|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")
    print_kernel_times(round_trip, sync)
    for key in ("tottime", "cumtime"):
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats(key).print_stats(args.profile_lines)
        print(f"\n--- cProfile of 20 round trips, by {key}\n" + text.getvalue()[-9000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
