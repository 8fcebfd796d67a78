"""Linear layers with PyTorch/FBGEMM inference numerics.

``linear_dynamic_int8`` is ``torch.ao.nn.quantized.dynamic.Linear`` (fbgemm / x86 engine):

1. weight -> int8, symmetric: ``scale = max(|min|, |max|) / 127.5`` (at least float32 eps), per
   tensor or per output channel, ``q = clamp(rint(w * (1/scale)), -128, 127)``;
2. activations -> uint8 per tensor with FBGEMM's ``ChooseQuantizationParams`` over the whole
   batch (``[0, 127]`` when ``reduce_range``), ``q = clamp(rint(fma(x, 1/scale, zp)), 0, 255)``;
3. int32 accumulation, ``raw = sum(qx * qw) - zp * sum(qw)``;
4. ``y = fma(float(raw), scale_x * scale_w, bias)`` -- one rounding, as FBGEMM's requantize.

``linear_fp16_weight`` is ``quantized::linear_dynamic_fp16``: weights clamped to +-65504 and
rounded to fp16, activations stay fp32, products accumulated with fp32 FMAs along K (the
output columns beyond FBGEMM's last whole kernel column block, 32 columns with AVX-512 or 16
with AVX2, restart every 512 k and add the block sums in order), then the bias added.
"""

from __future__ import annotations

import math

import numpy as np

from embzip._jit import kernel, parallel_kernel, prange
from embzip.lowprec._bits import fma32, round_f64_to_f16
from embzip.lowprec._isa import fbgemm_columns as host_fbgemm_columns
from embzip.lowprec._validate import choice, flag, float_array

__all__ = [
    "quantize_weight_int8",
    "activation_qparams",
    "linear_dynamic_int8",
    "linear_fp16_weight",
    "flush_to_zero",
]

F32 = np.float32
FLT_MIN = np.float32(np.finfo(np.float32).tiny)
SMALL_SCALE = np.float32(6.1e-5)  # FBGEMM/torch SMALL_SCALE_THRESHOLD
INT32_FLOAT_MAX = np.float32(2147483520.0)  # largest float below INT32_MAX: FBGEMM clips here
FP16_MAX = np.float32(65504.0)
FP16_MIN_NORMAL = 2.0**-14
K_BLOCK = 512  # PackedGemmMatrixFP16's default row block: partial sums restart every 512 k


@kernel
def _quantize_activations(x, inv, zpf, out):
    # PackAWithQuantRowOffset (QuantizeAvx2, legacy): fma(x, 1/scale, zp), clip at
    # INT32_FLOAT_MAX, cvtps2dq (x is finite, so no NaN path), clamp to [0, 255]
    for i in range(x.shape[0]):
        for k in range(x.shape[1]):
            t = fma32(x[i, k], inv, zpf)
            t = t if t < INT32_FLOAT_MAX else INT32_FLOAT_MAX
            out[i, k] = min(max(np.float64(np.rint(t)), 0.0), 255.0)


@kernel
def _requantize_for_float(acc, colsum, zp, mult, bias, has_bias, out):
    # raw = acc - zp * colsum in int32 (wrapping, as FBGEMM's int32 arithmetic), then
    # ReQuantizeForFloat: float(raw) * (scale_x * scale_w) + bias with one rounding (an FMA)
    for i in range(acc.shape[0]):
        for n in range(acc.shape[1]):
            r = np.float32(np.int32(np.int64(acc[i, n]) - zp * colsum[n]))
            out[i, n] = fma32(r, mult[n], bias[n]) if has_bias else r * mult[n]


@parallel_kernel
def _fp16w_kernel(x, w_t, full, tmp, out):
    # FBGEMM's cblas_gemm_compute with beta = 0, one output row at a time. Columns below
    # ``full`` (whole kernel column blocks) are one FMA chain over all of K: each 512-row block
    # after the first starts from C (beta = 1, folded into the first FMA). The leftover columns
    # go through a zero-filled buffer: block 0 is stored, later blocks start from +0 and are
    # added to C. Every chain's first term is the plain product (beta = 0: a -0 product stays).
    m_rows, k_dim = x.shape
    n_cols = out.shape[1]
    for m in prange(m_rows):
        o = out[m]
        if k_dim == 0:
            for n in range(n_cols):
                o[n] = np.float32(0.0)
            continue
        x0 = x[m, 0]
        for n in range(n_cols):
            o[n] = x0 * w_t[0, n]
        for k in range(1, min(k_dim, K_BLOCK)):
            xv = x[m, k]
            for n in range(n_cols):
                o[n] = fma32(xv, w_t[k, n], o[n])
        for k0 in range(K_BLOCK, k_dim, K_BLOCK):
            t = tmp[m]
            for n in range(full, n_cols):
                t[n] = np.float32(0.0)
            for k in range(k0, min(k_dim, k0 + K_BLOCK)):
                xv = x[m, k]
                for n in range(full):
                    o[n] = fma32(xv, w_t[k, n], o[n])
                for n in range(full, n_cols):
                    t[n] = fma32(xv, w_t[k, n], t[n])
            for n in range(full, n_cols):
                o[n] = o[n] + t[n]


