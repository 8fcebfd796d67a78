"""Numeric identifiers written into frames. Values are part of the format: never renumber."""

from __future__ import annotations

import enum

import numpy as np

MAGIC = b"EMBZ"
MAJOR_VERSION = 1
MINOR_VERSION = 0


class DTypeId(enum.IntEnum):
    """Element type of the original array."""

    FLOAT32 = 1
    FLOAT64 = 2

    @property
    def numpy(self) -> np.dtype:
        return _NUMPY_DTYPES[self]  # built once: np.dtype("<f4") costs ~0.3 us, several times a frame

    @classmethod
    def from_numpy(cls, dtype) -> "DTypeId":
        dtype = np.dtype(dtype)
        if dtype == np.float32:
            return cls.FLOAT32
        if dtype == np.float64:
            return cls.FLOAT64
        raise TypeError(f"expected a float32 or float64 array, found dtype {dtype}")


_NUMPY_DTYPES = {DTypeId.FLOAT32: np.dtype("<f4"), DTypeId.FLOAT64: np.dtype("<f8")}


class ErrorMode(enum.IntEnum):
    """How the user stated the bound (the resolved absolute bound is always stored too)."""

    ABS = 1
    REL = 2


class Encoder(enum.IntEnum):
    """How the integer code streams are stored."""

    RAW = 0  # the original bytes, no quantization: the frame is lossless
    BITPACK = 1  # per-block fixed-width zigzag bit-packing ("fast")
    RANS = 2  # chunked static rANS ("compact")


class Flags(enum.IntFlag):
    """Stage switches."""

    NONE = 0
    DEDUP = 1  # rows were deduplicated; an index stream maps rows to unique rows


class SectionKind(enum.IntEnum):
    """Payload sections; each appears at most once, in this order."""

    RAW = 1  # raw little-endian values (Encoder.RAW only)
    CODES = 2  # encoded zigzag codes of the (unique) rows
    ROW_INDEX = 3  # encoded row -> unique-row references (Flags.DEDUP only)
    OUTLIER_POSITIONS = 4  # uint64 LE, strictly increasing positions into the code array
    OUTLIER_VALUES = 5  # original values at those positions, little-endian dtype


class Strategy(enum.IntEnum):
    """The strategy the caller asked for (recorded in the header; informational)."""

    FAST = 1
    COMPACT = 2
    AUTO = 3
