"""Public verbs: compress, decompress, inspect. Validate arguments, then call the codec."""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from . import _backend, _codec
from . import _interop  # issue 7: torch tensors by duck typing (torch never imported)
from ._jit import threads_for
from .errors import FrameTooLargeError, OutMismatchError
from .format import read_header
from .format.header import as_frame_bytes, check_payload, check_shape
from .format.ids import DTypeId, ErrorMode, Flags, SectionKind, Strategy

__all__ = ["compress", "decompress", "inspect", "FrameInfo"]

_STRATEGIES = {"fast": Strategy.FAST, "compact": Strategy.COMPACT, "auto": Strategy.AUTO}


def _check_bound(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, found {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # e.g. 10**400: beyond float64, so not a usable bound
        raise ValueError(f"{name} must be finite and > 0, found {value!r} (beyond float64)") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be finite and > 0, found {value!r}")
    return value


def _as_float_array(data) -> np.ndarray:
    if not isinstance(data, np.ndarray):
        if hasattr(data, "__cuda_array_interface__"):
            raise TypeError("GPU arrays need the CUDA backend, which this build does not provide yet")
        try:
            data = np.asarray(data)
        except Exception as exc:  # numpy's own message says what failed
            raise TypeError(f"expected an array-like of floats, found {type(data).__name__}: {exc}") from None
    if isinstance(data, np.ma.MaskedArray):  # np.asarray would drop the mask and keep what it hides
        raise TypeError("masked arrays are not supported: compress data.filled(value) or data.data explicitly")
    if data.dtype.kind != "f" or data.dtype.itemsize not in (4, 8):  # either byte order
        raise TypeError(f"expected a float32 or float64 array, found dtype {data.dtype}")
    check_shape(data.shape)  # before any copy
    # not ascontiguousarray: it turns 0-d arrays into 1-d ones
    return np.asarray(data, dtype=data.dtype.newbyteorder("="), order="C")


def compress(data, *, abs_error=None, rel_error=None, strategy: str = "auto", dedup=None):
    """Compress a float array with a hard per-element error bound.

    Parameters
    ----------
    data : array_like or device array of float32 or float64
        Any shape (0-d, empty, N-d), C or F order, or a non-contiguous view. For 2-D and
        higher, the last axis is a vector (an embedding row) and identical quantized rows
        are stored once.
    abs_error : float, optional
        Every finite element decodes to within ``abs_error`` of the original.
    rel_error : float, optional
        The bound is ``rel_error * (max - min)`` over the finite values. Give exactly one
        of ``abs_error`` and ``rel_error``.
    strategy : {"auto", "fast", "compact"}
        ``fast`` bit-packs the codes, ``compact`` entropy-codes them (rANS), ``auto`` picks
        per stream by size (see :mod:`embzip.costmodel`).
    dedup : bool, optional
        Whether to store repeated rows (of 2-D and higher arrays) once. ``None`` (default):
        decided from a sample of the rows (a large array is quantized in part first, to see
        whether any row repeats); ``True``: always look (embedding lookups, where repeats are
        the rule), skipping the sample; ``False``: never. The bound holds either way, and
        every decoder reads every choice.

    Returns
    -------
    numpy.ndarray or device array
        The frame, a 1-D uint8 array. NaN (with payload) and +-Inf are stored bit-exact.
        A device array in (cupy, numba, or anything with ``__cuda_array_interface__``, such
        as a torch CUDA tensor) is compressed on the GPU into a device frame, byte-identical
        to the CPU's: cupy in -> cupy out, numba in -> numba out, others -> cupy if usable.

    Examples
    --------
    >>> import numpy as np, embzip
    >>> x = np.linspace(-1, 1, 10_000, dtype=np.float32)
    >>> frame = embzip.compress(x, abs_error=1e-3)
    >>> y = embzip.decompress(frame)
    >>> bool(np.abs(y.astype(np.float64) - x).max() <= 1e-3), frame.nbytes < x.nbytes / 3
    (True, True)
    """
    if (abs_error is None) == (rel_error is None):
        raise ValueError(f"give exactly one of abs_error and rel_error, found abs_error={abs_error!r}, rel_error={rel_error!r}")
    if dedup is not None and not isinstance(dedup, (bool, np.bool_)):
        raise TypeError(f"dedup must be None, True or False, found {dedup!r}")
    if not isinstance(strategy, str) or strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(_STRATEGIES)}, found {strategy!r}")
    if abs_error is not None:
        _check_bound("abs_error", abs_error)
    else:
        _check_bound("rel_error", rel_error)
    if type(data) is not np.ndarray:  # numpy arrays (the common case) skip both duck-type checks
        data = _interop.as_numpy(data)  # issue 7: a CPU torch tensor, zero-copy
        if _backend.is_device(data):  # CUDA backend (embzip/_backend.py): the frame stays on the GPU
            return _backend.compress(data, abs_error, rel_error, _STRATEGIES[strategy], _resolve_bound, dedup=dedup)
    values = _as_float_array(data)
    span = _codec.quantize.finite_range(values) if rel_error is not None else None
    mode, given, bound, constant = _resolve_bound(abs_error, rel_error, span)
    with threads_for(values.nbytes):
        return _codec.encode_array(values, mode, given, bound, _STRATEGIES[strategy], constant, dedup_hint=dedup)


def _resolve_bound(abs_error, rel_error, span):
    """(mode, bound as given, resolved absolute bound, constant value or None).

    ``span`` is (min, max) of the finite values (rel mode only; None when there are none).
    Shared by both backends so that their headers agree.
    """
    if abs_error is not None:
        given = _check_bound("abs_error", abs_error)
        return ErrorMode.ABS, given, given, None
    given = _check_bound("rel_error", rel_error)
    if span is None:
        return ErrorMode.REL, given, 0.0, None
    if span[0] == span[1]:  # constant: +0.0 whatever the signs of zero min and max came out as
        return ErrorMode.REL, given, 0.0, span[0]
    bound = given * (span[1] - span[0])
    if not math.isfinite(bound):
        # The range itself overflows float64 (e.g. -max..max): halve before subtracting.
        bound = 2.0 * (given * (span[1] / 2 - span[0] / 2))
        if not math.isfinite(bound):  # a bound beyond float64: the largest float is stricter
            bound = float(np.finfo(np.float64).max)
    return ErrorMode.REL, given, bound, None


def decompress(frame, *, out=None, verify: bool = True, device: str | None = None, like=None,
               max_bytes: int | None = None):
    """Decode a frame made by :func:`compress`.

    Parameters
    ----------
    frame : bytes-like
        bytes, bytearray, memoryview or a 1-D uint8 array holding exactly one frame.
    out : numpy.ndarray, optional
        A writable array of the frame's dtype and shape to decode into.
    verify : bool
        Check the payload CRC32C (the header's is always checked).
    device : {None, "cpu", "cuda"}
        Where to decode. None: on the GPU when ``frame`` or ``out`` is a device array (cupy,
        numba, or anything with ``__cuda_array_interface__``), else on the CPU. "cuda" decodes
        a host frame on the GPU too; "cpu" decodes a device frame on the host.
    like : torch.Tensor, optional
        Return a torch tensor on ``like``'s device (the frame's dtype and shape, not
        ``like``'s); on the CPU it shares the decoded array's memory (embzip/_interop.py).
    max_bytes : int, optional
        Refuse (:class:`~embzip.FrameTooLargeError`, before anything is allocated) a frame
        whose decoded array would be larger: a few bytes of frame may declare 2**48 values,
        so a service decoding frames it did not make should set it. None: no limit but
        the memory there is. It caps the array (as zstd's ``max_output_size`` does);
        decoding on the CPU needs working memory besides: about 7 KiB, 1.5x the bytes of the
        frame's outlier sections (12 or 16 bytes per outlier), and for a frame with dedup
        the unique rows (at most the array again) plus 4 bytes per row, so at worst
        ``1 + 4 / row_bytes`` times the array more (2x for rows of one float32, 1.06x for rows
        of 16). The GPU decoder needs more (not yet measured on a GPU).

    Returns
    -------
    numpy.ndarray or device array
        The decoded array, with the original dtype and shape (``out`` if given). Decoded on
        the GPU, it is a device array of the frame's kind (cupy frame -> cupy array, numba
        -> numba; otherwise cupy when usable, else numba).

    Raises
    ------
    embzip.EmbzipError
        A subclass for any frame that is not valid: corrupt, truncated, or of a newer version;
        :class:`~embzip.FrameTooLargeError` for a valid one larger than ``max_bytes`` or than
        the memory there is; :class:`~embzip.OutMismatchError` (also a ``ValueError``) when
        the frame's shape or dtype is not ``out``'s.

    Examples
    --------
    >>> import numpy as np, embzip
    >>> frame = embzip.compress(np.ones((3, 4)), abs_error=0.1)
    >>> embzip.decompress(frame).shape
    (3, 4)
    >>> embzip.decompress(frame, max_bytes=64)
    Traceback (most recent call last):
    ...
    embzip.errors.FrameTooLargeError: frame declares shape (3, 4) (96 bytes), more than max_bytes=64
    """
    if like is not None:  # issue 7: torch interop (embzip/_interop.py)
        return _interop.to_like(decompress(frame, out=out, verify=verify, device=device, max_bytes=max_bytes),
                                like)
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be None, 'cpu' or 'cuda', found {device!r}")
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral):
            raise TypeError(f"max_bytes must be None or an integer, found {type(max_bytes).__name__}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, found {max_bytes!r}")
    if device == "cuda" or (device is None and (_backend.is_device(frame) or _backend.is_device(out))):
        return _backend.decompress(frame, out=out, verify=verify, max_bytes=max_bytes)  # embzip/_backend.py
    if _backend.is_device(frame):  # device="cpu": the frame's bytes come to the host
        frame = _backend.to_host_frame(frame)
    buf = as_frame_bytes(frame)
    header = read_header(buf)
    check_size(header, max_bytes)  # before reading the payload, as on the GPU (the same error first)
    if verify:
        check_payload(header, buf)
    with threads_for(header.raw_size):
        try:
            return _decode(header, buf, out)
        except MemoryError:  # the output, or a stage's scratch (dedup's unique rows...): see _allocate
            raise frame_too_big(header) from None


