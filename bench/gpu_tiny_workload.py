"""A small GPU workload touching every kernel, for compute-sanitizer (bench/device_check.sh).

    compute-sanitizer --tool racecheck python bench/gpu_tiny_workload.py

float32 and float64, every strategy, dedup on and off, NaN/inf outliers, a tail block, a
misaligned frame; each device frame checked against the CPU's bytes and decoded on the
device. Small, because the sanitizer slows kernels by orders of magnitude. Exits non-zero on
a mismatch (the sanitizer's own findings set its --error-exitcode). Runs under the simulator
too (NUMBA_ENABLE_CUDASIM=1), where it checks itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a source checkout


def main() -> int:
    from numba import cuda

    import embzip

    rng = np.random.default_rng(0)
    table = rng.normal(size=(40, 24))
    rows = table[np.minimum(rng.zipf(1.2, 600) - 1, 39)]
    rows[3, 5], rows[7, 1], rows[9, 2] = np.nan, np.inf, 1e30
    mismatches = 0
    for dtype in (np.float32, np.float64):
        x = rows.astype(dtype)
        for strategy in ("fast", "compact", "auto"):
            for dedup in (None, False):
                for data in (x, x.reshape(-1)[:1000]):  # rows (dedup), and a flat tail block
                    kwargs = dict(rel_error=0.01, strategy=strategy, dedup=dedup)
                    cpu = embzip.compress(data, **kwargs)
                    frame = embzip.compress(cuda.to_device(np.ascontiguousarray(data)), **kwargs)
                    host = frame.copy_to_host()
                    decoded = embzip.decompress(frame).copy_to_host()
                    same = host.tobytes() == cpu.tobytes() and \
                        decoded.tobytes() == embzip.decompress(cpu).tobytes()
                    if not same:
                        mismatches += 1
                        print(f"MISMATCH {dtype.__name__} {strategy} dedup={dedup} shape={data.shape}")
        padded = np.zeros(cpu.size + 1, np.uint8)
        padded[1:] = cpu
        odd = cuda.to_device(padded)[1:]  # a frame at an odd address
        if embzip.decompress(odd).copy_to_host().tobytes() != embzip.decompress(cpu).tobytes():
            mismatches += 1
            print(f"MISMATCH misaligned frame {dtype.__name__}")
    print(f"tiny workload: {mismatches} mismatches")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
