"""GPU buffers: detection, flat views, copies, and the device column gather/scatter.

A device buffer is anything with ``__cuda_array_interface__`` (cupy, torch CUDA tensors,
numba device arrays) or a numba device array (also the CUDA simulator's). Its flat view is a
cupy array when the buffer is cupy (or cupy is what imports here), else a numba device array
(``numba.cuda.as_cuda_array``, zero-copy).

Compressed calls encode each destination's segment on the GPU with embzip's CUDA backend
(``embzip.compress`` of a device view: frames byte-identical to the CPU's), so only frames
cross PCIe: with a CUDA-aware MPI (:func:`cuda_aware_mpi`) the blobs stay on the device and
MPI gets device pointers (after :func:`ready_for_mpi`); otherwise they are assembled on the
host (frames copied down) and sent from there.
Receivers decode each frame on the GPU straight into the device receive buffer
(``embzip.decompress(frame, out=device_view)``; a host frame is uploaded first). Per-table
layouts gather and scatter the columns of a frame's tables with the small kernels below.
When the CUDA backend cannot run here (numba-cuda missing, no GPU), device segments are
staged through the host raw and the CPU codec runs, as before. Raw transfers (the bypass,
non-float data) hand device buffers straight to MPI when it is CUDA-aware, else stage them
through host buffers. Nothing imports cupy or numba.cuda unless a device buffer shows up.
"""

from __future__ import annotations

import os
import threading
import warnings

import numpy as np

from .. import _backend, _stream_order

__all__ = ["is_device", "device_flat", "to_host", "to_device", "cuda_aware_mpi", "ready_for_mpi", "current_device",
           "use_device", "results_ready", "gpu_codec_usable",
           "empty", "empty_like", "copy", "gather_columns", "scatter_columns", "LOCK"]

#: Serializes the GPU codec calls of one process: the pipelined call encodes in one thread and
#: decodes in another, and both would queue on the same default stream anyway; the simulator's
#: kernel launches are not thread-safe at all.
LOCK = threading.RLock()


def is_device(obj) -> bool:
    """True for a CUDA array (cupy, numba.cuda, torch.cuda...): it has ``__cuda_array_interface__``
    or is a numba device array (the simulator's have no interface)."""
    return _backend.is_device(obj)


def _cupy_module():
    try:
        import cupy
    except ImportError:
        return None
    return cupy


_numba_cuda = _stream_order._numba_cuda  # numba.cuda when it can run kernels here (a GPU or the simulator), else None


def _is_numba(arr) -> bool:
    return getattr(arr, "__cuda_ndarray__", False) is True


def device_flat(buf, writable: bool, name: str):
    """A 1-D device view (cupy or numba) of a contiguous device buffer, and its own dtype."""
    desc = _backend._interface(buf)
    readonly = bool(desc.get("data", (0, False))[1])
    if writable and readonly:
        raise ValueError(f"{name} is a read-only GPU buffer; the receive buffer must be writable")
    cupy = _cupy_module() if not _is_numba(buf) else None
    if cupy is not None:
        _stream_order.wait_for_producer(buf, desc)  # cupy.asarray would not wait for the caller's stream
        arr = cupy.asarray(buf)
        if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
            raise ValueError(f"{name} is a non-contiguous GPU array (strides {arr.strides}); pass a contiguous one")
        return arr.ravel(order="K" if not arr.flags.c_contiguous else "C"), arr.dtype
    if _numba_cuda() is None:
        raise TypeError("a GPU buffer was given, and embzip.comm needs cupy or numba-cuda (with a GPU) to "
                        "handle it: pip install cupy-cuda12x, or 'embzip[cuda]'")
    dtype = np.dtype(desc["typestr"])
    shape = tuple(int(n) for n in desc["shape"])
    strides = desc.get("strides")
    if strides is not None and len(shape) > 0:
        c = tuple(int(np.prod(shape[d + 1:], dtype=np.int64)) * dtype.itemsize for d in range(len(shape)))
        f = tuple(int(np.prod(shape[:d], dtype=np.int64)) * dtype.itemsize for d in range(len(shape)))
        live = [i for i, n in enumerate(shape) if n > 1]
        if not (all(strides[i] == c[i] for i in live) or all(strides[i] == f[i] for i in live)):
            raise ValueError(f"{name} is a non-contiguous GPU array (strides {tuple(strides)}); pass a contiguous one")
    # Contiguous in C or F order: the elements fill [pointer, pointer + n * itemsize) in memory
    # order, so a 1-D view over that range is the flat buffer. (Not arr.T.reshape(n): on a GPU a
    # numba array's transpose is a copy, made by a kernel, and what the call then received
    # would land in the copy, not in the caller's buffer.)
    view, first, _ = _backend._span(buf, desc, dtype)
    return view[first:first + int(np.prod(shape, dtype=np.int64))], dtype


