"""Property tests for embzip.adaptive: schedules, table classes, policies, JSON round trip."""

import json
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from embzip.adaptive import CLASSES, DEFAULT_CLASS_BOUNDS, Policy, Schedule, TableClasses  # noqa: E402

pos = st.floats(min_value=1e-6, max_value=1e3, allow_nan=False, allow_infinity=False)
iters = st.integers(min_value=0, max_value=10**7)
kinds = st.sampled_from(["step", "linear", "log", "constant"])


@st.composite
def schedules(draw):
    kind = draw(kinds)
    end = draw(pos)
    start = end if kind == "constant" else end * draw(st.floats(min_value=1.0, max_value=100.0))
    steps = draw(st.integers(1, 64))
    return Schedule(kind, start, end, steps, draw(st.integers(steps if kind == "step" else 1, 10**6)))


@st.composite
def class_bounds(draw):
    b = sorted(draw(st.lists(pos, min_size=3, max_size=3)))
    return dict(zip(CLASSES, b))


@st.composite
def table_classes(draw):
    n = draw(st.integers(1, 30))
    assignment = draw(st.lists(st.sampled_from(CLASSES), min_size=n, max_size=n))
    names = draw(st.none() | st.just([f"t{i}" for i in range(n)]))
    return TableClasses(assignment, draw(class_bounds()), names)


@st.composite
def policies(draw):
    return Policy(draw(table_classes()), draw(schedules()), draw(st.sampled_from(["rel", "abs"])))


# -- schedules -----------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(schedules(), iters, iters)
def test_schedule_monotone_non_increasing(s, a, b):
    lo, hi = min(a, b), max(a, b)
    assert s(hi) <= s(lo)


@settings(max_examples=200, deadline=None)
@given(schedules(), iters)
def test_schedule_within_start_end(s, i):
    f = s(i)
    assert s.end <= f <= s.start and f > 0
    assert s(0) == s.start
    assert s(s.horizon) == s.end and s(s.horizon + i) == s.end


def test_default_step_schedule():
    s = Schedule()
    assert (s.kind, s.start, s.end, s.steps, s.horizon) == ("step", 2.0, 1.0, 10, 65536)
    values = [s(i) for i in range(0, 65536, 128)]
    assert sorted(set(values), reverse=True) == [2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1]
    assert s(65535) == 1.1 and s(65536) == 1.0 and s(10**9) == 1.0


def test_linear_and_log_shapes():
    lin, lg = Schedule.linear(horizon=100), Schedule.log(horizon=100)
    assert lin(50) == 1.5
    assert lg(50) < lin(50)  # log decays faster early
    assert Schedule.constant(3.0)(12345) == 3.0


@pytest.mark.parametrize("kwargs, exc", [
    (dict(kind="cosine"), ValueError), (dict(kind=3), TypeError),
    (dict(start=1.0, end=2.0), ValueError), (dict(end=0.0), ValueError), (dict(start=-1.0), ValueError),
    (dict(start=float("inf")), ValueError), (dict(start=float("nan")), ValueError),
    (dict(start="2"), TypeError), (dict(start=True), TypeError),
    (dict(steps=0), ValueError), (dict(steps=1.5), TypeError), (dict(horizon=0), ValueError),
    (dict(kind="constant", start=2.0, end=1.0), ValueError),
])
def test_schedule_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        Schedule(**kwargs)


@pytest.mark.parametrize("it, exc", [(-1, ValueError), (1.0, TypeError), ("3", TypeError), (None, TypeError)])
def test_schedule_bad_iteration(it, exc):
    with pytest.raises(exc):
        Schedule()(it)


# -- table classes ---------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1e9, allow_nan=False), min_size=1, max_size=40), st.sampled_from(["tight", "loose"]))
def test_by_size_orders_classes(sizes, largest):
    t = TableClasses.by_size(sizes, largest=largest)
    rank = {"tight": 0, "base": 1, "loose": 2} if largest == "tight" else {"tight": 2, "base": 1, "loose": 0}
    # a larger table never gets a class further from `largest` than a smaller one
    for i in range(len(sizes)):
        for j in range(len(sizes)):
            if sizes[i] > sizes[j]:
                assert rank[t.assignment[i]] <= rank[t.assignment[j]]


