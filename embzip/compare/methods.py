"""Bounds, the compressors compared, and how each is measured."""

from __future__ import annotations

import dataclasses
import importlib
import math
import statistics
import time
from typing import Callable

import numpy as np


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
