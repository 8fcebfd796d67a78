"""embzip: error-bounded lossy compression of embedding batches and float arrays.

>>> import numpy as np, embzip
>>> x = np.random.default_rng(0).normal(size=(256, 16)).astype(np.float32)
>>> frame = embzip.compress(x, rel_error=0.01)
>>> y = embzip.decompress(frame)
>>> bound = embzip.inspect(frame).abs_error   # 0.01 * (max - min), resolved in float64
>>> bool(np.abs(y.astype(np.float64) - x).max() <= bound)   # the promise, checked in float64
True
"""

from ._api import FrameInfo, compress, decompress, inspect
from .errors import (
    BackendUnavailableError,
    CommError,
    CorruptFrameError,
    EmbzipError,
    FormatError,
    FrameTooLargeError,
    OutMismatchError,
    TruncatedFrameError,
    UnsupportedVersionError,
)

__version__ = "0.1.0"

__all__ = [
    "compress",
    "decompress",
    "inspect",
    "FrameInfo",
    "EmbzipError",
    "FormatError",
    "CorruptFrameError",
    "TruncatedFrameError",
    "UnsupportedVersionError",
    "FrameTooLargeError",
    "OutMismatchError",
    "BackendUnavailableError",
    "CommError",
    "__version__",
]
