"""Store a slice of the real GloVe 6B-50d table in a zarr array compressed by embzip.

Writes the first ROWS rows (most frequent words first) into a zarr (format 2) array whose
chunks go through the ``embzip`` numcodecs codec, reopens the store from its path alone
(numcodecs finds the codec through its ``numcodecs.codecs`` entry point), reads the rows
back and checks every value is within the bound.

    pip install 'embzip[bench,zarr]'
    python examples/zarr_glove.py [STORE_DIR] [--rows N] [--abs-error X]

Exit status 0 when the bound held, 1 when it did not.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import zarr

from embzip import compare
from embzip.codec import Embzip


def store_and_check(path: str, rows: int = 20_000, abs_error: float = 1e-3) -> dict:
    """Write GloVe rows ``0..rows`` to a zarr array at ``path``, read them back, check them."""
    table = np.asarray(compare.glove_table()[:rows], dtype=np.float32)
    array = zarr.create_array(store=path, shape=table.shape, chunks=(4096, table.shape[1]),
                              dtype=table.dtype, zarr_format=2,
                              compressors=Embzip(abs_error=abs_error), overwrite=True)
    array[:] = table
    reopened = zarr.open_array(path, mode="r")  # the codec comes back from the stored config
    restored = reopened[:]
    stored = sum(os.path.getsize(os.path.join(root, name))
                 for root, _, names in os.walk(path) for name in names)
    max_error = float(np.abs(restored.astype(np.float64) - table).max())
    return {"rows": rows, "raw_bytes": table.nbytes, "stored_bytes": stored,
            "ratio": table.nbytes / stored, "max_error": max_error,
            "within_bound": max_error <= abs_error, "codec": repr(reopened.compressors[0])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", nargs="?", help="store directory (default: a temporary one)")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--abs-error", type=float, default=1e-3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.store or os.path.join(tmp, "glove.zarr")
        result = store_and_check(path, args.rows, args.abs_error)
    print(f"{result['rows']} GloVe rows: {result['raw_bytes']} bytes -> {result['stored_bytes']} "
          f"stored (ratio {result['ratio']:.2f}x, metadata included) with {result['codec']}")
    print(f"max error {result['max_error']:.6g} <= {args.abs_error:g}: {result['within_bound']}")
    return 0 if result["within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