@parallel_kernel
def _emulated_kernel(x, w_t, fp16_acc, flush, out):
    # Accelerator emulation: sequential k, every FMA result rounded to the accumulation format
    # (fp16: exact in float64, rounded once) and optionally flushed when subnormal.
    m_rows, k_dim = x.shape
    n_cols = out.shape[1]
    tiny = FP16_MIN_NORMAL if fp16_acc else float(FLT_MIN)
    for m in prange(m_rows):
        for n in range(n_cols):
            acc = 0.0
            for k in range(k_dim):
                if fp16_acc:
                    acc = round_f64_to_f16(np.float64(x[m, k]) * np.float64(w_t[k, n]) + acc)
                else:
                    acc = np.float64(fma32(x[m, k], w_t[k, n], np.float32(acc)))
                if flush and abs(acc) < tiny:
                    acc = 0.0 * acc
            out[m, n] = np.float32(acc)


def flush_to_zero(a, fmt: str = "fp32") -> np.ndarray:
    """Replace values that are subnormal in ``fmt`` ("fp32" or "fp16") by a zero of the same sign.

    Examples
    --------
    >>> import numpy as np
    >>> flush_to_zero(np.array([1e-40, -1e-40, 1.0], dtype=np.float32)).tolist()
    [0.0, -0.0, 1.0]
    """
    choice(fmt, "fmt", ("fp32", "fp16"))
    arr = np.asarray(a, dtype=np.float32)
    tiny = FLT_MIN if fmt == "fp32" else np.float32(FP16_MIN_NORMAL)
    return np.where(np.abs(arr) < tiny, arr * np.float32(0.0), arr).astype(np.float32)


def _weight_bias(weight, bias, k_dim=None):
    w = float_array(weight, "weight")
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D (out x in features), found shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("weight must be finite, found NaN or inf")
    if k_dim is not None and w.shape[1] != k_dim:
        raise ValueError(
            f"x has {k_dim} features but weight expects in_features={w.shape[1]} "
            f"(weight shape {w.shape})"
        )
    b = None
    if bias is not None:
        b = float_array(bias, "bias")
        if b.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape ({w.shape[0]},), found {b.shape}")
    return w, b


def _rows(a) -> np.ndarray:
    """``a`` as C-contiguous rows of in_features (``reshape(-1, 0)`` cannot infer the -1)."""
    return np.ascontiguousarray(a.reshape(math.prod(a.shape[:-1]), a.shape[-1]))


def _input(x):
    a = float_array(x, "x")
    if a.ndim < 1:
        raise ValueError(f"x must be at least 1-D (..., in_features), found shape {a.shape}")
    return a


def quantize_weight_int8(weight, per_channel: bool = False):
    """Symmetric int8 weight quantization as torch's default dynamic qconfig observers do.

    Returns
    -------
    qweight : ndarray of int8, shape (out_features, in_features)
    scales : ndarray of float32, shape (out_features,) if ``per_channel`` else (1,)

    Examples
    --------
    >>> import numpy as np
    >>> q, s = quantize_weight_int8(np.array([[0.5, -1.0], [0.25, 0.0]], dtype=np.float32))
    >>> q.tolist(), s.tolist()
    ([[64, -127], [32, 0]], [0.007843137718737125])
    """
    per_channel = flag(per_channel, "per_channel")
    w, _ = _weight_bias(weight, None)
    if per_channel:
        lo = np.minimum(w.min(axis=1, initial=0), 0)
        amax = np.maximum(-lo, np.maximum(w.max(axis=1, initial=0), 0))
    else:
        amax = np.array([max(-min(w.min(initial=0), 0), max(w.max(initial=0), 0))], dtype=F32)
    scales = np.maximum((amax.astype(F32) / F32(127.5)).astype(F32), np.finfo(F32).eps).astype(F32)
    inv = (F32(1.0) / scales).astype(F32)
    prod = (w * (inv[:, None] if per_channel else inv[0])).astype(F32)
    q = np.clip(np.rint(prod), -128, 127).astype(np.int8)
    return q, scales


