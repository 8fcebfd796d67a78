"""The CUDA quantizer compiles without FMA contraction (checked in its PTX, no GPU needed).

numba-cuda leaves libNVVM's ``-fma=1`` default on, so ``a * b + c`` compiles to one fused
multiply-add: the quantizer would round differently from the CPU. Its multiplications go
through round-to-nearest intrinsics instead (embzip/cuda/_launch.py); this test compiles the
kernels whose results must match the CPU bit for bit and checks that no ``fma`` made it into
the PTX. Skipped where libNVVM is not installed (pip install nvidia-nvvm nvidia-cuda-nvrtc).

Beyond the quantizer, every kernel is compiled with the argument types a workload launches
it with under the simulator (which never type-checks for a GPU): a device-only typing error,
an ``fma``, subnormal flushing or too much shared memory fails here, on CI, with no GPU.
"""

from __future__ import annotations

import re

import pytest


def _compile(kernel, signature):
    cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    from numba import config
    if config.ENABLE_CUDASIM:
        pytest.skip("the simulator compiles nothing")
    import numba.cuda.dispatcher as dispatcher

    class _Hopper:  # device functions ask the current device for its compute capability
        compute_capability = (9, 0)

    original = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _Hopper()
    try:
        return cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0))[0]
    except Exception as exc:  # no libNVVM / NVRTC on this machine
        if "NVVM" in str(exc) or "nvrtc" in str(exc).lower() or "libnvvm" in str(exc).lower():
            pytest.skip(f"libNVVM is not available: {str(exc).splitlines()[0][:120]}")
        raise
    finally:
        dispatcher.get_current_device = original


def _kernels():
    from numba import types as T
    from numba.core.types import Array

    from embzip.cuda import bitpack, fused, quantize

    def a(dt):
        return Array(dt, 1, "C")

    f32, f64, u8, u32, i64 = T.float32, T.float64, T.uint8, T.uint32, T.int64
    return {
        "quantize_f32": (quantize.quantize_f32, (a(f32), f64, f32, f64, a(u32), a(u8), a(i64))),
        "quantize_f64": (quantize.quantize_f64, (a(f64), f64, f64, f64, a(u32), a(u8), a(i64))),
        "plan_f64": (fused.plan_f64, (a(f64), i64, f64, f64, f64, a(u8), a(i64))),
        "pack_f32": (fused.pack_f32, (a(f32), f64, f32, f64, a(u8), a(i64), a(u32), a(i64), a(i64), a(u8),
                                      i64, i64, a(u32))),
        "unpack_f32": (bitpack.unpack_f32, (a(u32), a(u8), a(i64), f32, a(f32))),
    }


@pytest.mark.parametrize("name", ["quantize_f32", "quantize_f64", "plan_f64", "pack_f32", "unpack_f32"])
def test_no_fma_in_quantizer_ptx(name):
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    kernel, signature = _kernels()[name]
    ptx = _compile(kernel, signature)
    assert not re.search(r"\bfma\.", ptx), f"{name}: fused multiply-add in the PTX"
    if name.startswith("quantize"):
        assert re.search(r"\bmul\.rn\.f64", ptx), "the float64 multiply by 1/step must be mul.rn"


def _numba_type(spec):
    from numba import types as T
    from numba.core.types import Array

    if spec[0] == "array":
        return Array(getattr(T, spec[1]), spec[2], spec[3])
    return getattr(T, spec[1])


def test_every_kernel_compiles_for_hopper_without_fma_or_flushing():
    """The simulator never type-checks a kernel for a GPU: every kernel, with the argument
    types real workloads launch it with (tests/cuda_kernel_signatures.json, recorded under the
    simulator and kept current by the simulator suite, see tests/cuda_kernel_signatures.py),
    compiles to PTX for sm_90 with no ``fma`` (the CPU rounds twice), no ``.ftz`` (the CPU
    keeps subnormals) and no approximate division; and ptxas, where installed, assembles it
    within 48 KB of static shared memory."""
    import importlib
    import os
    import shutil
    import subprocess
    from pathlib import Path

    _compile(*_kernels()["quantize_f32"])  # skips here when libNVVM / NVRTC is missing
    import cuda_kernel_signatures as listed

    entries = listed.as_entries(listed.committed())
    missing = sorted({f"{m}.{n}" for m, n in listed.kernels().values()} - {f"{e['module']}.{e['name']}" for e in entries})
    assert not missing, f"kernels with no signature in {listed.LIST.name}: {missing} (rerun its script with --write)"
    ptxas = shutil.which("ptxas") or next((str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/ptxas"))), None)
    problems = []
    for entry in entries:
        name = f"{entry['module']}.{entry['name']}{tuple(t[1] for t in entry['types'])}"
        launched = getattr(importlib.import_module(entry["module"]), entry["name"])
        signature = tuple(_numba_type(t) for t in entry["types"])
        try:
            ptx = _compile(launched, signature)
        except pytest.skip.Exception:
            raise
        except Exception as exc:  # a typing or lowering error only a GPU build shows
            problems.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            continue
        for pattern, why in ((r"\bfma\.", "fma"), (r"\.ftz\b", "ftz"), (r"\.approx\b", "approximate op"),
                             (r"\bdiv\.full\b", "approximate division")):
            if re.search(pattern, ptx):
                problems.append(f"{name}: {why} in the PTX")
        if ptxas:
            done = subprocess.run([ptxas, "--gpu-name", "sm_90", "-v", "-", "-o", os.devnull], input=ptx,
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                problems.append(f"{name}: ptxas: {done.stderr.strip()[:300]}")
            shared = [int(n) for n in re.findall(r"(\d+) bytes smem", done.stderr)]
            if shared and max(shared) > 48 * 1024:
                problems.append(f"{name}: {max(shared)} bytes of static shared memory")
    assert not problems, "\n".join(problems)
