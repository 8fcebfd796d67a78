"""Deduplication stage: unique quantized rows plus a reference stream (see cpu/dedup.py)."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from .._jit import for_size
from ..cpu import dedup as kernels
from ..errors import CorruptFrameError

__all__ = ["Deduplicated", "deduplicate", "resolve", "expand", "sample_rows", "wanted", "SAMPLE_ROWS"]

#: Up to this many rows, deduplication is always tried; above, only when a sample of that
#: many rows (SAMPLE_RUNS runs of consecutive rows, evenly spread, so that repeats both near
#: and far are seen) holds a repeat: hashing every row of a big array costs time.
SAMPLE_ROWS = 4096
SAMPLE_RUNS = 16
#: Key of the row hashes, drawn per process. The hash only places rows in the table (equal
#: rows are confirmed on their codes), so frames do not depend on it; a key nobody can predict
#: keeps crafted rows from piling into a few slots (quadratic probing; see cpu/dedup.py).
HASH_SEED = np.uint64(int.from_bytes(os.urandom(8), "little"))


def sample_rows(rows: int) -> np.ndarray:
    """Indices of the rows sampled to decide whether an array of ``rows`` rows has repeats.

    Both backends use it, so they reach the same verdict (and so the same frame).
    """
    run = SAMPLE_ROWS // SAMPLE_RUNS
    starts = np.linspace(0, rows - run, SAMPLE_RUNS).astype(np.int64)
    return (starts[:, None] + np.arange(run)).reshape(-1)


def wanted(dedup, shape, sample) -> bool:
    """Whether to look for repeated rows: ``dedup`` True / False decides (a caller that knows
    its data, e.g. embedding lookups, skips the sampling); None asks ``sample()``. Both
    backends decide here, so that they produce the same frame."""
    if dedup is None:
        return sample()
    rows = math.prod(shape[:-1]) if len(shape) >= 2 else 0
    return bool(dedup) and rows >= 2 and shape[-1] > 0


@dataclasses.dataclass
class Deduplicated:
    refs: np.ndarray  # uint32 per row: 0 = next new unique row, k = unique row k - 1
    unique_rows: np.ndarray  # int64 source row of each unique row

    @property
    def unique_count(self) -> int:
        return self.unique_rows.size


def deduplicate(codes: np.ndarray, outlier_mask: np.ndarray) -> Deduplicated:
    """Find identical rows of ``codes`` (rows x cols uint32); rows with outliers stay unique."""
    rows = codes.shape[0]
    hashes = np.empty(rows, dtype=np.uint64)
    has_outlier = np.empty(rows, dtype=np.uint8)
    for_size(kernels.row_hashes, codes.nbytes)(codes, outlier_mask, HASH_SEED, hashes, has_outlier)
    table = np.full(1 << max(1, (2 * rows - 1).bit_length()), -1, dtype=np.int64)
    refs = np.empty(rows, dtype=np.uint32)
    unique_rows = np.empty(rows, dtype=np.int64)
    count = kernels.assign_unique(codes, hashes, has_outlier, table, refs, unique_rows)
    return Deduplicated(refs, unique_rows[:count])


def resolve(refs: np.ndarray, unique_count: int) -> np.ndarray:
    """Row -> unique-row ids from a decoded reference stream; CorruptFrameError if inconsistent.

    The ids overwrite ``refs`` when they fit in it (a writeable uint32 stream, fewer than
    2**32 unique rows; each reference is read before its id is written): a decoder then needs
    4 bytes of working memory per row here instead of 12.
    """
    in_place = refs.dtype == np.uint32 and refs.flags.writeable and unique_count <= 2**32
    row_ids = refs if in_place else np.empty(refs.size, dtype=np.int64)
    bad = kernels.resolve_refs(refs, unique_count, row_ids)
    if bad >= 0:
        raise CorruptFrameError(
            f"row index stream is inconsistent at row {bad} of {refs.size} ({unique_count} unique rows)")
    return row_ids


def expand(unique_values: np.ndarray, row_ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (rows x cols) with the unique rows each row refers to."""
    for_size(kernels.expand_rows, out.nbytes)(unique_values, row_ids, out)
    return out
