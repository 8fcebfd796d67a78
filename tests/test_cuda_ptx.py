"""The CUDA quantizer compiles without FMA contraction (checked in its PTX, no GPU needed).

numba-cuda leaves libNVVM's ``-fma=1`` default on, so ``a * b + c`` compiles to one fused
multiply-add: the quantizer would round differently from the CPU. Its multiplications go
through round-to-nearest intrinsics instead (embzip/cuda/_launch.py); this test compiles the
kernels whose results must match the CPU bit for bit and checks that no ``fma`` made it into
the PTX. Skipped where libNVVM is not installed (pip install nvidia-nvvm nvidia-cuda-nvrtc).
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