def test_thresholds_settable():
    t = TableClasses.by_frequency([1, 10, 100, 1000], thresholds=(5, 500))
    assert t.assignment == ("loose", "base", "base", "tight")
    assert t.bounds().tolist() == [0.05, 0.03, 0.03, 0.01]
    assert TableClasses.by_size([1, 2, 3], thresholds=(0, 0)).assignment == ("tight",) * 3


@pytest.mark.parametrize("call, exc", [
    (lambda: TableClasses([]), ValueError),
    (lambda: TableClasses("tight"), TypeError),
    (lambda: TableClasses(["medium"]), ValueError),
    (lambda: TableClasses([1]), TypeError),
    (lambda: TableClasses(["base"], {"tight": 0.1}), ValueError),
    (lambda: TableClasses(["base"], {"tight": 0.05, "base": 0.03, "loose": 0.01}), ValueError),
    (lambda: TableClasses(["base"], {"tight": 0.0, "base": 0.03, "loose": 0.05}), ValueError),
    (lambda: TableClasses(["base"], [0.01, 0.03, 0.05]), TypeError),
    (lambda: TableClasses(["base"], names=["a", "b"]), ValueError),
    (lambda: TableClasses(["base", "base"], names=["a", "a"]), ValueError),
    (lambda: TableClasses.by_size([]), ValueError),
    (lambda: TableClasses.by_size([1, -2]), ValueError),
    (lambda: TableClasses.by_size(["x"]), TypeError),
    (lambda: TableClasses.by_size([1, 2], thresholds=(5, 1)), ValueError),
    (lambda: TableClasses.by_size([1, 2], thresholds=5), TypeError),
    (lambda: TableClasses.by_size([1, 2], largest="base"), ValueError),
    (lambda: TableClasses(["base"]).bound(1), ValueError),
    (lambda: TableClasses(["base"]).bound("nope"), ValueError),
    (lambda: TableClasses(["base"]).bound(0.5), TypeError),
])
def test_table_classes_bad_arguments(call, exc):
    with pytest.raises(exc):
        call()


# -- policies --------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(policies(), iters)
def test_policy_bounds_positive_and_in_range(p, i):
    lo, hi = p.range()
    b = p.bounds(i)
    assert b.shape == (p.n_tables,) and b.dtype == np.float64
    assert np.all(b > 0) and np.all(np.isfinite(b))
    assert np.all(b >= lo * (1 - 1e-9)) and np.all(b <= hi * (1 + 1e-9))
    assert lo <= p.default(i) <= hi  # (range() covers default() too, a table in base or not)
    assert min(p.tables.class_bounds.values()) * p.schedule.end * (1 - 1e-9) <= lo
    assert hi <= max(p.tables.class_bounds.values()) * p.schedule.start * (1 + 1e-9)
    for t in range(p.n_tables):
        assert p.bound(t, i) == b[t]
        if p.tables.names is not None:
            assert p.bound(p.tables.names[t], i) == b[t]


@settings(max_examples=100, deadline=None)
@given(policies(), iters, iters)
def test_policy_monotone_in_iteration(p, a, c):
    lo, hi = min(a, c), max(a, c)
    assert np.all(p.bounds(hi) <= p.bounds(lo))


@settings(max_examples=200, deadline=None)
@given(policies())
def test_json_round_trip(p):
    text = p.to_json()
    json.loads(text)  # plain JSON
    q = Policy.from_json(text)
    assert q == p
    assert q.to_json() == text
    assert np.array_equal(q.bounds(0), p.bounds(0))


@settings(max_examples=200, deadline=None)
@given(policies(), st.floats(min_value=1e-3, max_value=1e3), iters)
def test_scaled_policy_scales_every_bound(p, factor, i):
    q = p.scaled(factor)
    assert q.tables.assignment == p.tables.assignment and q.schedule == p.schedule and q.mode == p.mode
    assert np.allclose(q.bounds(i), p.bounds(i) * factor, rtol=1e-9, atol=0)
    assert Policy.from_json(q.to_json()) == q


