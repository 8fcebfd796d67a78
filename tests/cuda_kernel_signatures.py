"""Record every CUDA kernel launch's argument types under the simulator (a script).

    NUMBA_ENABLE_CUDASIM=1 python tests/cuda_kernel_signatures.py > signatures.json

The simulator runs kernels as Python, so it never type-checks them for a real GPU;
tests/test_cuda_ptx.py compiles each recorded (kernel, argument types) pair to PTX with the
real libNVVM instead. The workload below reaches every kernel embzip defines (the JSON lists
those it did not reach, and the test fails on them): both dtypes, every strategy and dedup
choice, NaN/inf outliers, decoding into a transposed ``out``, a non-contiguous input, a
misaligned frame, and the comm layer's column gather / scatter / copy kernels.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a source checkout

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

from numba import cuda  # noqa: E402

import embzip  # noqa: E402
import embzip.cuda  # noqa: E402
from embzip.cuda import _launch  # noqa: E402

MODULES = [f"embzip.cuda.{m.name}" for m in pkgutil.iter_modules(embzip.cuda.__path__)]
MODULES.append("embzip.comm._device_kernels")


def kernels() -> dict:
    """id(kernel) -> (module, name) for every module-level kernel embzip defines."""
    found = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if isinstance(value, _launch._QuietKernel) and value.dispatcher.py_func.__module__ == name:
                found[id(value)] = (name, attr)
    return found


def argument_type(value) -> list:
    if isinstance(value, (bool, np.bool_)):
        return ["scalar", "boolean"]
    if isinstance(value, np.generic):
        return ["scalar", str(value.dtype)]
    if isinstance(value, int):
        return ["scalar", "int64"]
    if isinstance(value, float):
        return ["scalar", "float64"]
    host = getattr(value, "_ary", value)  # a simulated device array wraps a numpy array
    if isinstance(host, np.ndarray):
        layout = "C" if host.flags.c_contiguous else ("F" if host.flags.f_contiguous else "A")
        return ["array", str(host.dtype), host.ndim, layout]
    raise TypeError(f"unexpected kernel argument {type(value).__name__}")


def record(known: dict) -> set:
    seen = set()
    original = _launch._QuietKernel.__getitem__

    def getitem(self, launch):
        launcher = original(self, launch)

        def call(*args):
            if id(self) in known:
                seen.add((*known[id(self)], json.dumps([argument_type(a) for a in args])))
            return launcher(*args)
        return call

    _launch._QuietKernel.__getitem__ = getitem
    return seen


def workload() -> None:
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((300, 8)).astype(dtype)  # (300 rows: a full block of row indices)
        x[3, 2], x[5, 1], x[7, 0] = np.nan, 1e30, -np.inf
        x[150:250] = x[0:100]  # repeated rows: dedup
        for strategy in ("fast", "compact", "auto"):
            for dedup in (None, True, False):
                frame = embzip.compress(cuda.to_device(x), rel_error=0.01, strategy=strategy, dedup=dedup)
                embzip.decompress(frame)
                embzip.decompress(frame, out=cuda.device_array((8, 300), dtype=dtype).T)
        embzip.compress(cuda.to_device(x)[::2, 1:9], abs_error=1e-3)  # non-contiguous input
        embzip.compress(cuda.to_device(np.full(300, 2.5, dtype)), rel_error=0.01)  # constant
        host = embzip.compress(x, abs_error=1e-3)
        padded = np.zeros(host.size + 1, np.uint8)
        padded[1:] = host
        embzip.decompress(cuda.to_device(padded)[1:])  # a frame at an odd address
        embzip.decompress(host, device="cuda")
    big = np.repeat(rng.standard_normal((50, 8)).astype(np.float32), 100, axis=0)  # the sampled dedup decision
    embzip.compress(cuda.to_device(big), abs_error=1e-3)
    from embzip.comm import _device

    region = cuda.to_device(np.arange(4 * 3 * 2, dtype=np.float32))
    columns = _device.gather_columns(region, np.array([0, 2]), 3, 2)
    _device.scatter_columns(columns, region, np.array([0, 2]), 3, 2)
    _device._copy_kernel()(region, cuda.device_array(region.size, np.float32))


def main() -> None:
    known = kernels()
    seen = record(known)
    workload()
    launched = {(module, name) for module, name, _ in seen}
    print(json.dumps({
        "signatures": [{"module": m, "name": n, "types": json.loads(t)} for m, n, t in sorted(seen)],
        "never_launched": sorted(f"{m}.{n}" for m, n in set(known.values()) - launched),
    }, indent=1))


if __name__ == "__main__":
    main()
