"""The CUDA kernel signatures that tests/test_cuda_ptx.py compiles, and how they are recorded.

    NUMBA_ENABLE_CUDASIM=1 python tests/cuda_kernel_signatures.py --write   # (minutes)

The simulator runs kernels as Python, so it never type-checks them for a real GPU;
tests/test_cuda_ptx.py compiles each (kernel, argument types) pair listed in
``cuda_kernel_signatures.json`` to PTX with the real libNVVM instead. The list is recorded here
under the simulator, by a workload that reaches every kernel embzip defines: both dtypes,
every strategy and dedup choice, NaN/inf outliers, decoding into a transposed ``out``, a
non-contiguous input, a misaligned frame, and the comm layer's column gather / scatter / copy
kernels. ``--write`` merges what it records into the committed list (dropping entries of
kernels since removed or given other parameters).

Why committed, not recorded in the test: the simulator runs a Python thread per GPU thread,
and this workload took from 2 to 14 minutes on the same 2-core machine (thread hand-offs on a
shared VM). The simulator suite (tests/test_cuda_sim.py) records every launch it makes with
:func:`record` and fails on a signature missing from the list, so the list cannot go stale
unnoticed: a kernel given a new argument type is compiled once the list is rewritten.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a source checkout

from numba import cuda  # noqa: E402

import embzip  # noqa: E402
import embzip.cuda  # noqa: E402
from embzip.cuda import _launch  # noqa: E402

MODULES = [f"embzip.cuda.{m.name}" for m in pkgutil.iter_modules(embzip.cuda.__path__)]
MODULES.append("embzip.comm._device_kernels")
LIST = Path(__file__).resolve().parent / "cuda_kernel_signatures.json"


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
    """Patch kernel launches to add (module, name, argument types as JSON) to the returned set."""
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


def as_entries(seen: set) -> list:
    return [{"module": m, "name": n, "types": json.loads(t)} for m, n, t in sorted(seen)]


def committed() -> set:
    """The committed list, as record()'s (module, name, types JSON) tuples."""
    return {(e["module"], e["name"], json.dumps(e["types"])) for e in json.loads(LIST.read_text())["signatures"]}


def current(entry: tuple) -> bool:
    """Whether a listed (module, name, types) still names a kernel taking that many arguments
    (--write drops the rest: a kernel removed, or given other parameters)."""
    module, name, types = entry
    launched = getattr(importlib.import_module(module), name, None)
    if not isinstance(launched, _launch._QuietKernel):
        return False
    return len(inspect.signature(launched.dispatcher.py_func).parameters) == len(json.loads(types))


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
        constant = cuda.to_device(np.full(300, 2.5, dtype))
        embzip.compress(constant, rel_error=0.01)
        embzip.decompress(embzip.compress(constant, rel_error=0.01, strategy="compact"))  # a constant rANS section
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
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"
    known = kernels()
    seen = record(known)
    workload()
    launched = {(module, name) for module, name, _ in seen}
    never = sorted(f"{m}.{n}" for m, n in set(known.values()) - launched)
    if "--write" in sys.argv[1:]:
        assert not never, f"kernels the workload never launched: {never}"
        merged = seen | {entry for entry in (committed() if LIST.exists() else set()) if current(entry)}
        lines = ",\n  ".join(json.dumps(entry) for entry in as_entries(merged))  # one signature a line
        LIST.write_text(f'{{"signatures": [\n  {lines}\n]}}\n')
        print(f"{len(merged)} signatures in {LIST} ({len(seen)} from the workload)")
    else:
        print(json.dumps({"signatures": as_entries(seen), "never_launched": never}, indent=1))


if __name__ == "__main__":
    main()
