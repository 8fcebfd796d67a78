"""Write the golden frames of the current format version (run once per format version).

Existing files are never overwritten: a golden frame, once committed, must decode forever.
Usage: python tests/golden/make_golden.py
"""

from __future__ import annotations

import pathlib

import numpy as np

import embzip
from embzip.format.ids import MAJOR_VERSION, MINOR_VERSION

HERE = pathlib.Path(__file__).parent


def cases():
    rng = np.random.default_rng(20261126)
    table = rng.normal(0, 0.4, size=(64, 16)).astype(np.float32)
    batch = table[np.minimum(rng.zipf(1.3, 300), 64) - 1]  # repeated rows: the dedup path
    batch[3, 2] = np.nan
    batch[5, 0] = np.inf
    batch[7, 1] = np.float32(3e38)
    wide = rng.normal(0, 1, 3000) * np.float64(10) ** rng.integers(-5, 6, 3000)
    yield "f32_dedup_fast", batch, dict(rel_error=0.01, strategy="fast")
    yield "f32_dedup_compact", batch, dict(rel_error=0.01, strategy="compact")
    yield "f32_1d_fast", rng.normal(0, 0.01, 1000).astype(np.float32), dict(abs_error=1e-3, strategy="fast")
    yield "f32_1d_compact", rng.normal(0, 0.01, 5000).astype(np.float32), dict(abs_error=1e-3, strategy="compact")
    yield "f64_wide_auto", wide.reshape(30, 100), dict(abs_error=1e-2, strategy="auto")
    yield "f32_raw_tiny_bound", rng.normal(0, 1, 50).astype(np.float32), dict(abs_error=1e-30)
    yield "f32_scalar", np.array(1.5, dtype=np.float32), dict(abs_error=0.1)
    yield "f64_empty", np.zeros((0, 4)), dict(rel_error=0.05)
    yield "f32_constant_rel", np.full((10, 3), 2.25, dtype=np.float32), dict(rel_error=0.01)


def main() -> None:
    version = f"v{MAJOR_VERSION}.{MINOR_VERSION}"
    for name, array, kwargs in cases():
        stem = f"{version}_{name}"  # not Path.with_suffix: "v1.0_x" already has a dot
        if (HERE / f"{stem}.ezf").exists():
            continue
        frame = embzip.compress(array, **kwargs)
        (HERE / f"{stem}.ezf").write_bytes(frame.tobytes())
        np.save(HERE / f"{stem}.original.npy", array)
        np.save(HERE / f"{stem}.decoded.npy", embzip.decompress(frame))
        print(f"wrote {stem}: {frame.nbytes} bytes, stages {embzip.inspect(frame).stages}")


if __name__ == "__main__":
    main()
