"""The CUDA codec pipeline: quantize -> deduplicate -> encode -> frame, and back, on the device.

It mirrors embzip/_codec.py decision for decision (the same step, the same dedup sampling,
the same cost model, the same raw fallback), so that a frame made here is byte-identical to
the CPU frame of the same input; the tests hold both to that. Arrays arrive as validated 1-D
C-contiguous numba device arrays (see embzip/_backend.py). What crosses to the host: sizes
(word and outlier totals, unique-row counts), the rANS histogram (<= 280 counts), per-chunk
byte counts, and the frame header (<= 504 bytes, built on the host, its CRCs finished on the
device).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import costmodel
from ..errors import CorruptFrameError
from ..format import FrameHeader, Section, read_header, section_offsets
from ..format.header import PAYLOAD_CRC_OFFSET, header_bytes, header_length_for
from ..format.ids import DTypeId, Encoder, ErrorMode, Flags, SectionKind, Strategy
from ..stages import quantize as host_quantize
from ..stages import rans as host_rans
from ..stages.dedup import SAMPLE_ROWS, sample_rows, wanted as dedup_wanted
from . import bitpack as kb
from . import checksum as kc
from . import dedup as kd
from . import fused
from . import quantize as kq
from ._launch import CRC_CHUNK_WORDS, THREADS, blocks
from .scan import copy_bytes, device_empty, exclusive_scan, fill, scalars, to_device
from .streams import (decode_bits, deduplicate, plan_bits, rans_decode, rans_encode, rans_histogram,
                      resolve_rows, write_bits)

__all__ = ["encode_array", "decode_frame", "read_device_header", "finite_range", "MAX_HEADER"]

#: The longest header a valid frame has (32 dimensions, 8 sections).
MAX_HEADER = header_length_for(32, 8)
_UINT = {4: np.uint32, 8: np.uint64}


# ------------------------------------------------------------------------------- frames


def _payload_crc(frame, start: int, length: int):
    """Device uint32[1] holding the CRC32C of ``frame[start:start + length]`` (frame 4-aligned)."""
    tables, x2n = kc.device_tables()
    result = device_empty(1, np.uint32)
    fill(result, 0)
    if length:
        usable = frame.shape[0] - frame.shape[0] % 4
        words = frame[:usable].view(np.uint32) if usable else device_empty(1, np.uint32)
        chunks = -(-length // (4 * CRC_CHUNK_WORDS))
        kc.crc_chunks[blocks(chunks), THREADS](words, frame, start, length, tables, x2n, result)
    return result


def _new_frame(header: FrameHeader):
    """(frame, section offsets, header length) for a header whose sections are final."""
    hlen = header_length_for(len(header.shape), len(header.sections))
    payload = sum(s.length for s in header.sections)
    return device_empty(hlen + payload, np.uint8, for_caller=True), section_offsets(header), hlen


def _finish(frame, header: FrameHeader, hlen: int):
    """Write the header, then both CRCs on the device (no host sync)."""
    payload = frame.shape[0] - hlen
    head = np.frombuffer(header_bytes(header, payload, 0), dtype=np.uint8)
    copy_bytes(to_device(head), frame, 0)
    crc = _payload_crc(frame, hlen, payload)
    kc.finish_header[1, 1](frame, hlen, PAYLOAD_CRC_OFFSET, crc, kc.device_tables()[0])
    return frame


def _bytes(array):
    """A contiguous 1-D device array's bytes (a uint8 view)."""
    return array.view(np.uint8)


def _raw_frame(flat, header: FrameHeader):
    section = Section(SectionKind.RAW, Encoder.RAW, flat.shape[0], flat.shape[0] * flat.dtype.itemsize)
    header = dataclasses.replace(header, flags=Flags.NONE, step=0.0, sections=(section,))
    frame, offsets, hlen = _new_frame(header)
    if flat.shape[0]:
        copy_bytes(_bytes(flat), frame, offsets[0])
    return _finish(frame, header, hlen)


def _too_big(payload_bytes: int, section_count: int, raw_bytes: int) -> bool:
    return payload_bytes + 24 * (section_count - 1) >= raw_bytes  # as _codec._too_big


# ------------------------------------------------------------------------------ encoding


