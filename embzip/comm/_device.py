"""GPU (cupy) buffers: detection, flat views, and staging through host memory.

embzip's codec runs on the host here, so a device segment is copied to the host
(``cupy.asnumpy``), compressed there, and decoded frames are copied back into the device
receive buffer. Raw transfers (the bypass, non-float data) hand device buffers straight to
MPI when it is CUDA-aware, else stage them through host buffers too. Nothing imports cupy
unless a buffer with ``__cuda_array_interface__`` shows up.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["is_device", "device_flat", "to_host", "to_device", "cuda_aware_mpi"]


def is_device(obj) -> bool:
    """True for a CUDA array (cupy, numba.cuda, torch.cuda...): it has ``__cuda_array_interface__``."""
    return hasattr(obj, "__cuda_array_interface__")


def _cupy():
    try:
        import cupy
    except ImportError:
        raise TypeError("a GPU buffer was given, and embzip.comm needs cupy to handle it: pip install cupy-cuda12x") from None
    return cupy


def device_flat(buf, writable: bool, name: str):
    """A 1-D cupy view of a contiguous device buffer, and its own dtype."""
    cupy = _cupy()
    readonly = bool(buf.__cuda_array_interface__.get("data", (0, False))[1])
    if writable and readonly:
        raise ValueError(f"{name} is a read-only GPU buffer; the receive buffer must be writable")
    arr = cupy.asarray(buf)
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        raise ValueError(f"{name} is a non-contiguous GPU array (strides {arr.strides}); pass a contiguous one")
    return arr.ravel(order="K" if not arr.flags.c_contiguous else "C"), arr.dtype


def to_host(device_array) -> np.ndarray:
    """Copy a device array into a new host numpy array."""
    return _cupy().asnumpy(device_array)


def to_device(host: np.ndarray, device_view) -> None:
    """Copy ``host`` into the (contiguous) device view."""
    device_view.set(np.ascontiguousarray(host).reshape(device_view.shape))


def cuda_aware_mpi() -> bool:
    """Whether MPI may be given device pointers.

    MPI offers no portable query, so this reads ``EMBZIP_CUDA_AWARE_MPI`` (``1`` / ``0``);
    unset means False: staging through host memory always works, a wrong True crashes.
    """
    return os.environ.get("EMBZIP_CUDA_AWARE_MPI", "0") == "1"
