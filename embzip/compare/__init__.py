"""Side-by-side comparison of embzip with other lossy compressors, on the same data.

Used by ``embzip demo`` and ``bench/compare.py``. Every method compresses the same array
under the same absolute bound (a ``rel`` bound is resolved once, as ``rel * (max - min)`` of
the finite values, exactly like embzip does), in the same process, and is timed the same way:
one warm-up run (it pays numba's compilation), then the median of ``repeat`` runs.
Max error is measured in float64 on the decoded values; methods without a bound (fp16, int8)
are still shown against it, so users see that they break it.

Examples
--------
>>> from embzip import compare
>>> data = compare.synthetic(nbytes=1 << 20)
>>> rows = compare.run_comparison({"synthetic": data}, [compare.BoundSpec("rel", 0.01)],
...                               methods=["fp16"], repeat=1)
>>> rows[0]["method"], rows[0]["ratio"]
('fp16 cast', 2.0)
"""

from .datasets import (
    GLOVE_FILE,
    GLOVE_PACKAGE,
    GloveUnavailableError,
    MiB,
    glove_in_order,
    glove_table,
    glove_zipf_batch,
    glove_zipf_batch_clipped,
    synthetic,
    synthetic_zipf_batch,
    zipf_indices,
)
from .methods import (
    DEFAULT_BOUNDS,
    METHOD_BY_KEY,
    METHODS,
    BoundSpec,
    Method,
    measure,
    missing_requirement,
    run_comparison,
    select_methods,
)
from .report import COLUMNS, describe, format_markdown, format_ratio, format_table, json_ready

__all__ = [
    "BoundSpec", "Method", "METHODS", "DEFAULT_BOUNDS", "glove_table", "glove_zipf_batch",
    "glove_zipf_batch_clipped", "glove_in_order", "synthetic", "synthetic_zipf_batch",
    "run_comparison", "format_table", "format_markdown", "json_ready", "describe",
    "GloveUnavailableError", "zipf_indices", "measure", "select_methods", "missing_requirement",
    "METHOD_BY_KEY", "format_ratio", "COLUMNS", "MiB", "GLOVE_PACKAGE", "GLOVE_FILE",
]