def gpu_codec_usable() -> bool:
    """Whether the CUDA backend can encode / decode here (else GPU buffers are staged through
    the host for the CPU codec)."""
    return _numba_cuda() is not None


def to_host(device_array) -> np.ndarray:
    """Copy a device array into a new host numpy array."""
    if hasattr(device_array, "copy_to_host"):
        return device_array.copy_to_host()
    with _stream_order.on_default_stream():
        return _cupy_module().asnumpy(device_array)


def to_device(host: np.ndarray, device_view) -> None:
    """Copy ``host`` into the (contiguous) device view."""
    host = np.ascontiguousarray(host).reshape(device_view.shape)
    if hasattr(device_view, "copy_to_device"):
        device_view.copy_to_device(host)
    else:
        with _stream_order.on_default_stream():
            device_view.set(host)


def empty(n: int, dtype, like=None):
    """A new 1-D device array (cupy when ``like`` is cupy, else numba)."""
    if like is not None and not _is_numba(like) and _cupy_module() is not None:
        with _stream_order.on_default_stream():  # the pool's memory, ordered on the stream embzip uses
            return _cupy_module().empty(int(n), dtype=dtype)
    return _numba_cuda().device_array(int(n), dtype=dtype)


def empty_like(arr):
    """Scratch of ``arr``'s size and dtype on the same side (host or device)."""
    if not is_device(arr):
        return np.empty_like(arr)
    return empty(arr.size, arr.dtype, like=arr)


def copy(dst, src) -> None:
    """``dst[...] = src`` for equal-size 1-D arrays, each on the host or a device."""
    if not is_device(dst):
        dst[...] = to_host(src) if is_device(src) else src
    elif not is_device(src):
        to_device(src, dst)
    elif _is_numba(dst) and _is_numba(src):
        if dst.size:
            dst.copy_to_device(src)
    elif not _is_numba(dst) and not _is_numba(src):
        with _stream_order.on_default_stream():
            dst[...] = src
    else:  # a cupy side and a numba side: a kernel copies, reading the cupy side as a numba view
        if dst.size:
            _copy_kernel()(_stream_order.numba_view(src), _stream_order.numba_view(dst))


_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def cuda_aware_mpi() -> bool:
    """Whether MPI may be given device pointers.

    ``EMBZIP_CUDA_AWARE_MPI=1`` or ``0`` (also true/false, yes/no, on/off) decides; unset or
    ``auto``, the MPI library is asked (:func:`._mpi.library_cuda_support`: MPICH's and Open
    MPI's ``MPIX_Query_cuda_support``). An MPI that cannot say counts as not CUDA-aware:
    staging through host memory always works, a wrong True crashes. Another value warns and
    asks (never raises: only ranks with device buffers get here, and one rank raising alone
    would leave the others waiting).
    """
    setting = os.environ.get("EMBZIP_CUDA_AWARE_MPI", "auto").strip().lower()
    if setting in _YES or setting in _NO:
        return setting in _YES
    if setting != "auto":
        warnings.warn(f"EMBZIP_CUDA_AWARE_MPI={setting!r} is not 1/0/auto: asking the MPI library", stacklevel=2)
    from . import _mpi

    return _mpi.library_cuda_support()