def activation_qparams(x, reduce_range: bool = True):
    """uint8 scale and zero point torch's dynamic linear picks for the whole tensor ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> s, zp = activation_qparams(np.array([-1.0, 3.0], dtype=np.float32))
    >>> float(s), zp  # 4 / 127 as float32; 0.0 maps to 32
    (0.031496062874794006, 32)
    """
    reduce_range = flag(reduce_range, "reduce_range")
    a = float_array(x, "x")
    if not np.isfinite(a).all():
        raise ValueError("x must be finite to pick quantization parameters, found NaN or inf")
    qmin, qmax = (0, 127) if reduce_range else (0, 255)
    lo = F32(min(F32(a.min()), F32(0.0))) if a.size else F32(0.0)
    hi = F32(max(F32(a.max()), F32(0.0))) if a.size else F32(0.0)
    scale = (float(hi) - float(lo)) / (qmax - qmin)
    if F32(scale) == 0 or np.isinf(F32(1.0) / F32(scale)):
        scale = 0.1
    if scale < float(SMALL_SCALE):
        org = F32(scale)
        scale = float(SMALL_SCALE)
        if lo == 0:
            hi = F32(SMALL_SCALE * F32(qmax - qmin))
        elif hi == 0:
            lo = F32(-SMALL_SCALE * F32(qmax - qmin))
        else:
            amp = F32(SMALL_SCALE / org)
            lo, hi = F32(lo * amp), F32(hi * amp)
    zp_min = qmin - float(lo) / scale
    zp_max = qmax - float(hi) / scale
    # torch's error terms subtract (|q| - |x/s|); FBGEMM's add. torch's choice is what runs.
    err_min = abs(qmin) - abs(float(lo) / scale)
    err_max = abs(qmax) - abs(float(hi) / scale)
    z = zp_min if err_min < err_max else zp_max
    zp = qmin if z < qmin else (qmax if z > qmax else int(np.rint(z)))
    return F32(scale), int(zp)


def linear_dynamic_int8(
    x,
    weight,
    bias=None,
    reduce_range: bool = True,
    per_channel: bool = False,
    flush_subnormals: bool = False,
) -> np.ndarray:
    """``y = x @ weight.T + bias`` with torch's dynamic int8 quantization, bit for bit.

    Parameters
    ----------
    x : ndarray of float32, shape (..., in_features), finite
        Quantized per tensor: the result of one row depends on the whole batch, as in torch.
    weight : ndarray of float32, shape (out_features, in_features), finite
    bias : ndarray of float32, shape (out_features,), optional
    reduce_range : bool
        Quantize activations to [0, 127] (torch's module default; avoids int16 saturation in
        FBGEMM's AVX2 kernels).
    per_channel : bool
        One weight scale per output channel (``per_channel_dynamic_qconfig``).
    flush_subnormals : bool
        Emulate DAZ/FTZ: subnormal inputs and outputs become signed zeros.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0]], dtype=np.float32)
    >>> w = np.array([[0.5, -0.25], [1.0, 1.0]], dtype=np.float32)
    >>> linear_dynamic_int8(x, w, np.zeros(2, np.float32))
    array([[0.00395245, 2.9960785 ]], dtype=float32)
    """
    reduce_range = flag(reduce_range, "reduce_range")
    flush = flag(flush_subnormals, "flush_subnormals")
    a = _input(x)
    w, b = _weight_bias(weight, bias, a.shape[-1])
    if not np.isfinite(a).all():
        raise ValueError("x must be finite for int8 dynamic quantization, found NaN or inf")
    if flush:
        a = flush_to_zero(a)
    lead = a.shape[:-1]
    a2 = _rows(a)
    n_out = w.shape[0]
    out = np.empty((a2.shape[0], n_out), dtype=F32)
    if out.size and not a2.shape[1]:  # no input features: the empty sum, plus the bias
        out[...] = F32(0.0) if b is None else F32(0.0) + b
    elif out.size:
        qw, ws = quantize_weight_int8(w, per_channel)
        scale, zp = activation_qparams(a2, reduce_range)
        qx = np.empty(a2.shape, np.float64)
        _quantize_activations(a2, F32(F32(1.0) / scale), F32(zp), qx)
        # the int32 GEMM, done exactly in float64 BLAS: every partial sum is an integer < 2**53
        acc = qx @ qw.T.astype(np.float64)
        colsum = qw.astype(np.int64).sum(axis=1)
        mult = (scale * np.broadcast_to(ws, (n_out,))).astype(F32)
        bias_arr = b if b is not None else np.zeros(n_out, F32)
        _requantize_for_float(acc, colsum, np.int64(zp), mult, bias_arr, b is not None, out)
        if flush:
            out = flush_to_zero(out)
    return out.reshape(lead + (n_out,))


