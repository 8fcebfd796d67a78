"""Route device arrays to the CUDA backend; nothing here imports numba.cuda until one shows up.

A *device array* is a numba device array or any object with ``__cuda_array_interface__``
(cupy, torch CUDA tensors, ...). :func:`compress` and :func:`decompress` are what embzip._api
calls for them; they accept the same arguments, run embzip/cuda/pipeline.py, and return an
array of the caller's kind: cupy in -> cupy out, numba in -> numba out, anything else -> cupy
when cupy works here, else numba.
"""

from __future__ import annotations

import math

import numpy as np

from ._stream_order import results_ready, wait_for_producer
from .errors import BackendUnavailableError, OutMismatchError

__all__ = ["is_device", "compress", "decompress", "frame_header", "to_host_frame"]

_CUPY_UNKNOWN = object()
_cupy_module = _CUPY_UNKNOWN


def is_device(obj) -> bool:
    """True for a numba device array or an object exposing ``__cuda_array_interface__``."""
    if isinstance(obj, (np.ndarray, bytes, bytearray, memoryview)):
        return False
    return getattr(obj, "__cuda_ndarray__", False) is True or hasattr(obj, "__cuda_array_interface__")


def _cuda():
    """numba.cuda, checked usable (a GPU, or the simulator)."""
    try:
        from numba import cuda
    except ImportError as exc:  # pragma: no cover - numba-cuda missing
        raise BackendUnavailableError(
            f"the CUDA backend needs numba-cuda (pip install 'embzip[cuda]'): {exc}") from None
    if not cuda.is_available():
        raise BackendUnavailableError("the CUDA backend needs a CUDA GPU, and numba.cuda finds none")
    return cuda


def _pipeline():
    _cuda()
    from .cuda import pipeline
    return pipeline


def _usable_cupy():
    """The cupy module when it imports and sees a GPU, else None (checked once)."""
    global _cupy_module
    if _cupy_module is _CUPY_UNKNOWN:
        try:
            import cupy
            _cupy_module = cupy if cupy.is_available() else None
        except Exception:  # ImportError, or a CUDA error on a machine without a GPU
            _cupy_module = None
    return _cupy_module


def _kind(obj) -> str:
    if type(obj).__module__.split(".")[0] == "cupy":
        return "cupy"
    if getattr(obj, "__cuda_ndarray__", False) is True:
        return "numba"
    return "cupy" if _usable_cupy() is not None else "numba"


def _as_kind(array, kind: str):
    """A numba device array as ``kind`` (zero-copy for cupy)."""
    if kind == "cupy":
        cupy = _usable_cupy()
        if cupy is not None:
            return cupy.asarray(array)
    return array


# ------------------------------------------------------------------------ flat views


def _interface(obj) -> dict:
    ary = getattr(obj, "_ary", None)  # the simulator's device array wraps a numpy array
    if ary is not None and not hasattr(obj, "__cuda_array_interface__"):
        return ary.__array_interface__
    return obj.__cuda_array_interface__