def finite_range(flat):
    """(min, max) of the finite values as Python floats, or None (stages.quantize.finite_range)."""
    lo_hi = to_device(np.array([np.inf, -np.inf]))
    count = device_empty(1, np.int64)
    fill(count, 0)
    if flat.shape[0]:
        kq.finite_range[blocks(flat.shape[0]), THREADS](flat, lo_hi, count)
    lo, hi = scalars(lo_hi)
    return None if scalars(count)[0] == 0 else (lo, hi)


def _quantize(flat, step, abs_error: float):
    n = flat.shape[0]
    codes = device_empty(n, np.uint32)
    mask = device_empty(n, np.uint8)
    count = device_empty(1, np.int64)
    fill(count, 0)
    kernel = kq.quantize_f32 if flat.dtype == np.float32 else kq.quantize_f64
    if n:
        kernel[blocks(n), THREADS](flat, 1.0 / float(step), step, float(abs_error), codes, mask, count)
    return codes, mask, scalars(count)[0]


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
    return deduplicate(codes, mask, picked.shape[0], cols)[2] < picked.shape[0]


def encode_array(flat, shape, error_mode: ErrorMode, error_value: float, abs_error: float,
                 strategy: Strategy, constant=None, bandwidth=None, dedup_hint=None):
    """Compress a 1-D C-contiguous float32/float64 device array of logical ``shape``."""
    base = FrameHeader(DTypeId.from_numpy(flat.dtype), tuple(shape), error_mode, int(strategy), Flags.NONE,
                       float(error_value), float(abs_error), 0.0, ())
    step = host_quantize.choose_step(abs_error, flat.dtype, constant)
    if flat.shape[0] == 0 or step is None:
        return _raw_frame(flat, base)
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
    if _too_big(sum(s.length for s in sections), len(sections), flat.shape[0] * flat.dtype.itemsize):
        return _raw_frame(flat, base)
    header = dataclasses.replace(base, step=float(step), sections=tuple(sections))
    frame, offsets, hlen = _new_frame(header)
    positions_at, values_at = (offsets[1], offsets[2]) if plan.outliers else (0, 0)
    write_bits(plan, fused.pack_f32 if f32 else fused.pack_f64, fused.pack_tail_f32 if f32 else fused.pack_tail_f64,
               flat, frame, offsets[0], inv_step, step, bound, frame, positions_at, values_at,
               flat.view(_UINT[flat.dtype.itemsize]))
    return _finish(frame, header, hlen)


def _bitpack_section(stream, plan=None):
    plan = plan_bits(kb.plan_codes, stream) if plan is None else plan
    section = device_empty(plan.size, np.uint8)
    write_bits(plan, kb.pack_codes, kb.pack_tail_codes, stream, section, 0)
    return section


def _encode_stream(stream, strategy: Strategy, bandwidth):
    """_codec._encode_stream on the device: (Encoder, device section)."""
    if strategy == Strategy.FAST:
        return Encoder.BITPACK, _bitpack_section(stream)
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


def _outlier_payloads(flat, mask, count: int):
    numbers = exclusive_scan(mask)
    positions = device_empty(count, np.uint64)
    utype = _UINT[flat.dtype.itemsize]
    values = device_empty(count, utype)
    kq.compact_outliers[blocks(mask.shape[0]), THREADS](mask, numbers, flat.view(utype), positions, values)
    return [_bytes(positions), _bytes(values)]


