"""Model-level accuracy study: NE, AUC and bytes per precision configuration, per-layer
sensitivity, and a greedy per-layer precision search under an NE budget.

NE (normalized entropy) = mean logloss / entropy of the base rate; ``ne_rel`` is the relative
change against the all-fp32 model (``+0.0005`` = +0.05%, the default budget).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from embzip.lowprec._validate import int_vector
from embzip.lowprec.model import (
    DLRM,
    bottom_forward,
    interaction,
    layer_bytes,
    pool,
    slice_batch,
    top_layer,
)

__all__ = ["normalized_entropy", "auc", "study", "StudyResult", "DEFAULT_CONFIGS"]

DEFAULT_CONFIGS = {
    "fp32": "fp32",
    "fp16": "fp16",
    "bf16": "bf16",
    "int8 MLP": {"mlp": "int8"},
    "8-bit emb": {"emb": "int8"},
    "4-bit emb": {"emb": "int4"},
    "2-bit emb": {"emb": "int2"},
}


def normalized_entropy(labels, logits) -> float:
    """Mean logloss of ``sigmoid(logits)`` divided by the entropy of the base rate.

    Examples
    --------
    >>> import numpy as np
    >>> round(normalized_entropy([0, 1, 1, 0], np.zeros(4)), 6)  # predicting the base rate
    1.0
    """
    y = np.asarray(labels, np.float64)
    z = np.asarray(logits, np.float64)
    if y.shape != z.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels and logits must be equal-length 1-D, found {y.shape}, {z.shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    p = y.mean()
    if p in (0.0, 1.0):
        raise ValueError(f"NE is undefined when every label is {int(p)}")
    loss = np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
    return float(loss / -(p * np.log(p) + (1 - p) * np.log(1 - p)))


def auc(labels, scores) -> float:
    """Area under the ROC curve (ties count one half).

    Examples
    --------
    >>> auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, np.float64)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        raise ValueError("AUC needs both classes")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    ranks = (upper - (counts - 1) / 2.0)[inverse]  # average rank of the group
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


@dataclass
class StudyResult:
    """What :func:`study` found. ``str(result)`` prints the tables."""

    rows: list  # dicts: name, ne, ne_rel, auc, bytes, config
    sensitivity: list  # dicts: layer, precision, ne_rel, bytes_saved
    search: dict = field(default=None)  # config, ne, ne_rel, auc, bytes, steps
    budget: float = 0.0005

    def table(self) -> str:
        base = self.rows[0]["bytes"]
        lines = [f"{'config':<22}{'NE':>9}{'NE rel':>10}{'AUC':>8}{'bytes':>12}{'x smaller':>10}"]
        rows = list(self.rows)
        if self.search is not None:
            rows.append(dict(self.search, name="searched mix"))
        for r in rows:
            lines.append(f"{r['name']:<22}{r['ne']:>9.5f}{100 * r['ne_rel']:>+9.3f}%"
                         f"{r['auc']:>8.4f}{r['bytes']:>12,d}{base / r['bytes']:>10.2f}")
        return "\n".join(lines)

    def sensitivity_table(self) -> str:
        lines = [f"{'layer':<16}{'precision':>10}{'NE rel':>10}{'bytes saved':>13}"]
        for s in sorted(self.sensitivity, key=lambda s: -s["ne_rel"]):
            lines.append(f"{s['layer']:<16}{s['precision']:>10}{100 * s['ne_rel']:>+9.3f}%"
                         f"{s['bytes_saved']:>13,d}")
        return "\n".join(lines)

    def __str__(self):
        out = [self.table(), "", "per-layer sensitivity (one layer changed, rest fp32):",
               self.sensitivity_table()]
        if self.search is not None:
            mix = ", ".join(f"{k}={v}" for k, v in self.search["config"].items() if v != "fp32")
            out += ["", f"searched mix (budget {100 * self.budget:+.3f}% NE): {mix or 'all fp32'}"]
        return "\n".join(out)


