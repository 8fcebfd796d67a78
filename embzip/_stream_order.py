"""How embzip's GPU work is ordered with the caller's: one stream inside, a sync at each edge.

Inside a call, every piece of GPU work embzip queues goes to the legacy default stream:
numba launches kernels and copies there, and cupy operations run with cupy's current stream
set to it (:func:`on_default_stream`). One stream orders the work by itself, with no host
waits; cupy's memory pool, which hands out memory per stream, reuses a scratch block only
behind the work that used it.

The caller may use any stream (a non-blocking cupy stream, a torch side stream), which does
not wait for the legacy stream, nor it for them. So at the edges of a call:

* entering: :func:`wait_for_producer` waits for the stream a buffer's producer exported in
  its ``__cuda_array_interface__`` (version 3: the consumer must wait on it before touching
  the memory); torch exports no stream (version 2), so for a torch tensor it waits for torch's
  current stream on the tensor's device, as a DLPack exchange would;
* leaving: :func:`results_ready` waits until the legacy stream has run everything queued,
  so an array returned or written is complete for any stream, as a buffer is once MPI
  returns.

Scratch arrays built over cupy memory must not carry the stream cupy exports either
(:func:`numba_view`): numba would bind it to the array and run that array's copies on it,
outside the order above. The simulator runs everything synchronously: all of this is a
no-op there. Nothing here imports cupy or numba.cuda until a device array shows up.
"""

from __future__ import annotations

import contextlib
import sys

__all__ = ["wait_for_producer", "on_default_stream", "results_ready", "numba_view"]


def _simulated() -> bool:
    from numba import config  # (numba's own: importable without numba-cuda)
    return bool(getattr(config, "ENABLE_CUDASIM", False))


def _cupy():
    from ._backend import _usable_cupy
    return _usable_cupy()


def _numba_cuda():
    """numba.cuda when it can run here (a GPU, or the simulator), else None: embzip.comm stages
    cupy buffers through the host when numba-cuda is missing or sees no GPU, and waits with cupy."""
    try:
        from numba import cuda
    except ImportError:
        return None
    try:
        return cuda if cuda.is_available() else None
    except Exception:  # a broken driver install
        return None


def wait_for_producer(obj, desc: dict) -> None:
    """Wait for the stream in ``obj``'s ``__cuda_array_interface__`` (``desc``), if it names one;
    for a torch tensor, which names none, for torch's current stream."""
    if _simulated():  # (the simulator runs everything at once, and has no external streams)
        return
    stream = desc.get("stream")
    if stream is None:
        torch = sys.modules.get("torch")  # (a torch tensor comes from an imported torch)
        if torch is not None and isinstance(obj, torch.Tensor):  # a side stream may still be writing it
            torch.cuda.current_stream(obj.device).synchronize()
        return
    cuda = _numba_cuda()
    if cuda is not None:
        cuda.external_stream(int(stream)).synchronize()
    elif _cupy() is not None:  # 1 and 2 (legacy, per-thread default) are valid handles too
        _cupy().cuda.runtime.streamSynchronize(int(stream))


@contextlib.contextmanager
def on_default_stream():
    """Run the block's cupy operations on the legacy default stream (where numba launches).

    Why: cupy queues on its current stream, which the caller may have set to a non-blocking
    stream; work there would race with embzip's kernels on the legacy stream.
    """
    cupy = _cupy()
    if cupy is None:
        yield
        return
    with cupy.cuda.Stream.null:
        yield


def results_ready() -> None:
    """Block until the legacy default stream has run everything queued on it."""
    cuda = _numba_cuda()
    if cuda is not None:  # (the simulator's streams are synchronous: a no-op there)
        cuda.default_stream().synchronize()
    elif _cupy() is not None:
        _cupy().cuda.Stream.null.synchronize()


def numba_view(obj):
    """A numba device array over ``obj``'s memory (same shape and strides), bound to no stream.

    A numba array is returned as it is. Others are wrapped without waiting on, or binding,
    the stream they export (see the module docstring): for embzip's own scratch, and for
    buffers whose producer :func:`wait_for_producer` has already waited for.
    """
    if getattr(obj, "__cuda_ndarray__", False) is True:
        return obj
    from numba import cuda
    desc = {key: value for key, value in obj.__cuda_array_interface__.items() if key != "stream"}
    return cuda.from_cuda_array_interface(desc, owner=obj, sync=False)
