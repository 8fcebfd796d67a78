"""The CUDA encoder: quantize -> deduplicate -> encode -> frame, on the device (decode.py goes back).

It mirrors embzip/_codec.py decision for decision (the same step, the same dedup sampling,
the same cost model, the same raw fallback), so that a frame made here is byte-identical to
the CPU frame of the same input; the tests hold both to that. Arrays arrive as validated 1-D
C-contiguous numba device arrays (see embzip/_backend.py). What crosses to the host: sizes
(word and outlier totals, unique-row counts) and the finite range, read from counter slots
(embzip.cuda.memory), the rANS histogram (<= 280 counts) and per-chunk byte counts; the frame
header (<= 504 bytes, built on the host) goes to the device once, its CRCs finished there.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import costmodel
from ..format import FrameHeader, Section
from ..format.ids import DTypeId, Encoder, ErrorMode, Flags, SectionKind, Strategy
from ..stages import quantize as host_quantize
from ..stages import rans as host_rans
from ..stages.dedup import SAMPLE_ROWS, sample_rows, wanted as dedup_wanted
from . import bitpack as kb
from . import dedup as kd
from . import fused
from . import quantize as kq
from ._launch import THREADS, blocks
from .decode import check_payload, decode_frame, read_device_header
from .frames import MAX_HEADER, UINT, finish, new_frame, raw_frame, too_big
from .memory import current_workspace, in_workspace
from .scan import copy_bytes, device_empty, exclusive_scan, to_device
from .streams import BitPlan, deduplicate, plan_bits, rans_encode, rans_histogram, resolve_plans, write_bits

__all__ = ["encode_array", "decode_frame", "check_payload", "read_device_header", "finite_range", "MAX_HEADER"]

_EXPONENT = {4: np.uint64(0x7F800000), 8: np.uint64(0x7FF0000000000000)}  # exponent fields: inf and NaN


# ------------------------------------------------------------------------------ encoding


@in_workspace
def finite_range(flat):
    """(min, max) of the finite values as Python floats, or None (stages.quantize.finite_range)."""
    ws = current_workspace()
    keys = ws.counters(2)
    itemsize = flat.dtype.itemsize
    if flat.shape[0]:
        kq.finite_range[blocks(flat.shape[0]), THREADS](flat.view(UINT[itemsize]), np.uint64(1 << (8 * itemsize - 1)),
                                                        _EXPONENT[itemsize], keys.device.view(np.uint64))
    return kq.range_from_keys(ws.read(keys)[0], flat.dtype)


def _quantize(flat, step, abs_error: float):
    """(codes, outlier mask, Counters whose slot will hold the outlier count)."""
    n = flat.shape[0]
    codes = device_empty(n, np.uint32)
    mask = device_empty(n, np.uint8)
    count = current_workspace().counters(1)
    kernel = kq.quantize_f32 if flat.dtype == np.float32 else kq.quantize_f64
    if n:
        kernel[blocks(n), THREADS](flat, 1.0 / float(step), step, float(abs_error), codes, mask, count.device)
    return codes, mask, count


def _gather(src, cols: int, rows):
    out = device_empty(rows.shape[0] * cols, src.dtype)
    if out.shape[0]:
        kd.gather_rows[blocks(out.shape[0]), THREADS](src, cols, rows, out)
    return out


def _dedup_candidate(flat, shape, step, abs_error: float) -> bool:
    """_codec._dedup_candidate on the device: the same rows sampled, the same verdict."""
    if len(shape) < 2 or shape[-1] == 0:
        return False
    cols = shape[-1]
    rows = flat.shape[0] // cols
    if rows < 2:
        return False
    if rows <= SAMPLE_ROWS:
        return True
    picked = to_device(sample_rows(rows))
    codes, mask, _ = _quantize(_gather(flat, cols, picked), step, abs_error)
    found = deduplicate(codes, mask, picked.shape[0], cols)[2]
    return current_workspace().read(found)[0][0] < picked.shape[0]


@in_workspace
def encode_array(flat, shape, error_mode: ErrorMode, error_value: float, abs_error: float,
                 strategy: Strategy, constant=None, bandwidth=None, dedup_hint=None):
    """Compress a 1-D C-contiguous float32/float64 device array of logical ``shape``."""
    base = FrameHeader(DTypeId.from_numpy(flat.dtype), tuple(shape), error_mode, int(strategy), Flags.NONE,
                       float(error_value), float(abs_error), 0.0, ())
    step = host_quantize.choose_step(abs_error, flat.dtype, constant)
    if flat.shape[0] == 0 or step is None:
        return raw_frame(flat, base)
    if dedup_wanted(dedup_hint, shape, lambda: _dedup_candidate(flat, shape, step, abs_error)):
        return _encode_materialized(flat, shape, base, step, strategy, bandwidth, try_dedup=True)
    if strategy == Strategy.FAST:
        return _encode_fast(flat, base, step)
    return _encode_materialized(flat, shape, base, step, strategy, bandwidth, try_dedup=False)


def _outlier_sections(count: int, itemsize: int):
    return [Section(SectionKind.OUTLIER_POSITIONS, Encoder.RAW, count, 8 * count),
            Section(SectionKind.OUTLIER_VALUES, Encoder.RAW, count, count * itemsize)]


def _encode_fast(flat, base: FrameHeader, step):
    """Fused quantize + bit-pack straight into the frame (two passes over the input)."""
    f32 = flat.dtype == np.float32
    inv_step, bound = 1.0 / float(step), float(base.abs_error)
    plan = plan_bits(fused.plan_f32 if f32 else fused.plan_f64, flat, inv_step, step, bound)
    sections = [Section(SectionKind.CODES, Encoder.BITPACK, flat.shape[0], plan.size)]
    if plan.outliers:
        sections += _outlier_sections(plan.outliers, flat.dtype.itemsize)
    if too_big(sum(s.length for s in sections), len(sections), flat.shape[0] * flat.dtype.itemsize):
        return raw_frame(flat, base)
    header = dataclasses.replace(base, step=float(step), sections=tuple(sections))
    frame = new_frame(header)
    data, offsets = frame.data, frame.offsets
    positions_at, values_at = (offsets[1], offsets[2]) if plan.outliers else (0, 0)
    write_bits(plan, fused.pack_f32 if f32 else fused.pack_f64, fused.pack_tail_f32 if f32 else fused.pack_tail_f64,
               flat, data, offsets[0], inv_step, step, bound, data, positions_at, values_at,
               flat.view(UINT[flat.dtype.itemsize]))
    return finish(frame)


def _bitpack_section(stream, plan=None):
    plan = plan_bits(kb.plan_codes, stream) if plan is None else plan
    section = device_empty(plan.size, np.uint8)
    write_bits(plan, kb.pack_codes, kb.pack_tail_codes, stream, section, 0)
    return section


def _encode_stream(stream, strategy: Strategy, bandwidth):
    """_codec._encode_stream on the device for COMPACT and AUTO: (Encoder, device section)."""
    if strategy == Strategy.COMPACT:
        return Encoder.RANS, rans_encode(stream)
    plan = plan_bits(kb.plan_codes, stream)
    hist = rans_histogram(stream)
    sizes = {"bitpack": plan.size, "rans": host_rans.estimate_size(hist)}
    if costmodel.choose(4 * stream.shape[0], sizes, bandwidth) == "rans":
        section = rans_encode(stream, hist)
        if section.shape[0] < plan.size:
            return Encoder.RANS, section
    return Encoder.BITPACK, _bitpack_section(stream, plan)


def _encode_streams(streams: list, strategy: Strategy, bandwidth) -> list:
    """(Encoder, payload) per stream: a payload is a device section, or with FAST a BitPlan
    written straight into the frame later (all plans' sizes read in one host copy)."""
    if strategy != Strategy.FAST:
        return [_encode_stream(stream, strategy, bandwidth) for stream in streams]
    plans = [plan_bits(kb.plan_codes, stream, resolve=False) for stream in streams]
    resolve_plans(*plans)
    return [(Encoder.BITPACK, plan) for plan in plans]


def _payload_size(payload) -> int:
    return payload.size if isinstance(payload, BitPlan) else payload.shape[0]


def _write_payload(payload, stream, frame, at: int) -> None:
    if not isinstance(payload, BitPlan):
        copy_bytes(payload, frame, at)
    elif at % 4 == 0:  # (bit-packed words are written as uint32)
        write_bits(payload, kb.pack_codes, kb.pack_tail_codes, stream, frame, at)
    else:
        copy_bytes(_bitpack_section(stream, payload), frame, at)


def _write_outliers(flat, mask, frame, positions_at: int, values_at: int) -> None:
    numbers = exclusive_scan(mask)
    itemsize = flat.dtype.itemsize
    kq.compact_outliers[blocks(mask.shape[0]), THREADS](mask, numbers, flat.view(UINT[itemsize]), frame,
                                                        positions_at, values_at, itemsize)


def _encode_materialized(flat, shape, base: FrameHeader, step, strategy: Strategy, bandwidth, try_dedup: bool):
    """Quantize into a code array, optionally deduplicate rows, then encode the streams."""
    raw_bytes = flat.shape[0] * flat.dtype.itemsize
    ws = current_workspace()
    codes, mask, outlier_count = _quantize(flat, step, base.abs_error)
    if try_dedup:  # (queued before the outlier count is read: one host copy reads both)
        cols = shape[-1]
        found_refs, unique_rows, found = deduplicate(codes, mask, flat.shape[0] // cols, cols)
        (outliers,), (unique, _) = ws.read(outlier_count, found)
    else:
        (outliers,), unique = ws.read(outlier_count)[0], None
    if outliers * (8 + flat.dtype.itemsize) >= raw_bytes:
        return raw_frame(flat, base)
    flags, streams, kinds = Flags.NONE, [codes], [SectionKind.CODES]
    original = flat  # the raw fallback stores every row, not the unique ones
    if unique is not None and unique < found_refs.shape[0]:
        flags = Flags.DEDUP
        codes, mask, flat = (_gather(a, cols, unique_rows[:unique]) for a in (codes, mask, flat))
        streams, kinds = [codes, found_refs], [SectionKind.CODES, SectionKind.ROW_INDEX]
    encoded = _encode_streams(streams, strategy, bandwidth)
    sections = [Section(kind, encoder, stream.shape[0], _payload_size(payload))
                for kind, stream, (encoder, payload) in zip(kinds, streams, encoded)]
    if outliers:
        sections += _outlier_sections(outliers, flat.dtype.itemsize)
    if too_big(sum(s.length for s in sections), len(sections), raw_bytes):
        return raw_frame(original, base)
    header = dataclasses.replace(base, flags=flags, step=float(step), sections=tuple(sections))
    frame = new_frame(header)
    offsets = frame.offsets
    for offset, stream, (_, payload) in zip(offsets, streams, encoded):
        _write_payload(payload, stream, frame.data, offset)
    if outliers:
        _write_outliers(flat, mask, frame.data, offsets[len(streams)], offsets[len(streams) + 1])
    return finish(frame)