def _span(obj, desc: dict, dtype: np.dtype):
    """(1-D device array over the memory ``obj`` covers, first element, element strides).

    Waits first for the stream ``obj``'s producer exported (embzip._stream_order); the view
    itself is bound to no stream."""
    wait_for_producer(obj, desc)
    shape = tuple(desc["shape"])
    itemsize = dtype.itemsize
    strides = desc.get("strides")
    if strides is None:
        strides = tuple(int(np.prod(shape[d + 1:], dtype=np.int64)) * itemsize for d in range(len(shape)))
    if any(s % itemsize for s in strides):
        raise ValueError(f"device array strides {strides} are not multiples of the item size {itemsize}")
    if math.prod(shape) and desc["data"][0] % itemsize:
        # a GPU faults on a misaligned load (fatal to the context); the simulator reads on
        raise ValueError(f"device array data at {desc['data'][0]:#x} is not aligned to its item size {itemsize}: "
                         "copy it into a fresh array first")
    lo = sum((n - 1) * s for n, s in zip(shape, strides) if s < 0 and n > 0)
    hi = sum((n - 1) * s for n, s in zip(shape, strides) if s > 0 and n > 0) + itemsize
    count = 0 if math.prod(shape) == 0 else (hi - lo) // itemsize
    pointer = desc["data"][0] + lo if count else desc["data"][0]
    if count == 0:
        from .cuda.scan import device_empty
        return device_empty(0, dtype), 0, tuple(s // itemsize for s in strides)
    flat_desc = {"shape": (count,), "strides": None, "typestr": dtype.str, "data": (pointer, False), "version": 3}
    if _simulated():
        span = _simulated_span(flat_desc, obj)
    else:  # pragma: no cover - needs a GPU
        span = _cuda().from_cuda_array_interface(flat_desc, owner=obj, sync=True)
    return span, -lo // itemsize, tuple(s // itemsize for s in strides)


def _simulated() -> bool:
    from .cuda._launch import SIMULATOR
    return SIMULATOR


class _HostMemory:
    """Simulator only: device pointers are host pointers; numpy wraps the memory (and keeps
    its owner alive)."""

    def __init__(self, desc: dict, owner):
        self.__array_interface__ = desc
        self.owner = owner


def _simulated_span(desc: dict, owner):
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    return FakeCUDAArray(np.asarray(_HostMemory(desc, owner)))


def _device_flat(obj, what: str):
    """(1-D C-order device array of obj's elements, shape, dtype, desc)."""
    desc = _interface(obj)
    dtype = np.dtype(desc["typestr"])
    shape = tuple(int(n) for n in desc["shape"])
    if dtype.kind == "f" and not dtype.isnative:
        raise TypeError(f"{what} must be in native byte order, found dtype {dtype}")
    span, first, strides = _span(obj, desc, dtype)
    n = math.prod(shape)
    c_strides = tuple(math.prod(shape[d + 1:]) for d in range(len(shape)))
    if n <= 1 or all(s == c or extent == 1 for s, c, extent in zip(strides, c_strides, shape)):
        return span[first:first + n], shape, dtype, desc
    from .cuda import layout
    from .cuda._launch import THREADS, blocks
    from .cuda.scan import device_empty, to_device
    flat = device_empty(n, dtype)
    layout.strided_gather[blocks(n), THREADS](span, first, to_device(np.array(shape, np.int64)),
                                              to_device(np.array(strides, np.int64)), flat)
    return flat, shape, dtype, desc


# ---------------------------------------------------------------------- public verbs


def compress(data, abs_error, rel_error, strategy, resolve_bound, bandwidth=None, dedup=None):
    """Compress a device array; ``resolve_bound(abs_error, rel_error, span)`` is _api's."""
    pipeline = _pipeline()
    flat, shape, dtype, _ = _device_flat(data, "data")
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"expected a float32 or float64 array, found dtype {dtype}")
    from .format.header import check_shape
    check_shape(shape)
    from .cuda.memory import workspace
    with workspace():  # one workspace for the range and the encoding (embzip.cuda.memory)
        span = pipeline.finite_range(flat) if rel_error is not None else None
        mode, given, bound, constant = resolve_bound(abs_error, rel_error, span)
        frame = pipeline.encode_array(flat, shape, mode, given, bound, strategy, constant, bandwidth,
                                      dedup_hint=dedup)
    results_ready()  # the frame is complete for a caller on any stream
    return _as_kind(frame, _kind(data))


def to_host_frame(frame) -> np.ndarray:
    """A device frame's bytes on the host (for ``decompress(..., device="cpu")``)."""
    flat, shape, dtype, _ = _device_flat(frame, "frame")
    if dtype != np.uint8 or len(shape) != 1:
        raise TypeError(f"expected a 1-D uint8 frame array, found dtype {dtype} with ndim {len(shape)}")
    return flat.copy_to_host()