def _allocate(header, dtype) -> np.ndarray:
    """The output array; a frame may declare up to 2**48 elements in a few bytes (a constant
    rANS section), so running out of memory is a property of the frame, reported as such."""
    try:
        return np.empty(header.shape, dtype=dtype)
    except MemoryError:
        raise frame_too_big(header) from None


def frame_too_big(header) -> FrameTooLargeError:
    return FrameTooLargeError(f"frame declares shape {header.shape} ({header.raw_size} bytes), more than can be "
                              "allocated here")


def check_size(header, max_bytes) -> None:
    """Refuse a frame whose decoded array is larger than ``max_bytes`` (None: any size)."""
    if max_bytes is not None and header.raw_size > max_bytes:
        raise FrameTooLargeError(f"frame declares shape {header.shape} ({header.raw_size} bytes), more than "
                                 f"max_bytes={max_bytes}")


_NATIVE = {dtype_id: dtype_id.numpy.newbyteorder("=") for dtype_id in DTypeId}  # newbyteorder: ~0.5 us


def _decode(header, buf, out):
    dtype = _NATIVE[header.dtype]
    if out is None:
        return _codec.decode_into(header, buf, _allocate(header, dtype))
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, found {type(out).__name__}")
    if out.shape != header.shape or out.dtype != dtype:
        raise OutMismatchError(f"out must have shape {header.shape} and dtype {dtype}, found {out.shape} and {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out must be writable, found a read-only array")
    # A subclass (np.matrix, a masked array...) is decoded into through a plain ndarray view of
    # its memory: its own reshape and indexing rules (a matrix stays 2-D) are not the codec's.
    target = out if type(out) is np.ndarray else out.view(np.ndarray)
    if np.may_share_memory(target, buf):  # decoding in place would overwrite what it still reads
        target[...] = _codec.decode_into(header, buf, _allocate(header, dtype))
    elif target.flags.c_contiguous:
        _codec.decode_into(header, buf, target)
    else:
        target[...] = _codec.decode_into(header, buf, _allocate(header, dtype))
    return out


