"""embzip: error-bounded lossy compression of embedding batches and float arrays.

>>> import numpy as np, embzip
>>> x = np.random.default_rng(0).normal(size=(256, 16)).astype(np.float32)
>>> y = embzip.decompress(embzip.compress(x, rel_error=0.01))
>>> bool(np.abs(y - x).max() <= 0.01 * (x.max() - x.min()))
True
"""

from ._api import FrameInfo, compress, decompress, inspect
from .errors import (
    BackendUnavailableError,
    CommError,
    CorruptFrameError,
    EmbzipError,
    FormatError,
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
    "BackendUnavailableError",
    "CommError",
    "__version__",
]
