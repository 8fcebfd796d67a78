"""torch interop without importing torch: tensors are recognized by duck typing.

:func:`embzip.compress` takes a CPU tensor zero-copy through ``tensor.numpy()`` (detached
first when it requires grad: compression reads values, it is not part of the graph), and
:func:`embzip.decompress` with ``like=tensor`` returns a tensor on ``like``'s device, built
with ``torch.from_numpy`` (no copy) from the torch module that ``like`` itself came from.
embzip never imports torch: if a tensor exists, torch is already in ``sys.modules``.

Examples
--------
>>> import numpy as np, embzip
>>> torch = __import__("torch")
>>> t = torch.randn(128, 16)
>>> embzip.decompress(embzip.compress(t, abs_error=1e-3), like=t).dtype
torch.float32
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["is_tensor", "as_numpy", "to_like"]


def is_tensor(obj) -> bool:
    """True for a torch tensor (by its type's module and its methods; torch not imported).

    Examples
    --------
    >>> is_tensor(np.zeros(3)), is_tensor([1.0])
    (False, False)
    """
    module = type(obj).__module__ or ""
    return (module == "torch" or module.startswith("torch.")) and hasattr(obj, "numpy") \
        and hasattr(obj, "device")


def as_numpy(data):
    """A CPU tensor as a numpy array sharing its memory; anything else unchanged.

    CUDA tensors are left alone: they go to the CUDA backend through
    ``__cuda_array_interface__``.

    Examples
    --------
    >>> x = np.zeros(3)
    >>> as_numpy(x) is x
    True
    """
    if not is_tensor(data) or data.device.type != "cpu":
        return data
    if data.requires_grad:
        data = data.detach()
    # resolve_conj/resolve_neg: lazily-negated views refuse .numpy(); a no-op otherwise
    return data.resolve_conj().resolve_neg().numpy()


def to_like(array, like):
    """``array`` as a torch tensor on ``like``'s device (zero-copy on the CPU).

    Examples
    --------
    >>> to_like(np.zeros(2), np.ones(2))
    Traceback (most recent call last):
    ...
    TypeError: like must be a torch tensor, found ndarray
    """
    if not is_tensor(like):
        raise TypeError(f"like must be a torch tensor, found {type(like).__name__}")
    torch = sys.modules[type(like).__module__.split(".")[0]]
    if isinstance(array, np.ndarray):
        tensor = torch.from_numpy(array)
        return tensor if like.device.type == "cpu" else tensor.to(like.device)
    return torch.as_tensor(array, device=like.device)  # a device array: through CAI