@dataclasses.dataclass(frozen=True)
class FrameInfo:
    """What a frame's header says, read without decoding the payload."""

    dtype: np.dtype
    shape: tuple
    error_mode: str  # "abs" or "rel"
    error_value: float  # the bound as the caller gave it
    abs_error: float  # the resolved absolute bound every finite element satisfies
    strategy: str  # what the caller asked for
    stages: tuple  # e.g. ("quantize", "dedup", "codes:rans", "row_index:bitpack", "outliers")
    sections: dict  # section name -> bytes
    raw_size: int
    frame_size: int
    unique_rows: int | None

    @property
    def ratio(self) -> float:
        return self.raw_size / self.frame_size if self.frame_size else float("inf")


def inspect(frame) -> FrameInfo:
    """Read a frame's header (validated, payload not decoded).

    Examples
    --------
    >>> import numpy as np, embzip
    >>> info = embzip.inspect(embzip.compress(np.zeros((8, 4), np.float32), rel_error=0.01))
    >>> info.shape, info.dtype
    ((8, 4), dtype('float32'))
    """
    if _backend.is_device(frame):  # only the header's bytes come to the host
        header = _backend.frame_header(frame)
    else:
        header = read_header(as_frame_bytes(frame))
    stages = []
    if header.section(SectionKind.RAW) is not None:
        stages.append("raw")
    else:
        stages.append("quantize")
        if header.flags & Flags.DEDUP:
            stages.append("dedup")
        for sec in header.sections:
            if sec.kind in (SectionKind.CODES, SectionKind.ROW_INDEX):
                stages.append(f"{sec.kind.name.lower()}:{sec.encoding.name.lower()}")
        if header.section(SectionKind.OUTLIER_POSITIONS) is not None:
            stages.append("outliers")
    codes = header.section(SectionKind.CODES)
    unique = None
    if header.flags & Flags.DEDUP and codes is not None:
        unique = codes.count // header.shape[-1]
    return FrameInfo(
        dtype=header.dtype.numpy.newbyteorder("="), shape=header.shape,
        error_mode=header.error_mode.name.lower(), error_value=header.error_value,
        abs_error=header.abs_error, strategy=Strategy(header.strategy).name.lower() if header.strategy in
        Strategy._value2member_map_ else str(header.strategy),
        stages=tuple(stages), sections={s.kind.name.lower(): s.length for s in header.sections},
        raw_size=header.raw_size, frame_size=header.frame_size, unique_rows=unique)