def linear_fp16_weight(
    x, weight, bias=None, accumulate: str = "fp32", flush_subnormals: bool = False, fbgemm_columns=None
) -> np.ndarray:
    """``y = x @ fp16(weight).T + bias``, bit-identical to torch's ``linear_dynamic_fp16``.

    Parameters
    ----------
    x : ndarray of float32, shape (..., in_features)
    weight : ndarray of float32, shape (out_features, in_features), finite
        Clamped to +-65504 then rounded to fp16 (as torch's prepack does).
    bias : ndarray of float32, shape (out_features,), optional
    accumulate : {"fp32", "fp16"}
        ``"fp32"`` (default) is FBGEMM. ``"fp16"`` emulates an accelerator with fp16 activations
        and an fp16 accumulator (each FMA rounded once to fp16, k in order); no torch oracle.
    flush_subnormals : bool
        Emulate FTZ/DAZ in the accumulation format (inputs, every partial sum and the output);
        turns the fp32 path into the sequential emulation (no 512-blocks), no torch oracle.
    fbgemm_columns : {None, 16, 32}
        Columns per FBGEMM kernel block, which decide where sums restart when K > 512:
        ``None`` (default) is what FBGEMM picks on this CPU (32 with AVX-512 F/BW/DQ/VL,
        else 16, see :func:`embzip.lowprec.fbgemm_columns`); give 16 or 32 to reproduce
        another CPU (or FBGEMM forced to AVX2 by ``FBGEMM_ENABLE_INSTRUCTIONS``).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[1.0, 2.0]], dtype=np.float32)
    >>> w = np.array([[0.1, 0.2]], dtype=np.float32)
    >>> linear_fp16_weight(x, w)  # 0.1 and 0.2 become fp16 0.0999756 and 0.199951
    array([[0.49987793]], dtype=float32)
    """
    choice(accumulate, "accumulate", ("fp32", "fp16"))
    flush = flag(flush_subnormals, "flush_subnormals")
    if fbgemm_columns is None:
        columns = host_fbgemm_columns()
    elif isinstance(fbgemm_columns, (int, np.integer)) and not isinstance(fbgemm_columns, bool) \
            and int(fbgemm_columns) in (16, 32):
        columns = int(fbgemm_columns)
    else:
        raise ValueError(f"fbgemm_columns must be None, 16 or 32, found {fbgemm_columns!r}")
    a = _input(x)
    w, b = _weight_bias(weight, bias, a.shape[-1])
    wh = np.clip(w, -FP16_MAX, FP16_MAX).astype(np.float16)
    lead = a.shape[:-1]
    a2 = _rows(a)
    n_out = w.shape[0]
    out = np.empty((a2.shape[0], n_out), dtype=F32)
    if out.size == 0:
        return out.reshape(lead + (n_out,))
    w_t = np.ascontiguousarray(wh.astype(F32).T)
    fmt = "fp16" if accumulate == "fp16" else "fp32"
    if accumulate == "fp16":
        a2 = a2.astype(np.float16).astype(F32)
    if accumulate == "fp32" and not flush:
        full = n_out // columns * columns
        tmp = np.empty_like(out) if a2.shape[1] > K_BLOCK and full < n_out else np.empty((0, 0), F32)
        _fp16w_kernel(a2, w_t, full, tmp, out)
        if b is not None:
            out = out + b
        return out.reshape(lead + (n_out,))
    if flush:
        a2 = flush_to_zero(a2, fmt)
        w_t = flush_to_zero(w_t, fmt)
    _emulated_kernel(a2, w_t, accumulate == "fp16", flush, out)
    if b is not None:
        if accumulate == "fp16":
            bh = b.astype(np.float16).astype(np.float64)
            out = (out.astype(np.float64) + bh).astype(np.float16).astype(F32)
        else:
            out = out + b
    if flush:
        out = flush_to_zero(out, fmt)
    return out.reshape(lead + (n_out,))