def _device_frame(frame):
    """The frame as an 8-byte-aligned 1-D uint8 device array (copied when misaligned)."""
    pipeline = _pipeline()
    if not is_device(frame):
        from .format.header import as_frame_bytes
        cuda = _cuda()
        return cuda.to_device(np.ascontiguousarray(as_frame_bytes(frame))), pipeline
    flat, shape, dtype, desc = _device_flat(frame, "frame")
    if dtype != np.uint8 or len(shape) != 1:
        raise TypeError(f"expected a 1-D uint8 frame array, found dtype {dtype} with ndim {len(shape)}")
    if _pointer(flat) % 8:
        from .cuda.scan import copy_bytes, device_empty
        aligned = device_empty(flat.shape[0], np.uint8)
        copy_bytes(flat, aligned, 0)
        flat = aligned
    return flat, pipeline


def _pointer(array) -> int:
    ary = getattr(array, "_ary", None)
    if ary is not None and not hasattr(array, "__cuda_array_interface__"):
        return ary.ctypes.data
    return array.__cuda_array_interface__["data"][0]


def frame_header(frame):
    """The validated header of a device frame (for ``inspect``)."""
    flat, pipeline = _device_frame(frame)
    return pipeline.read_device_header(flat)


#: CUresult's CUDA_ERROR_OUT_OF_MEMORY (cuda.h), the code of numba's CudaAPIError when an
#: allocation fails (cupy's pool raises its OutOfMemoryError, a MemoryError).
_CUDA_ERROR_OUT_OF_MEMORY = 2


def decompress(frame, out=None, verify: bool = True, max_bytes=None):
    """Decode a frame (device or host bytes) on the device; see embzip.decompress."""
    flat, pipeline = _device_frame(frame)
    header = pipeline.read_device_header(flat)
    from numba.cuda.cudadrv.driver import CudaAPIError

    from ._api import check_size, frame_too_big  # (as on the CPU: a few bytes may declare 2**48 elements)
    check_size(header, max_bytes)
    try:
        return _decode(frame, flat, pipeline, header, out, verify)
    except MemoryError:
        pass  # (not a placeholder: out of memory is judged below, after the payload CRC)
    except CudaAPIError as exc:
        if getattr(exc, "code", None) != _CUDA_ERROR_OUT_OF_MEMORY:  # (an int enum; the simulator's has none)
            raise
    # The output (or a stage's scratch) did not fit. The CPU checks the payload CRC before it
    # allocates, so a frame both corrupt and too large is corrupt there: judged alike here.
    if verify:
        pipeline.check_payload(flat, header)
    raise frame_too_big(header)


def _decode(frame, flat, pipeline, header, out, verify: bool):
    """:func:`decompress` once the header is read: into a new device array or into ``out``."""
    dtype = header.dtype.numpy.newbyteorder("=")
    n = header.element_count
    from .cuda.scan import device_empty
    if out is None:
        result = device_empty(n, dtype, for_caller=True)
        pipeline.decode_frame(flat, header, result, verify)
        results_ready()  # complete for a caller on any stream
        kind = _kind(frame) if is_device(frame) else ("cupy" if _usable_cupy() is not None else "numba")
        return _as_kind(result.reshape(header.shape), kind)
    if not is_device(out):
        raise TypeError(f"out must be a device array to decode on the GPU, found {type(out).__name__}")
    desc = _interface(out)
    out_shape, out_dtype = tuple(desc["shape"]), np.dtype(desc["typestr"])
    if out_shape != header.shape or out_dtype != dtype:
        raise OutMismatchError(f"out must have shape {header.shape} and dtype {dtype}, found {out_shape} and {out_dtype}")
    if desc["data"][1]:
        raise ValueError("out must be writable, found a read-only array")
    span, first, strides = _span(out, desc, dtype)
    c_strides = tuple(math.prod(out_shape[d + 1:]) for d in range(len(out_shape)))
    if n <= 1 or all(s == c or e == 1 for s, c, e in zip(strides, c_strides, out_shape)):
        pipeline.decode_frame(flat, header, span[first:first + n], verify)
        results_ready()
        return out
    result = pipeline.decode_frame(flat, header, device_empty(n, dtype), verify)
    from .cuda import layout
    from .cuda._launch import THREADS, blocks
    from .cuda.scan import to_device
    layout.strided_scatter[blocks(n), THREADS](result, span, first, to_device(np.array(out_shape, np.int64)),
                                               to_device(np.array(strides, np.int64)))
    results_ready()
    return out