def current_device():
    """The calling thread's current CUDA device (an id), or None where none can be named (no GPU
    API answers, e.g. under the simulator): for :func:`use_device` in another thread."""
    cupy = _cupy_module()
    if cupy is not None:
        try:
            return int(cupy.cuda.runtime.getDevice())
        except Exception:  # cupy without a usable GPU: numba may still have one (or the simulator)
            pass
    cuda = _numba_cuda()
    return None if cuda is None else getattr(cuda.get_current_device(), "id", None)


def use_device(device) -> None:
    """Make ``device`` (from :func:`current_device`) current in this thread.

    Why: a new thread starts on device 0, whatever device the caller made current (one rank
    per GPU: ``cupy.cuda.Device(local_rank).use()``); the pipelined call's threads would launch
    kernels on another GPU than the one holding the buffers. cupy's ``setDevice`` makes that
    device's primary context current, which numba's kernels then use too.
    """
    if device is None:
        return
    cupy = _cupy_module()
    if cupy is not None:
        try:
            cupy.cuda.runtime.setDevice(device)
            return
        except Exception:
            pass
    _numba_cuda().select_device(device)


def synchronize() -> None:
    """Wait until the GPU has finished everything queued on it (every stream of the context)."""
    cuda = _numba_cuda()
    if cuda is not None:
        cuda.synchronize()
    elif _cupy_module() is not None:
        _cupy_module().cuda.Device().synchronize()


def results_ready(*buffers) -> None:
    """Call before a call returns having written device ``buffers``: waits until the GPU has
    run what embzip queued, so the caller may read them on any stream (as after MPI returns)."""
    if any(is_device(b) for b in buffers):
        _stream_order.results_ready()


def ready_for_mpi(*buffers) -> None:
    """Call before handing device buffers to a CUDA-aware MPI.

    Why: kernel launches and device-to-device copies return before the GPU has run them, and
    MPI moves device memory on streams of its own, which do not wait for the ones embzip (or
    the caller) queued work on: a blob still being assembled would be sent half written, and
    a freshly allocated receive buffer could be written while a queued kernel still reads the
    memory it reuses. (mpi4py leaves this to its caller too.) Host buffers need nothing.
    """
    if any(is_device(b) for b in buffers):
        synchronize()


# ------------------------------------------------------------ column gather / scatter (._device_kernels)

def _launch(name: str, n: int):
    from ..cuda._launch import THREADS, blocks

    from . import _device_kernels
    return getattr(_device_kernels, name)[blocks(n), THREADS]


def _copy_kernel():
    def run(src, dst):
        _launch("copy", int(dst.size))(src, dst)
    return run


def _index(idx: np.ndarray):
    from ..cuda.scan import to_device as upload  # (pooled memory when cupy works here)
    return upload(np.ascontiguousarray(idx, dtype=np.int64))


def gather_columns(region, idx: np.ndarray, tables: int, dim: int):
    """The columns of tables ``idx`` of a device region (rows x tables x dim), as a new device
    array of shape (rows * len(idx), dim): what ``cube[:, idx, :]`` gives on the host."""
    from ..cuda.scan import device_empty

    rows = int(region.size) // (tables * dim)
    out = device_empty(rows * idx.size * dim, np.dtype(region.dtype))
    if out.size:  # (kernels get numba views: numba would take a cupy array through DLPack on stream 0)
        _launch("gather", int(out.size))(_stream_order.numba_view(region), _index(idx), tables, dim, out)
    return out.reshape(rows * idx.size, dim)


def scatter_columns(values, region, idx: np.ndarray, tables: int, dim: int) -> None:
    """Write ``values`` (rows * len(idx) x dim, C order, on the device) into the columns of
    tables ``idx`` of a device region (rows x tables x dim)."""
    flat = _stream_order.numba_view(values.reshape(int(values.size)))
    if flat.size:
        _launch("scatter", int(flat.size))(flat, _index(idx), tables, dim, _stream_order.numba_view(region))
