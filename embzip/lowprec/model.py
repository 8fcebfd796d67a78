"""A DLRM-style model held as numpy weights, run at a chosen precision per layer.

Model: dense features -> bottom MLP (ReLU after every layer); each sparse feature -> a sum-pooled
embedding bag; dot-product interaction of [bottom output, pooled embeddings] (strictly lower
triangle) concatenated with the bottom output; top MLP (ReLU between layers) -> one logit.

Precisions (``PRECISIONS``): embeddings take fp32, fp16, bf16, int8, int4, int2 (rowwise, FBGEMM
layout); linear layers take fp32, fp16 (FBGEMM fp16-weight GEMM), bf16 (inputs, weights and
outputs rounded to bf16, fp32 accumulation) and int8 (torch dynamic quantization).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from embzip.lowprec._validate import int_vector
from embzip.lowprec.bag import _index_error, bag_bounds, embedding_bag_rowwise
from embzip.lowprec.casts import to_bf16
from embzip.lowprec.linear import linear_dynamic_int8, linear_fp16_weight
from embzip.lowprec.rowwise import packed_row_bytes, quantize_rowwise

__all__ = [
    "DLRM",
    "EMB_PRECISIONS",
    "MLP_PRECISIONS",
    "layer_bytes",
    "forward",
    "bottom_forward",
    "pool",
    "top_forward",
    "interaction",
    "top_layer",
    "slice_batch",
]

EMB_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", "int2")
MLP_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
_ROWWISE_BITS = {"int8": 8, "int4": 4, "int2": 2}
_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def _f32(a, what):
    arr = np.asarray(a)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{what} must be a float array, found dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


@dataclass
class DLRM:
    """Numpy weights of a DLRM-style model.

    Parameters
    ----------
    embeddings : list of float arrays (rows, dim); all tables share ``dim``
    bottom : list of (weight (out, in), bias (out,)); the last ``out`` must equal ``dim``
    top : list of (weight, bias); the last layer has one output (the logit)
    table_names : optional unique names (str) for the tables (default ``t0``, ``t1``, ...)

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> m = DLRM([rng.standard_normal((10, 4))], [(rng.standard_normal((4, 3)), np.zeros(4))],
    ...          [(rng.standard_normal((1, 5)), np.zeros(1))])
    >>> m.layers()
    ['emb:t0', 'bottom0', 'top0']
    """

    embeddings: list
    bottom: list
    top: list
    table_names: list = field(default=None)

    def __post_init__(self):
        self.embeddings = [_f32(t, f"embeddings[{i}]") for i, t in enumerate(self.embeddings)]
        self.bottom = [(_f32(w, "bottom weight"), _f32(b, "bottom bias")) for w, b in self.bottom]
        self.top = [(_f32(w, "top weight"), _f32(b, "top bias")) for w, b in self.top]
        if not self.embeddings or not self.bottom or not self.top:
            raise ValueError("a DLRM needs at least one table, one bottom and one top layer")
        if self.table_names is None:
            self.table_names = [f"t{i}" for i in range(len(self.embeddings))]
        self.table_names = list(self.table_names)
        if len(self.table_names) != len(self.embeddings):
            raise ValueError(
                f"table_names has {len(self.table_names)} names for {len(self.embeddings)} tables"
            )
        if not all(isinstance(n, str) for n in self.table_names):
            raise TypeError(f"table_names must be str, found {self.table_names!r}")
        if len(set(self.table_names)) != len(self.table_names):  # (a layer is named by its table)
            raise ValueError(f"table_names must be unique, found {self.table_names!r}")
        dims = {t.shape[1] for t in self.embeddings if t.ndim == 2}
        if any(t.ndim != 2 for t in self.embeddings) or len(dims) != 1:
            raise ValueError(f"embedding tables must be 2-D with one shared dim, found {dims}")
        dim = dims.pop()
        for name, stack in (("bottom", self.bottom), ("top", self.top)):
            for i, (w, b) in enumerate(stack):
                if w.ndim != 2 or b.shape != (w.shape[0],):
                    raise ValueError(f"{name}{i}: weight {w.shape} and bias {b.shape} do not match")
                if i and stack[i - 1][0].shape[0] != w.shape[1]:
                    raise ValueError(f"{name}{i} takes {w.shape[1]} inputs, previous gives "
                                     f"{stack[i - 1][0].shape[0]}")
        if self.bottom[-1][0].shape[0] != dim:
            raise ValueError(f"bottom MLP must end with dim={dim} outputs, "
                             f"found {self.bottom[-1][0].shape[0]}")
        f = len(self.embeddings) + 1
        want = dim + f * (f - 1) // 2
        if self.top[0][0].shape[1] != want:
            raise ValueError(f"top0 must take {want} inputs (dim + pairs), "
                             f"found {self.top[0][0].shape[1]}")
        if self.top[-1][0].shape[0] != 1:
            raise ValueError("the last top layer must have 1 output, "
                             f"found {self.top[-1][0].shape[0]}")
        self._cache = {}

    def layers(self):
        """Layer names in order: ``emb:<table>``, ``bottom<i>``, ``top<i>``."""
        return ([f"emb:{n}" for n in self.table_names]
                + [f"bottom{i}" for i in range(len(self.bottom))]
                + [f"top{i}" for i in range(len(self.top))])

    def precisions(self, layer):
        return EMB_PRECISIONS if layer.startswith("emb:") else MLP_PRECISIONS

    def resolve(self, config):
        """Full {layer: precision} from a shortcut string or a partial dict (rest fp32)."""
        if isinstance(config, str):
            return {layer: config if config in self.precisions(layer) else "fp32"
                    for layer in self.layers()}
        if not isinstance(config, dict):
            raise TypeError(f"a config must be a str or a dict, found {type(config).__name__}")
        unknown = set(config) - set(self.layers())
        if unknown:
            raise ValueError(f"unknown layers {sorted(unknown)}; layers are {self.layers()}")
        full = {layer: "fp32" for layer in self.layers()}
        for layer, prec in config.items():
            if prec not in self.precisions(layer):
                raise ValueError(f"{layer}: precision must be one of {self.precisions(layer)}, "
                                 f"found {prec!r}")
            full[layer] = prec
        return full

    def _table(self, i, prec):
        key = ("emb", i, prec)
        if key not in self._cache:
            t = self.embeddings[i]
            if prec in _ROWWISE_BITS:
                self._cache[key] = quantize_rowwise(t, _ROWWISE_BITS[prec])
            elif prec == "fp16":
                self._cache[key] = t.astype(np.float16).astype(np.float32)
            elif prec == "bf16":
                self._cache[key] = to_bf16(t)
            else:
                self._cache[key] = t
        return self._cache[key]


def layer_bytes(model: DLRM, layer: str, prec: str) -> int:
    """Bytes to store one layer at a precision (biases and rowwise scale/bias included)."""
    if layer not in model.layers():
        raise ValueError(f"unknown layer {layer!r}; layers are {model.layers()}")
    if prec not in model.precisions(layer):
        raise ValueError(f"{layer}: precision must be one of {model.precisions(layer)}, found {prec!r}")
    if layer.startswith("emb:"):
        t = model.embeddings[model.table_names.index(layer[4:])]
        if prec in _ROWWISE_BITS:
            return t.shape[0] * packed_row_bytes(t.shape[1], _ROWWISE_BITS[prec])
        return t.size * _BYTES[prec]
    stack = model.bottom if layer.startswith("bottom") else model.top
    w, b = stack[int(layer[3 if layer.startswith("top") else 6:])]
    scale = 4 if prec == "int8" else 0  # one fp32 weight scale per tensor
    return w.size * _BYTES[prec] + b.size * 4 + scale


def _linear(x, w, b, prec):
    if prec == "fp32":
        return x @ w.T + b
    if prec == "fp16":
        return linear_fp16_weight(x, w, b)
    if prec == "int8":
        return linear_dynamic_int8(x, w, b, reduce_range=True)
    y = to_bf16(x) @ to_bf16(w).T + to_bf16(b)
    return to_bf16(y)


def _bag_f32(table, indices, offsets):
    """Sum-pooled rows of a float table, with the checks (and errors) of the rowwise bags."""
    indices = int_vector(indices, "indices")
    rows = table.shape[0]
    # ids before offsets, as the rowwise bags report them (and -1 would read the last row)
    if indices.size and (indices.min() < 0 or indices.max() >= rows):
        raise _index_error(indices, rows)
    starts, ends = bag_bounds(offsets, indices.size)
    n = starts.size
    if indices.size == n and np.array_equal(starts, np.arange(n)):
        return table[indices]  # one id per sample: a gather
    out = np.zeros((n, table.shape[1]), np.float32)
    full = ends > starts
    if indices.size:
        out[full] = np.add.reduceat(table[indices], starts[full], axis=0)
    return out


def bottom_forward(model: DLRM, dense, cfg) -> np.ndarray:
    """Bottom MLP output (ReLU after every layer) at the precisions in the resolved ``cfg``."""
    h = np.asarray(dense, np.float32)
    for i, (w, b) in enumerate(model.bottom):
        h = np.maximum(_linear(h, w, b, cfg[f"bottom{i}"]), 0)
    return h


def pool(model: DLRM, i: int, prec: str, feature, n: int) -> np.ndarray:
    """Sum-pooled embeddings of table ``i`` at ``prec`` for one ``(indices, offsets)`` feature
    of ``n`` samples (offsets as for :func:`~embzip.lowprec.bag_bounds`, one bag a sample)."""
    indices, offsets = feature
    t = model._table(i, prec)
    if prec in _ROWWISE_BITS:
        out = embedding_bag_rowwise(t, _ROWWISE_BITS[prec], indices, offsets,
                                    dim=model.embeddings[i].shape[1])
    else:
        out = _bag_f32(t, indices, offsets)
    if out.shape[0] != n:
        raise ValueError(f"table {model.table_names[i]!r}: offsets give {out.shape[0]} bags for {n} samples")
    return out


def interaction(h, pooled) -> np.ndarray:
    """Top-MLP input: ``h`` and the dot products of all pairs of ``[h] + pooled``."""
    feats = [h] + list(pooled)
    li, lj = np.tril_indices(len(feats), k=-1)
    out = np.empty((h.shape[0], h.shape[1] + li.size), np.float32)
    out[:, : h.shape[1]] = h
    for c, (i, j) in enumerate(zip(li, lj)):  # row-wise dot products, one pair at a time
        out[:, h.shape[1] + c] = np.einsum("nd,nd->n", feats[i], feats[j])
    return out


def top_layer(model: DLRM, i: int, x, prec: str) -> np.ndarray:
    """Top layer ``i`` at ``prec`` (ReLU on all but the last)."""
    w, b = model.top[i]
    y = _linear(x, w, b, prec)
    return np.maximum(y, 0) if i < len(model.top) - 1 else y


def top_forward(model: DLRM, h, pooled, cfg) -> np.ndarray:
    """Interaction of ``[h] + pooled`` and the top MLP: one logit per sample."""
    x = interaction(h, pooled)
    for i in range(len(model.top)):
        x = top_layer(model, i, x, cfg[f"top{i}"])
    return x[:, 0].astype(np.float32)


def forward(model: DLRM, dense, sparse, config) -> np.ndarray:
    """Logits (float32, one per sample) of ``model`` at the precisions in ``config``.

    ``sparse`` holds one ``(indices, offsets)`` pair per table.
    """
    cfg = model.resolve(config)
    h = bottom_forward(model, dense, cfg)
    pooled = [pool(model, i, cfg[f"emb:{name}"], f, h.shape[0])
              for i, (name, f) in enumerate(zip(model.table_names, sparse))]
    return top_forward(model, h, pooled, cfg)


def slice_batch(sparse_feature, lo: int, hi: int):
    """Samples [lo, hi) of one sparse feature given as ``(indices, offsets)``."""
    indices, offsets = sparse_feature
    start = offsets[lo]
    end = offsets[hi] if hi < offsets.size else indices.size
    return indices[start:end], offsets[lo:hi] - start
