"""Device kernels of embzip.comm: the column gather / scatter of per-table groups, and a copy
between arrays of different kinds. Imported by :mod:`._device` only when a GPU buffer is
compressed (importing this module imports numba.cuda). Grids loop grid-stride, launched with
embzip.cuda's sizes, so launch sizes change speed, never results.
"""

from __future__ import annotations

from numba import cuda

from ..cuda._launch import kernel

__all__ = ["gather", "scatter", "copy"]


@kernel
def gather(src, idx, tables, dim, dst):
    """``dst`` (rows x k x dim) = the columns of tables ``idx`` (k of them) of ``src`` (rows x tables x dim)."""
    k = idx.shape[0]
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        c = i % dim
        rest = i // dim
        dst[i] = src[((rest // k) * tables + idx[rest % k]) * dim + c]


@kernel
def scatter(src, idx, tables, dim, dst):
    """The inverse of :func:`gather`: ``src`` (rows x k x dim) into the columns of ``dst``."""
    k = idx.shape[0]
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        c = i % dim
        rest = i // dim
        dst[((rest // k) * tables + idx[rest % k]) * dim + c] = src[i]


@kernel
def copy(src, dst):
    """``dst[i] = src[i]`` (equal sizes)."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = src[i]
