"""``compress(..., dedup=None|True|False)``: who decides whether repeated rows are stored once.

The bound, NaN/Inf bits, shapes and dtypes must hold whatever the choice, and the choice must
be visible in the frame (``inspect(frame).stages``) exactly as asked.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import embzip
import strategies as S


def _bound_holds(x, y, abs_error):
    finite = np.isfinite(x)
    assert np.array_equal(S.bits_of(x[~finite]), S.bits_of(y[~finite]))
    diff = np.abs(y[finite].astype(np.float64) - x[finite].astype(np.float64))
    assert diff.size == 0 or diff.max() <= abs_error


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(S.FLOATS), strategy=st.sampled_from(S.STRATEGIES),
       dedup=st.sampled_from([None, True, False]))
def test_bound_and_specials_hold_for_every_dedup_choice(data, dtype, strategy, dedup):
    x = data.draw(S.duplicate_row_arrays(dtype, 1e-2))
    frame = embzip.compress(x, abs_error=1e-2, strategy=strategy, dedup=dedup)
    y = embzip.decompress(frame)
    assert y.shape == x.shape and y.dtype == x.dtype
    _bound_holds(x, y, 1e-2)
    if dedup is False:
        assert "dedup" not in embzip.inspect(frame).stages


def _far_repeats(rows=20000, cols=4):
    """200 repeated rows, none of them (nor their originals) among the rows the sample reads."""
    from embzip.stages.dedup import sample_rows

    rng = np.random.default_rng(11)
    x = rng.normal(size=(rows, cols)).astype(np.float32)
    unseen = np.setdiff1d(np.arange(rows), sample_rows(rows))
    x[unseen[-200:]] = x[unseen[:200]]
    return x


def test_sampling_misses_far_repeats_true_finds_them_false_never_looks():
    x = _far_repeats()
    sampled = embzip.inspect(embzip.compress(x, abs_error=1e-3, strategy="fast"))
    forced = embzip.inspect(embzip.compress(x, abs_error=1e-3, strategy="fast", dedup=True))
    never = embzip.inspect(embzip.compress(x, abs_error=1e-3, strategy="fast", dedup=False))
    assert "dedup" not in sampled.stages and "dedup" not in never.stages
    assert "dedup" in forced.stages and forced.unique_rows == x.shape[0] - 200
    assert forced.frame_size < sampled.frame_size


def test_dedup_true_without_rows_to_share_is_harmless():
    for x in (np.arange(10, dtype=np.float32), np.zeros((1, 5), np.float32), np.zeros((3, 0), np.float32),
              np.float64(2.5).reshape(())):
        y = embzip.decompress(embzip.compress(x, abs_error=0.1, dedup=True))
        assert y.shape == x.shape and np.all(np.abs(y - x) <= 0.1)
    unique = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)  # nothing repeats
    info = embzip.inspect(embzip.compress(unique, abs_error=1e-4, dedup=True))
    assert "dedup" not in info.stages  # looked, found nothing, stored plainly


@pytest.mark.parametrize("bad", ["yes", 1, 0.0, [True]])
def test_dedup_must_be_none_or_bool(bad):
    with pytest.raises(TypeError, match="dedup must be None, True or False"):
        embzip.compress(np.zeros((4, 4), np.float32), abs_error=0.1, dedup=bad)
