"""Which of FBGEMM's instruction-set paths torch takes on this CPU, where it changes results."""

from __future__ import annotations

import functools

__all__ = ["fbgemm_columns"]

# FBGEMM's fbgemmHasAvx512Support(): all four, else its AVX2 kernels (ymm registers).
_AVX512 = ("avx512f", "avx512bw", "avx512dq", "avx512vl")


@functools.lru_cache(maxsize=None)
def fbgemm_columns() -> int:
    """Columns per kernel block of FBGEMM's fp16-weight GEMM on this CPU: 32 or 16.

    ``PackedGemmMatrixFP16`` packs B in blocks of two SIMD registers' worth of columns: 32
    with AVX-512 (zmm), 16 with AVX2 (ymm). Where K > 512 the block width decides which output
    columns are one FMA chain and which restart every 512 rows (see
    :func:`embzip.lowprec.linear_fp16_weight`). Read from LLVM's view of the host CPU (the one
    numba compiles for). FBGEMM's own overrides (``FBGEMM_ENABLE_INSTRUCTIONS``, the AVX-512
    ymm path that Xeon D servers can enable) are not read: pass ``fbgemm_columns=16`` then.

    Examples
    --------
    >>> from embzip.lowprec import fbgemm_columns
    >>> fbgemm_columns() in (16, 32)
    True
    """
    from llvmlite import binding  # numba's own dependency

    features = binding.get_host_cpu_features()
    return 32 if all(features.get(name, False) for name in _AVX512) else 16
