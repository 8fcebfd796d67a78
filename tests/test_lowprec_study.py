"""Model-level study: NE/AUC definitions, the numpy DLRM forward, sensitivity and search."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from embzip.lowprec import DLRM, auc, forward, layer_bytes, normalized_entropy, study

F32 = np.float32


def _model(seed=0, dim=4, rows=(40, 7), hidden=8):
    rng = np.random.default_rng(seed)
    f = len(rows) + 1
    emb = [rng.standard_normal((r, dim)).astype(F32) * 0.5 for r in rows]
    def w(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(F32)

    bottom = [(w(hidden, 3), w(hidden) * 0.2), (w(dim, hidden), np.zeros(dim, F32))]
    top = [(w(hidden, dim + f * (f - 1) // 2), np.zeros(hidden, F32)),
           (w(1, hidden), np.zeros(1, F32))]
    return DLRM(emb, bottom, top, table_names=[f"t{i}" for i in range(len(rows))])


def _data(model, n=600, seed=1):
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, 3)).astype(F32)
    ids = rng.integers(0, model.embeddings[0].shape[0], n)
    sizes = rng.integers(0, 4, n)  # a multi-hot feature with empty bags
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    bag = rng.integers(0, model.embeddings[1].shape[0], int(sizes.sum()))
    data = {"dense": dense, "sparse": [ids, (bag, offsets)], "labels": np.zeros(n)}
    z = forward(model, dense, [(ids, np.arange(n)), (bag, offsets)], "fp32")
    data["labels"] = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32)
    return data


def _reference_forward(model, dense, sparse):
    # straight from the definition, float64, no lowprec code
    h = dense.astype(np.float64)
    for w, b in model.bottom:
        h = np.maximum(h @ w.T + b, 0)
    feats = [h]
    for t, (idx, offs) in zip(model.embeddings, sparse):
        ends = np.append(offs[1:], idx.size)
        feats.append(np.stack([t[idx[s:e]].sum(0) for s, e in zip(offs, ends)]))
    pairs = [(feats[i] * feats[j]).sum(1, keepdims=True)  # np.tril_indices(F, -1) order
             for i in range(len(feats)) for j in range(i)]
    x = np.concatenate([h] + pairs, 1)
    for i, (w, b) in enumerate(model.top):
        x = x @ w.T + b
        if i < len(model.top) - 1:
            x = np.maximum(x, 0)
    return x[:, 0]


def test_forward_matches_definition():
    m = _model()
    d = _data(m)
    sparse = [(d["sparse"][0], np.arange(600)), d["sparse"][1]]
    np.testing.assert_allclose(forward(m, d["dense"], sparse, "fp32"),
                               _reference_forward(m, d["dense"], sparse), rtol=1e-4, atol=1e-4)


@given(st.integers(2, 200), st.integers(0, 2**31))
def test_auc_is_the_pairwise_win_rate(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    s = rng.integers(0, 6, n).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    want = ((pos[:, None] > neg).sum() + 0.5 * (pos[:, None] == neg).sum()) / (pos.size * neg.size)
    assert auc(y, s) == pytest.approx(want, abs=1e-12)


@given(st.integers(2, 300), st.integers(0, 2**31))
def test_ne_of_the_base_rate_predictor_is_one(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    p = y.mean()
    assert normalized_entropy(y, np.full(n, np.log(p / (1 - p)))) == pytest.approx(1.0, rel=1e-9)
    assert normalized_entropy(y, np.where(y == 1, 30.0, -30.0)) < 1e-6  # perfect predictions


def test_metric_errors():
    with pytest.raises(ValueError, match="undefined when every label is 1"):
        normalized_entropy([1, 1], [0.0, 0.0])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        normalized_entropy([0, 2], [0.0, 0.0])
    with pytest.raises(ValueError, match="both classes"):
        auc([0, 0], [0.1, 0.2])


def test_layer_bytes():
    m = _model(rows=(40, 7), dim=4)
    assert layer_bytes(m, "emb:t0", "fp32") == 40 * 4 * 4
    assert layer_bytes(m, "emb:t0", "int8") == 40 * (4 + 8)
    assert layer_bytes(m, "emb:t0", "int4") == 40 * (2 + 4)
    assert layer_bytes(m, "emb:t0", "int2") == 40 * (1 + 4)
    assert layer_bytes(m, "bottom0", "fp16") == 8 * 3 * 2 + 8 * 4
    assert layer_bytes(m, "bottom0", "int8") == 8 * 3 + 8 * 4 + 4


def test_study_table_sensitivity_and_search():
    m = _model()
    d = _data(m)
    budget = 0.002
    r = study(m, d, budget=budget, batch_size=256)
    names = [row["name"] for row in r.rows]
    assert names == ["fp32", "fp16", "bf16", "int8 MLP", "8-bit emb", "4-bit emb", "2-bit emb"]
    base = r.rows[0]
    assert base["ne_rel"] == 0 and 0 < base["ne"] < 1.5 and 0.5 < base["auc"] <= 1
    bytes_ = {row["name"]: row["bytes"] for row in r.rows}
    assert bytes_["fp16"] < bytes_["fp32"]
    assert bytes_["2-bit emb"] < bytes_["4-bit emb"] < bytes_["8-bit emb"]
    # one sensitivity row per (layer, non-fp32 precision)
    assert len(r.sensitivity) == 2 * 5 + 4 * 3
    # the search result is within budget, never bigger than fp32, and consistent on re-evaluation
    s = r.search
    assert s["ne_rel"] <= budget and s["bytes"] <= base["bytes"]
    # greedy stopping rule: no further move that saves bytes (among those whose solo
    # sensitivity is within budget) fits the budget
    solo = {(x["layer"], x["precision"]): x["ne_rel"] for x in r.sensitivity}
    moves = {}
    for layer in m.layers():
        for p in m.precisions(layer):
            smaller = layer_bytes(m, layer, p) < layer_bytes(m, layer, s["config"][layer])
            if smaller and solo[layer, p] <= budget:
                moves[f"{layer}={p}"] = dict(s["config"], **{layer: p})
    check = study(m, d, configs=dict(mix=s["config"], **moves), search=False, batch_size=256)
    again = check.rows[1]
    assert again["ne"] == s["ne"] and again["bytes"] == s["bytes"]
    assert all(row["ne_rel"] > budget for row in check.rows[2:])
    text = str(r)
    assert "searched mix" in text and "per-layer sensitivity" in text


def test_study_argument_errors():
    m = _model()
    d = _data(m)
    with pytest.raises(TypeError, match="model must be a DLRM"):
        study({}, d)
    with pytest.raises(ValueError, match="budget must be a non-negative number"):
        study(m, d, budget=-1)
    with pytest.raises(ValueError, match="budget must be a non-negative number"):
        study(m, d, budget=float("nan"))
    with pytest.raises(TypeError, match="budget must be a real number"):
        study(m, d, budget=True)
    with pytest.raises(ValueError, match=r"need 2 sparse features, found 1"):
        study(m, dict(d, sparse=d["sparse"][:1]))
    with pytest.raises(ValueError, match=r"ids must be in \[0, 40\)"):
        study(m, dict(d, sparse=[d["sparse"][0] + 100, d["sparse"][1]]))
    with pytest.raises(ValueError, match="unknown layers"):
        study(m, d, configs={"x": {"nope": "fp16"}})
    with pytest.raises(ValueError, match=r"emb:t0: precision must be one of .* found 'int3'"):
        study(m, d, configs={"x": {"emb:t0": "int3"}})


def test_dlrm_shape_errors():
    m = _model()
    with pytest.raises(ValueError, match="top0 must take 7 inputs"):
        DLRM(m.embeddings, m.bottom, [(np.ones((1, 6), F32), np.zeros(1, F32))])
    with pytest.raises(ValueError, match="bottom MLP must end with dim=4 outputs"):
        DLRM(m.embeddings, m.bottom[:1], m.top)


def test_import_does_not_pull_torch():
    code = "import sys, embzip.lowprec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docstring_examples_run():
    import doctest
    import importlib

    for name in ("rowwise", "bag", "casts", "linear", "model", "study"):
        mod = importlib.import_module(f"embzip.lowprec.{name}")
        result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, f"{name}: {result.failed} docstring examples failed"


def test_table_names_are_unique_and_layer_bytes_checks_its_arguments():
    m = _model()
    with pytest.raises(ValueError, match="table_names must be unique"):
        DLRM(m.embeddings, m.bottom, m.top, table_names=["a", "a"])  # (layer_bytes gave a's for both)
    with pytest.raises(TypeError, match="table_names must be str"):
        DLRM(m.embeddings, m.bottom, m.top, table_names=["a", 1])
    assert layer_bytes(m, "emb:t1", "int8") == 7 * (4 + 8)
    for layer, prec, match in (("emb:zz", "int8", "unknown layer"), ("bottom9", "fp16", "unknown layer"),
                               ("emb:t0", "zz", "precision must be one of"), ("top0", "int4", "precision must be")):
        with pytest.raises(ValueError, match=match):
            layer_bytes(m, layer, prec)


@pytest.mark.parametrize("ids, offsets, match", [
    ([0, -1], [0, 1], r"indices must be in \[0, 7\) .* found -1"),  # (-1 read the last row of a float table)
    ([0, 7], [0, 1], r"indices must be in \[0, 7\) .* found 7"),
    ([0, 1, 2], [0, 2, 1], "non-decreasing"),
    ([0, 1], [0], r"offsets give 1 bags for 2 samples"),
    ([0.0, 1.0], [0, 1], "indices must be an integer array"),
])
def test_every_table_precision_refuses_bad_lookups_alike(ids, offsets, match):
    """The float tables (fp32 / fp16 / bf16) check ids and offsets as the rowwise ones do:
    the same error for the same input, whatever the precision."""
    m = _model()
    dense = np.zeros((2, 3), F32)
    sparse = [(np.array([0, 1]), np.array([0, 1])), (np.array(ids), np.array(offsets))]
    messages = set()
    for prec in ("fp32", "fp16", "bf16", "int8", "int4", "int2"):
        with pytest.raises((ValueError, TypeError), match=match) as caught:
            forward(m, dense, sparse, {"emb:t1": prec})
        messages.add((type(caught.value), str(caught.value)))
    assert len(messages) == 1, messages


def test_plain_lists_are_lookups_too():
    m = _model()
    dense = np.random.default_rng(0).standard_normal((2, 3)).astype(F32)
    arrays = [(np.array([0, 1]), np.array([0, 1])), (np.array([0, 1, 2]), np.array([0, 2]))]
    lists = [([0, 1], [0, 1]), ([0, 1, 2], [0, 2])]
    for prec in ("fp32", "int8"):
        np.testing.assert_array_equal(forward(m, dense, lists, prec), forward(m, dense, arrays, prec))
