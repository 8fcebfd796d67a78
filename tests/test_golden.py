"""Golden frames of every released format version must decode forever, to the same bits."""

import pathlib

import numpy as np
import pytest

import embzip

GOLDEN = sorted(pathlib.Path(__file__).parent.joinpath("golden").glob("*.ezf"))


def test_golden_frames_exist():
    assert len(GOLDEN) >= 9, "golden frames of format v1.0 are missing"


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_frame_decodes_to_recorded_bits(path):
    frame = path.read_bytes()
    original = np.load(path.with_name(path.stem + ".original.npy"))
    expected = np.load(path.with_name(path.stem + ".decoded.npy"))
    decoded = embzip.decompress(frame)
    assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
    assert decoded.tobytes() == expected.tobytes()
    info = embzip.inspect(frame)
    finite = np.isfinite(original)
    assert np.all(np.abs(decoded[finite].astype(np.float64) - original[finite]) <= info.abs_error)
    assert decoded[~finite].tobytes() == original[~finite].tobytes()
