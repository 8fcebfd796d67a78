"""rANS decoder wrapper: validate a section completely, then decode it with the kernels.

Every length and offset is checked (:mod:`._section`) before :mod:`embzip.cpu.rans` reads
the section; the kernels also clamp their reads to each chunk and report what they found.
"""

from __future__ import annotations

import numpy as np

from embzip._jit import for_size
from embzip.cpu import rans as _k

from ._section import (
    KIND_CONSTANT,
    check_chunk_errors,
    check_kind,
    check_length,
    parse_constant,
    parse_directory,
    parse_header,
    parse_table,
)


def _check_section(section) -> np.ndarray:
    if not isinstance(section, np.ndarray):
        section = np.frombuffer(section, np.uint8)
    if section.dtype != np.uint8 or section.ndim != 1:
        raise TypeError(f"section must be a 1-D uint8 array, found {section.dtype} {section.shape}")
    section = np.ascontiguousarray(section).view()
    # Kernels only read sections; typing every section read-only compiles them once
    # instead of once per writeability.
    section.flags.writeable = False
    return section


def _check_out(out, count: int, step=None) -> None:
    if out is None:
        return
    dtype = np.dtype(np.uint32) if step is None else step.dtype
    if not isinstance(out, np.ndarray) or out.dtype != dtype:
        found = getattr(out, "dtype", type(out).__name__)
        raise TypeError(f"out must be a {dtype} numpy array, found {found}")
    if out.shape != (count,):
        raise ValueError(f"out must have shape ({count},), found {out.shape}")
    if not out.flags.writeable or not out.flags.aligned:
        raise ValueError("out must be writeable and aligned")


def _decode_rans(section: np.ndarray, count: int, out: np.ndarray | None, step=None) -> np.ndarray:
    scale_bits, direct_bits, chunk_log2, lanes = parse_header(section)
    freqs, pos = parse_table(section, scale_bits, direct_bits)
    chunk_size = 1 << chunk_log2
    bounds = parse_directory(section, pos, section.size, -(-count // chunk_size), lanes)
    if out is None:  # only now: the section is consistent with `count`
        out = np.empty(count, np.uint32 if step is None else step.dtype)
    table = np.empty(1 << scale_bits, np.int64)
    _k.build_decoder_table(freqs, table)
    states = np.empty((bounds.shape[0], lanes), np.int64)
    errors = np.zeros((bounds.shape[0], 3), np.int64)
    if step is None:
        kernel, step = _k.decode_chunks, 0.0
    else:
        kernel = _k.decode_dequantize_f32 if step.dtype == np.float32 else _k.decode_dequantize_f64
    kernel = for_size(kernel, out.nbytes)
    kernel(section, bounds, chunk_size, direct_bits, scale_bits, table, states, step, out, errors)
    check_chunk_errors(errors)
    return out


def decode(section, count: int, out: np.ndarray | None = None, step=None) -> np.ndarray:
    """Decode ``count`` symbols from a section written by :func:`encode`.

    Safe on hostile bytes: every length and offset is validated before the kernels run,
    kernels clamp their reads to the chunk, and any inconsistency raises.

    Parameters
    ----------
    section : numpy.ndarray or bytes-like
        uint8 section; may be a read-only, unaligned view into a larger frame.
    count : int
        Number of symbols the section holds (the caller stores it).
    out : numpy.ndarray, optional
        Writeable, aligned array of shape ``(count,)`` to decode into: uint32, or step's
        dtype when ``step`` is given.  On error its contents are unspecified.
    step : numpy.float32 or numpy.float64, optional
        Dequantize while decoding: write ``dtype(unzigzag(symbol)) * step`` (the codec's
        decode rule) instead of the symbol, sparing a pass and a code array.

    Returns
    -------
    numpy.ndarray
        ``out`` (or a new array) holding the symbols.

    Raises
    ------
    embzip.errors.CorruptFrameError
        The section is malformed or does not hold exactly ``count`` symbols.

    Examples
    --------
    >>> import numpy as np
    >>> from embzip.stages.rans import encode
    >>> section = encode(np.arange(1000, dtype=np.uint32) % 7)
    >>> decode(section, 1000)[:8].tolist()
    [0, 1, 2, 3, 4, 5, 6, 0]
    """
    count = int(count)
    if count < 0:
        raise ValueError(f"count must be >= 0, found {count}")
    section = _check_section(section)
    _check_out(out, count, step)
    out_dtype = np.uint32 if step is None else step.dtype
    if check_length(count, section.size):
        return np.empty(0, out_dtype) if out is None else out
    if check_kind(int(section[0])) == KIND_CONSTANT:
        value = parse_constant(section, section.size)
        if step is not None:
            # dtype(q) * dtype(step) as the kernels compute it: a legal but forged large step
            # overflows to inf there silently, so numpy's scalar warning must not leak here
            # (under -W error it would be a foreign exception).
            with np.errstate(over="ignore"):
                value = step.dtype.type((value >> 1) ^ -(value & 1)) * step
        if out is None:
            return np.full(count, value, out_dtype)
        out[:] = value
        return out
    return _decode_rans(section, count, out, step)
