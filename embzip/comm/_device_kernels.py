"""Device kernels of embzip.comm: the column gather / scatter of per-table groups, and a copy
between arrays of different kinds. Imported by :mod:`._device` only when a GPU buffer is
compressed (importing this module imports numba.cuda). Grids loop grid-stride, launched with
embzip.cuda's sizes, so launch sizes change speed, never results.
"""

from __future__ import annotations

from numba import cuda

from ..cuda._launch import device, kernel

__all__ = ["gather", "scatter", "copy"]


@device
def _wide(i, idx, tables, dim):
    """Where element ``i`` of a (rows x k x dim) group sits in (rows x tables x dim)."""
    k = idx.shape[0]
    rest = i // dim
    return ((rest // k) * tables + idx[rest % k]) * dim + i % dim


@kernel
def gather(src, idx, tables, dim, dst):
    """``dst`` (rows x k x dim) = the columns of tables ``idx`` (k of them) of ``src`` (rows x tables x dim)."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = src[_wide(i, idx, tables, dim)]


@kernel
def scatter(src, idx, tables, dim, dst):
    """The inverse of :func:`gather`: ``src`` (rows x k x dim) into the columns of ``dst``."""
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        dst[_wide(i, idx, tables, dim)] = src[i]


@kernel
def copy(src, dst):
    """``dst[i] = src[i]`` (equal sizes)."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = src[i]