def _expand(model, config):
    if isinstance(config, dict) and set(config) & {"emb", "mlp"}:
        if set(config) - {"emb", "mlp"}:
            raise ValueError(f"mix 'emb'/'mlp' group keys with layer names: {sorted(config)}")
        out = {}
        for layer in model.layers():
            group = "emb" if layer.startswith("emb:") else "mlp"
            if group in config:
                out[layer] = config[group]
        return model.resolve(out)
    return model.resolve(config)


def _prepare(model, data):
    if not isinstance(data, dict) or not {"dense", "sparse", "labels"} <= set(data):
        raise ValueError("data must be a dict with 'dense', 'sparse' and 'labels'")
    dense = np.asarray(data["dense"], np.float32)
    labels = np.asarray(data["labels"])
    n = labels.shape[0]
    if dense.ndim != 2 or dense.shape[0] != n:
        raise ValueError(f"dense must be (samples, features) with {n} rows, found {dense.shape}")
    if len(data["sparse"]) != len(model.embeddings):
        raise ValueError(f"need {len(model.embeddings)} sparse features, "
                         f"found {len(data['sparse'])}")
    sparse = []
    for i, feat in enumerate(data["sparse"]):
        rows = model.embeddings[i].shape[0]
        if isinstance(feat, tuple):
            idx, offs = int_vector(feat[0], "indices"), int_vector(feat[1], "offsets")
        else:
            idx = int_vector(feat, f"sparse[{i}]")
            offs = np.arange(idx.size, dtype=np.int64)
        if offs.size != n:
            raise ValueError(f"sparse[{i}] describes {offs.size} samples, labels have {n}")
        if idx.size and (idx.min() < 0 or idx.max() >= rows):
            raise ValueError(f"sparse[{i}] ids must be in [0, {rows}), found "
                             f"[{idx.min()}, {idx.max()}]")
        sparse.append((idx, offs))
    return dense, sparse, labels


class _Evaluator:
    """NE and AUC of a config, reusing partial results across configs.

    A search changes one layer at a time: each table's pooled output is cached per precision,
    the bottom MLP output per bottom config, and the top MLP's input and layer outputs per
    config prefix (a few recent ones), so most candidates recompute only a layer or two.
    Results are identical to an uncached forward.
    """

    KEEP = 48  # prefix entries kept (each is one activation matrix per batch)

    def __init__(self, model, batches, labels):
        self.model, self.batches, self.labels = model, batches, labels
        self._emb, self._bottom, self._prefix = {}, {}, {}

    def _remember(self, key, value):
        if len(self._prefix) >= self.KEEP:
            self._prefix.pop(next(iter(self._prefix)))
        self._prefix[key] = value
        return value

    def _pooled(self, i, prec):
        if (i, prec) not in self._emb:
            m = self.model
            self._emb[i, prec] = [pool(m, i, prec, s[i], d.shape[0]) for d, s in self.batches]
        return self._emb[i, prec]

    def logits(self, cfg):
        m = self.model
        bkey = tuple(cfg[f"bottom{i}"] for i in range(len(m.bottom)))
        if bkey not in self._bottom:
            self._bottom[bkey] = [bottom_forward(m, d, cfg) for d, _ in self.batches]
        ekey = tuple(cfg[f"emb:{name}"] for name in m.table_names)
        key = (bkey, ekey)
        xs = self._prefix.get(key)
        if xs is None:
            pooled = [self._pooled(i, p) for i, p in enumerate(ekey)]
            xs = self._remember(key, [interaction(h, [p[k] for p in pooled])
                                      for k, h in enumerate(self._bottom[bkey])])
        for i in range(len(m.top)):
            key = key + (cfg[f"top{i}"],)
            nxt = self._prefix.get(key)
            if nxt is None:
                nxt = self._remember(key, [top_layer(m, i, x, key[-1]) for x in xs])
            xs = nxt
        return np.concatenate([x[:, 0] for x in xs]).astype(np.float32)

    def __call__(self, cfg):
        z = self.logits(cfg)
        if not np.isfinite(z).all():
            return float("inf"), 0.5
        return normalized_entropy(self.labels, z), auc(self.labels, z)


