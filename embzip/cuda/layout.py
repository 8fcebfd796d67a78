"""Device arrays of any layout as flat C-order views: strided gather and scatter kernels.

Any ``__cuda_array_interface__`` array is addressed through a 1-D view of the memory span it
covers; C-contiguous arrays need nothing more (the view *is* the flat array), other layouts
(transposes, slices, negative strides) are gathered into a fresh C-order array, and a
non-contiguous ``out`` is filled by the reverse scatter.
"""

from __future__ import annotations

from numba import cuda

from ._launch import kernel

__all__ = ["strided_gather", "strided_scatter"]


@kernel
def strided_gather(span, first, shape, strides, dst):
    """``dst[i]`` = the element of C-order index ``i``: ``span[first + sum(index_d * strides_d)]``."""
    ndim = shape.shape[0]
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        rest = i
        at = first
        for d in range(ndim - 1, -1, -1):
            at += (rest % shape[d]) * strides[d]
            rest //= shape[d]
        dst[i] = span[at]


@kernel
def strided_scatter(src, span, first, shape, strides):
    """The inverse of :func:`strided_gather`."""
    ndim = shape.shape[0]
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        rest = i
        at = first
        for d in range(ndim - 1, -1, -1):
            at += (rest % shape[d]) * strides[d]
            rest //= shape[d]
        span[at] = src[i]
