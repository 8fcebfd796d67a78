"""Shared checkers for the codec's promises, in the spirit of numcodecs' test checkers: the
bound a frame must carry, and what a decoded array owes its original (used by the codec's and
embzip.comm's property tests)."""

from __future__ import annotations

import math

import numpy as np

import strategies as S


def expected_abs_error(x: np.ndarray, mode: str, value) -> float | None:
    """The resolved bound the header must carry, computed independently of embzip.

    rel: ``rel_error * (max - min)`` over the finite values, in float64. When ``max - min``
    overflows float64 the product is still computed exactly (scaling by 2 is exact), and only
    a product that itself overflows may be clamped to the largest float64. ``None`` means
    there are no finite values (the bound is then unconstrained).
    """
    if mode == "abs":
        return float(value)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return None
    hi, lo = float(finite.max()), float(finite.min())
    rel = float(value)
    bound = rel * (hi - lo)
    if math.isinf(bound):
        bound = 2.0 * (rel * (hi / 2.0 - lo / 2.0))
    if math.isinf(bound):
        bound = float(np.finfo(np.float64).max)
    return bound


def _describe(x, y, idx, bound):
    lines = []
    for i in idx[:8]:
        i = tuple(int(v) for v in i)
        xv, yv = x[i], y[i]
        lines.append(f"  at {i}: original {float(xv)!r} (bits {int(S.bits_of(x)[i]):#x}) decoded "
                     f"{float(yv)!r} (bits {int(S.bits_of(y)[i]):#x}) |err|={abs(float(yv) - float(xv))!r}"
                     f" bound={bound!r}")
    return "\n".join(lines)


def check_decoded(x: np.ndarray, y: np.ndarray, bound: float) -> None:
    """Bound on finite elements, bit-exact NaN/Inf, -0.0 -> a zero; dtype and shape."""
    assert isinstance(y, np.ndarray)
    assert y.dtype == x.dtype, f"dtype {x.dtype} came back as {y.dtype}"
    assert y.shape == x.shape, f"shape {x.shape} came back as {y.shape}"
    finite = np.isfinite(x)
    with np.errstate(over="ignore", invalid="ignore"):
        x64 = x.astype(np.float64)
        y64 = y.astype(np.float64)
        err = np.abs(y64 - x64)
    bad = finite & ~(err <= bound)  # NaN errors count as violations
    assert not bad.any(), (f"{int(bad.sum())} finite elements exceed the bound {bound!r}:\n"
                           + _describe(x, y, np.argwhere(bad), bound))
    nonfinite = ~finite
    diff = nonfinite & (S.bits_of(x) != S.bits_of(y))
    assert not diff.any(), ("NaN/Inf not bit-exact:\n" + _describe(x, y, np.argwhere(diff), bound))
    negzero = (x == 0) & np.signbit(x)
    assert np.all(y[negzero] == 0), "-0.0 did not come back as a zero:\n" + _describe(
        x, y, np.argwhere(negzero & (y != 0)), bound)