@pytest.mark.parametrize("factor", [0, -1.0, float("nan"), float("inf"), "0.1"])
def test_scaled_policy_bad_factor(factor):
    with pytest.raises((TypeError, ValueError)):
        Policy.fixed(2).scaled(factor)


def test_fixed_and_dual():
    f = Policy.fixed(4, rel=0.02)
    assert f.bounds(0).tolist() == [0.02] * 4 and f.bounds(10**6).tolist() == [0.02] * 4
    d = Policy.dual([10, 1000, 10**6], by="frequency", thresholds=(100, 10**5))
    assert d.bounds(0).tolist() == [0.1, 0.06, 0.02]
    assert d.bounds(65536).tolist() == [DEFAULT_CLASS_BOUNDS[c] for c in ("loose", "base", "tight")]
    assert d.default(0) == 0.06 and d.range() == (0.01, 0.1)


@pytest.mark.parametrize("call, exc", [
    (lambda: Policy([0.01]), TypeError),
    (lambda: Policy(TableClasses(["base"]), "step"), TypeError),
    (lambda: Policy(TableClasses(["base"]), mode="pw_rel"), ValueError),
    (lambda: Policy.fixed(0), ValueError),
    (lambda: Policy.fixed(2, rel=-0.1), ValueError),
    (lambda: Policy.dual([1, 2], by="name"), ValueError),
    (lambda: Policy.from_json("{"), ValueError),
    (lambda: Policy.from_json(b"[]"), ValueError),  # JSON, but not a policy: the text is wrong
    (lambda: Policy.from_json("null"), ValueError),
    (lambda: Policy.from_json("[" * 100_000), ValueError),  # json's RecursionError
    (lambda: Policy.from_json(Policy.fixed(2).to_json().replace('"version": 1', '"version": true')), ValueError),
    (lambda: Policy.from_json(Policy.fixed(2).to_json().replace('"version": 1', '"version": 1.0')), ValueError),
    (lambda: Policy.from_json(Policy.fixed(2).to_json().replace('"start": 1.0', '"start": "1"')), ValueError),
    (lambda: Policy.from_json(Policy.fixed(2).to_json().replace('"horizon"', '"horizn"')), ValueError),
    (lambda: Policy.from_json(Policy.fixed(2).to_json().replace('"names"', '"nmes"')), ValueError),
    (lambda: Policy.from_json(Policy.fixed(2).to_json().replace('"mode"', '"mdoe"')), ValueError),
    (lambda: Policy.from_json(3), TypeError),
    (lambda: Policy.from_json('{"format": "other"}'), ValueError),
    (lambda: Policy.from_json('{"format": "embzip.adaptive", "version": 99}'), ValueError),
    (lambda: Policy.from_json('{"format": "embzip.adaptive", "version": 1}'), ValueError),
    (lambda: Policy.from_json(Policy.fixed(2).to_json().replace('"constant"', '"cosine"')), ValueError),
    (lambda: Policy.fixed(2).bound(0, -5), ValueError),
])
def test_policy_bad_arguments(call, exc):
    with pytest.raises(exc):
        call()


def test_policy_feeds_table_layout():
    comm = pytest.importorskip("embzip.comm")
    p = Policy.dual([10, 10**4, 10**7], thresholds=(100, 10**6))
    layout = comm.TableLayout(8, bounds=p.bounds(0))
    assert layout.tables == 3 and math.isclose(float(layout.bounds[2]), 0.02)


# -- what each level accepts, found by review ---------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: Policy(TableClasses(["base"], {c: 1e-200 for c in CLASSES}), Schedule.constant(1e-200)),
    lambda: Policy(TableClasses(["base"], {c: 1e200 for c in CLASSES}), Schedule.constant(1e200)),
    lambda: Policy(TableClasses(["tight", "loose"], {"tight": 1e-300, "base": 1.0, "loose": 1e300}),
                   Schedule.step(start=1e10, end=1e-30)),
    lambda: Policy.fixed(2, rel=1e-300).scaled(1e-300),
    lambda: Policy.fixed(2, rel=1e300).scaled(1e300),
])
def test_a_policy_whose_bounds_reach_zero_or_infinity_is_refused(make):
    """Each factor is finite and > 0, their product is not: refused when made, not a 0.0 or
    inf bound at some iteration."""
    with pytest.raises(ValueError, match="finite|> 0"):
        make()