def study(model: DLRM, data, configs=None, budget: float = 0.0005, search: bool = True,
          batch_size: int = 4096) -> StudyResult:
    """NE / AUC / bytes per configuration, per-layer sensitivity and a greedy precision search.

    Parameters
    ----------
    model : DLRM
    data : dict
        ``dense`` (samples, features) float, ``labels`` (samples,) in {0, 1}, ``sparse``: one
        entry per table, either ids (one per sample) or ``(indices, offsets)`` bags.
    configs : dict name -> config, optional
        A config is a precision name for every layer (``"fp16"``), a dict of layer -> precision
        (others fp32) or ``{"emb": ..., "mlp": ...}``. Default: :data:`DEFAULT_CONFIGS`.
        The fp32 baseline is always the first row.
    budget : float
        Largest relative NE increase the search accepts (0.0005 = +0.05%).
    search : bool
        Run the greedy search: starting from fp32, repeatedly apply the single-layer change
        that gives the smallest model while NE stays within budget, until none fits. Changes
        whose own sensitivity (that layer alone, rest fp32) exceeds the budget are skipped.
    batch_size : int
        Samples per forward call; int8 layers quantize activations per batch, as served.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> m = DLRM([rng.standard_normal((50, 4))], [(rng.standard_normal((4, 3)), np.zeros(4))],
    ...          [(rng.standard_normal((1, 5)), np.zeros(1))])
    >>> data = {"dense": rng.standard_normal((200, 3)), "sparse": [rng.integers(0, 50, 200)],
    ...         "labels": rng.integers(0, 2, 200)}
    >>> r = study(m, data, configs={"fp16": "fp16"}, search=False)
    >>> [row["name"] for row in r.rows], abs(r.rows[1]["ne_rel"]) < 1e-3
    (['fp32', 'fp16'], True)
    """
    if not isinstance(model, DLRM):
        raise TypeError(f"model must be a DLRM, found {type(model).__name__}")
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise TypeError(f"budget must be a real number, found {type(budget).__name__} {budget!r}")
    if not budget >= 0:
        raise ValueError(f"budget must be a non-negative number, found {budget!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, found {batch_size!r}")
    dense, sparse, labels = _prepare(model, data)
    n = labels.shape[0]
    batches = [(dense[lo:lo + batch_size], [slice_batch(f, lo, min(lo + batch_size, n))
                                            for f in sparse])
               for lo in range(0, n, batch_size)]
    layers = model.layers()
    nbytes = {(la, p): layer_bytes(model, la, p) for la in layers for p in model.precisions(la)}

    evaluate = _Evaluator(model, batches, labels)

    def run(cfg):
        ne, a = evaluate(cfg)
        size = sum(nbytes[la, p] for la, p in cfg.items())
        return dict(ne=ne, ne_rel=ne / ne0 - 1, auc=a, bytes=size,
                    config=cfg)

    fp32 = model.resolve("fp32")
    ne0 = evaluate(fp32)[0]
    configs = DEFAULT_CONFIGS if configs is None else configs
    rows = [dict(run(fp32), name="fp32")]
    rows += [dict(run(_expand(model, c)), name=str(k)) for k, c in configs.items() if k != "fp32"]
    sens = []
    for la in layers:
        for p in model.precisions(la):
            if p != "fp32":
                r = run(dict(fp32, **{la: p}))
                sens.append(dict(layer=la, precision=p, ne_rel=r["ne_rel"],
                                 bytes_saved=nbytes[la, "fp32"] - nbytes[la, p]))
    best = None
    if search:
        # moves whose single-layer NE change already exceeds the budget are not tried
        solo = {(s["layer"], s["precision"]): s["ne_rel"] for s in sens}
        best = run(fp32)
        best["steps"] = []
        while True:
            cands = []
            for la in layers:
                for p in model.precisions(la):
                    if nbytes[la, p] < nbytes[la, best["config"][la]] and solo[la, p] <= budget:
                        r = run(dict(best["config"], **{la: p}))
                        if r["ne_rel"] <= budget:
                            cands.append((r["bytes"], r["ne"], la, p, r))
            if not cands:
                break
            _, _, la, p, r = min(cands, key=lambda c: (c[0], c[1]))
            r["steps"] = best["steps"] + [(la, p, r["ne_rel"], r["bytes"])]
            best = r
    return StudyResult(rows=rows, sensitivity=sens, search=best, budget=float(budget))
