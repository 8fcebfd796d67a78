"""Shared test configuration: hypothesis profiles.

Profiles (pick one with ``HYPOTHESIS_PROFILE=<name>``; ``ci`` is the default):

- ``ci``: moderate example counts, no deadline (the first example of a test may pay for
  numba JIT compilation, which takes seconds), deterministic (derandomized) so a CI run
  is reproducible; it still explores the adversarial strategies in tests/strategies.py.
- ``dev``: fewer examples, for a quick local loop.
- ``thorough``: many examples and random seeds, for a nightly or pre-release soak.

Every profile keeps ``deadline=None``: timing is not a property we test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

# tests/ has no __init__.py: make the shared strategies module importable from any rootdir.
sys.path.insert(0, str(Path(__file__).resolve().parent))

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=_SLOW_OK, print_blob=True)
settings.register_profile("dev", max_examples=15, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=_SLOW_OK, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