@pytest.mark.parametrize("make", [
    lambda: Schedule.step(start=10**400), lambda: Schedule.log(horizon=10**400),
    lambda: Schedule.step(horizon=2**63), lambda: Policy.fixed(2, rel=10**400),
    lambda: Policy.fixed(2).scaled(10**400), lambda: TableClasses.by_size([10**400, 1]),
    lambda: TableClasses.by_size([1, 2], thresholds=(-10**400, 1)),
])
def test_integers_beyond_floats_are_a_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_a_step_schedule_makes_the_drops_it_is_asked_for():
    s = Schedule.step(start=2.0, end=1.0, steps=10, horizon=10)
    assert [s(i) for i in range(11)] == [2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0]
    with pytest.raises(ValueError, match="steps <= horizon"):
        Schedule.step(steps=100, horizon=10)  # (it made 10 drops of 0.1, not 100)


def test_class_bounds_cannot_change_after_construction():
    import copy
    import pickle

    t = TableClasses(["base", "loose"], {"tight": 0.01, "base": 0.02, "loose": 0.04}, ["a", "b"])
    before = hash(t)
    with pytest.raises(TypeError):
        t.class_bounds["base"] = -1.0
    with pytest.raises(TypeError):
        DEFAULT_CLASS_BOUNDS["base"] = -1.0
    assert t.bound(0) == 0.02 and hash(t) == before and DEFAULT_CLASS_BOUNDS["base"] == 0.03
    p = Policy(t, Schedule.linear(horizon=7))
    for copied in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p), copy.copy(p)):
        assert copied == p and hash(copied.tables) == before
        with pytest.raises(TypeError):
            copied.tables.class_bounds["base"] = 1.0


def test_table_class_json_must_say_what_it_means():
    """An unknown (misspelt) key, or class_bounds that are there but empty, is an error, not
    the default; left out, class_bounds and names take their defaults."""
    assert TableClasses.from_dict({"assignment": ["base"]}) == TableClasses(["base"])
    for bad in ({"assignment": ["base"], "class_bounds": {}}, {"assignment": ["base"], "clas_bounds": None}):
        with pytest.raises(ValueError):
            TableClasses.from_dict(bad)
    with pytest.raises(ValueError, match="horizn"):
        Schedule.from_dict({"kind": "step", "horizn": 100})


@pytest.mark.parametrize("sizes, expected", [
    ([1, 1, 1, 1000], ("base", "base", "base", "tight")),
    ([5, 5, 5], ("base", "base", "base")),
    ([1, 1000, 1000, 1000], ("loose", "base", "base", "base")),
    ([2, 30, 40_000], ("loose", "base", "tight")),
])
def test_default_thresholds_put_tied_tables_in_one_class(sizes, expected):
    assert TableClasses.by_size(sizes).assignment == expected
    flipped = {"tight": "loose", "loose": "tight", "base": "base"}
    assert TableClasses.by_frequency(sizes, hottest="loose").assignment == tuple(flipped[c] for c in expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6) | st.floats(0, 1e9), min_size=1, max_size=12),
       st.none() | st.tuples(st.floats(0, 10), st.floats(0, 10)).map(sorted))
def test_classes_are_monotone_in_the_metric(metrics, thresholds):
    """A larger table never gets a class further from ``largest`` than a smaller one's, and
    equal tables share a class, with default and with given thresholds."""
    order = {"loose": 0, "base": 1, "tight": 2}
    got = TableClasses.by_size(metrics, thresholds).assignment
    for a, ca in zip(metrics, got):
        for b, cb in zip(metrics, got):
            if a == b:
                assert ca == cb
            elif a > b:
                assert order[ca] >= order[cb]


def test_range_covers_the_default_when_no_table_is_in_base():
    p = Policy.dual([1, 2, 3], thresholds=(0, 0))  # every table tight
    assert p.tables.assignment == ("tight",) * 3
    lo, hi = p.range()
    assert lo <= p.default(0) <= hi and lo <= p.default(10**9) <= hi
