"""Adaptive error bounds: per table (classes) and per iteration (schedules).

The seed paper (Feng et al., SC'24, "dual-level adaptive lossy compression") sets the bound of
each embedding table's all-to-all payload from two levels:

* **table-wise**: every table is put in a class, ``tight`` / ``base`` / ``loose``, by its size
  or its access frequency; each class has a relative bound (default 0.01 / 0.03 / 0.05 of the
  value range, SZ's "REL" mode);
* **iteration-wise**: a schedule multiplies the bound, loose early in training and tighter later
  (default: step decay from 2x to 1x in 10 steps over the first 65,536 iterations).

:class:`Policy` combines both and answers ``bound(table, iteration)``; ``bounds(iteration)`` gives
the vector for every table, ready for ``embzip.comm.TableLayout(dim, bounds=...)``. All three
classes are small immutable values that round-trip through JSON (``to_json`` / ``from_json``), so
a job can log the policy it used and a later job can reload it.

Examples
--------
>>> from embzip.adaptive import Policy, Schedule, TableClasses
>>> tables = TableClasses.by_size([10, 5_000, 2_000_000], thresholds=(1_000, 1_000_000))
>>> tables.assignment
('loose', 'base', 'tight')
>>> policy = Policy(tables, Schedule.step())
>>> policy.bound(2, 0)            # tight table, first iteration: 0.01 * 2
0.02
>>> policy.bound(2, 100_000)      # after the decay: 0.01 * 1
0.01
>>> Policy.from_json(policy.to_json()) == policy
True
"""

from __future__ import annotations

from .policy import Policy
from .schedule import Schedule
from .tables import CLASSES, DEFAULT_CLASS_BOUNDS, TableClasses

__all__ = ["CLASSES", "DEFAULT_CLASS_BOUNDS", "TableClasses", "Schedule", "Policy"]