def _encode_materialized(flat, shape, base: FrameHeader, step, strategy: Strategy, bandwidth, try_dedup: bool):
    """Quantize into a code array, optionally deduplicate rows, then encode the streams."""
    raw_bytes = flat.shape[0] * flat.dtype.itemsize
    codes, mask, outliers = _quantize(flat, step, base.abs_error)
    if outliers * (8 + flat.dtype.itemsize) >= raw_bytes:
        return _raw_frame(flat, base)
    sections, payloads, flags, refs = [], [], Flags.NONE, None
    original = flat  # the raw fallback stores every row, not the unique ones
    if try_dedup:
        cols = shape[-1]
        found_refs, unique_rows, unique = deduplicate(codes, mask, flat.shape[0] // cols, cols)
        if unique < found_refs.shape[0]:
            flags, refs = Flags.DEDUP, found_refs
            codes, mask, flat = (_gather(a, cols, unique_rows) for a in (codes, mask, flat))
    encoder, section = _encode_stream(codes, strategy, bandwidth)
    sections.append(Section(SectionKind.CODES, encoder, codes.shape[0], section.shape[0]))
    payloads.append(section)
    if refs is not None:
        encoder, section = _encode_stream(refs, strategy, bandwidth)
        sections.append(Section(SectionKind.ROW_INDEX, encoder, refs.shape[0], section.shape[0]))
        payloads.append(section)
    if outliers:
        sections += _outlier_sections(outliers, flat.dtype.itemsize)
        payloads += _outlier_payloads(flat, mask, outliers)
    if _too_big(sum(p.shape[0] for p in payloads), len(sections), raw_bytes):
        return _raw_frame(original, base)
    header = dataclasses.replace(base, flags=flags, step=float(step), sections=tuple(sections))
    frame, offsets, hlen = _new_frame(header)
    for offset, payload in zip(offsets, payloads):
        copy_bytes(payload, frame, offset)
    return _finish(frame, header, hlen)


# ------------------------------------------------------------------------------ decoding


class _HeadView:
    """The first bytes of a device frame and the frame's size: all that read_header reads
    (it slices ``[:4]``, ``[:52]`` and ``[:header_length]``, header_length <= MAX_HEADER)."""

    def __init__(self, head: np.ndarray, size: int):
        self._head = head
        self.size = size

    def __getitem__(self, key):
        if not isinstance(key, slice) or key.start not in (None, 0) or (key.stop or 0) > max(self._head.size, 0) \
                and self._head.size < self.size:
            raise IndexError("only the header of a device frame is on the host")
        return self._head[key]


def read_device_header(frame) -> FrameHeader:
    """Parse and validate the header of a device frame (its first <= 504 bytes are copied)."""
    size = frame.shape[0]
    head = frame[:min(size, MAX_HEADER)].copy_to_host() if size else np.empty(0, np.uint8)
    return read_header(_HeadView(head, size))


def decode_frame(frame, header: FrameHeader, out_flat, verify: bool):
    """Decode a device frame (8-byte aligned) with a validated ``header`` into ``out_flat``."""
    if verify:
        crc = _payload_crc(frame, header.header_length, header.payload_length)
        if scalars(crc)[0] != header.payload_crc:
            raise CorruptFrameError("payload checksum mismatch: the payload is corrupted")
    raw = header.section(SectionKind.RAW)
    if raw is not None:
        if raw.length:
            copy_bytes(frame[raw.offset:raw.offset + raw.length], _bytes(out_flat), 0)
        return out_flat
    step = out_flat.dtype.type(header.step)
    codes_sec = header.section(SectionKind.CODES)
    if not header.flags & Flags.DEDUP:
        _decode_codes(frame, codes_sec, step, out_flat)
        _patch_outliers(frame, header, out_flat)
        return out_flat
    cols = header.shape[-1]
    unique = device_empty(codes_sec.count, out_flat.dtype)
    _decode_codes(frame, codes_sec, step, unique)
    _patch_outliers(frame, header, unique)
    refs = _decode_codes(frame, header.section(SectionKind.ROW_INDEX))
    row_ids = resolve_rows(refs, codes_sec.count // cols)
    if out_flat.shape[0]:
        kd.expand_rows[blocks(out_flat.shape[0]), THREADS](unique, cols, row_ids, out_flat)
    return out_flat


def _decode_codes(frame, sec: Section, step=None, out=None):
    if sec.encoding == Encoder.BITPACK:
        return decode_bits(frame, sec.offset, sec.length, sec.count, step, out)
    codes = rans_decode(frame, sec.offset, sec.length, sec.count)
    if step is None:
        return codes
    out = device_empty(sec.count, step.dtype) if out is None else out
    kernel = kq.dequantize_f32 if step.dtype == np.float32 else kq.dequantize_f64
    if sec.count:
        kernel[blocks(sec.count), THREADS](codes, step, out)
    return out


def _patch_outliers(frame, header: FrameHeader, out):
    pos_sec = header.section(SectionKind.OUTLIER_POSITIONS)
    if pos_sec is None:
        return
    val_sec = header.section(SectionKind.OUTLIER_VALUES)
    limit = out.shape[0]
    bad = device_empty(1, np.int64)
    fill(bad, 0)
    count = pos_sec.count
    kq.check_positions[blocks(count), THREADS](frame, pos_sec.offset, count, limit, bad)
    if scalars(bad)[0]:
        raise CorruptFrameError(f"outlier positions must increase strictly and stay below {limit}")
    patch = kq.patch_outliers_f32 if out.dtype == np.float32 else kq.patch_outliers_f64
    patch[blocks(count), THREADS](out.view(_UINT[out.dtype.itemsize]), frame, pos_sec.offset, val_sec.offset, count)
