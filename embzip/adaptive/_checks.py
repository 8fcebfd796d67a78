"""Argument checks shared by the adaptive-bound values (one clear TypeError / ValueError each)."""

from __future__ import annotations

import math
import numbers


def check_real(name, value, *, positive=True, allow_zero=False):
    """A finite real number (not bool), optionally > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, found {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float's range (10**400)
        value = math.inf if value > 0 else -math.inf
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, found {value!r}")
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, found {value!r}")
    return value


def check_int(name, value, *, minimum=0, maximum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, found {type(value).__name__} {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, found {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, found {value}")
    return value
