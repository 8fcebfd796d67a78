"""The CPU codec pipeline: quantize -> deduplicate -> encode -> frame, and back.

Arguments arrive validated from ``_api``; this module chains the stages and is the only
place that decides which sections a frame gets.
"""

from __future__ import annotations


import numpy as np

from . import costmodel
from ._jit import for_size, threads_for
from .errors import CorruptFrameError
from .cpu import bitpack as bitpack_kernels
from .cpu import fused
from .format import FrameHeader, Section, allocate_frame, finish_frame, pack_frame, section_offsets
from .format.ids import DTypeId, Encoder, ErrorMode, Flags, SectionKind, Strategy
from .stages import bitpack, dedup, quantize, rans

__all__ = ["encode_array", "decode_into"]

_ENCODER_NAMES = {Encoder.BITPACK: "bitpack", Encoder.RANS: "rans"}


def _encode_stream(stream: np.ndarray, strategy: Strategy, bandwidth):
    """Encode one uint32 stream with the strategy's encoder; return (Encoder, section)."""
    if strategy == Strategy.FAST:
        return Encoder.BITPACK, bitpack.encode(stream)
    if strategy == Strategy.COMPACT:
        return Encoder.RANS, rans.encode(stream)
    widths, packed_size = bitpack.plan(stream)
    sizes = {"bitpack": packed_size, "rans": rans.estimate_size(stream)}
    if costmodel.choose(4 * stream.size, sizes, bandwidth) == "rans":
        section = rans.encode(stream)
        if section.size < packed_size:  # the estimate is close, not exact: keep the promise
            return Encoder.RANS, section
    return Encoder.BITPACK, bitpack.encode(stream, widths=widths)


def _with(base: FrameHeader, flags: Flags, step: float, sections: tuple) -> FrameHeader:
    """``base`` with these fields: dataclasses.replace costs ~5 us (it introspects the fields)."""
    return FrameHeader(base.dtype, base.shape, base.error_mode, base.strategy, flags, base.error_value,
                       base.abs_error, step, sections)


def _raw_frame(values: np.ndarray, header: FrameHeader) -> np.ndarray:
    raw = values.astype(values.dtype.newbyteorder("<"), copy=False).reshape(-1)
    section = Section(SectionKind.RAW, Encoder.RAW, raw.size, raw.nbytes)
    header = _with(header, Flags.NONE, 0.0, (section,))
    return pack_frame(header, [raw.view(np.uint8)])


def _outlier_payloads(flat: np.ndarray, positions: np.ndarray):
    positions = positions.astype("<u8", copy=False)
    values = flat[positions].astype(flat.dtype.newbyteorder("<"), copy=False)
    sections = [Section(SectionKind.OUTLIER_POSITIONS, Encoder.RAW, positions.size, positions.nbytes),
                Section(SectionKind.OUTLIER_VALUES, Encoder.RAW, positions.size, values.nbytes)]
    return sections, [positions.view(np.uint8), values.view(np.uint8)]


def _dedup_candidate(values: np.ndarray, step, abs_error: float) -> bool:
    """Whether to quantize every row and look for repeats (the materializing path)."""
    if values.ndim < 2 or values.shape[-1] == 0:
        return False
    cols = values.shape[-1]
    rows = values.size // cols
    if rows < 2:
        return False
    if rows <= dedup.SAMPLE_ROWS:
        return True
    sample = values.reshape(rows, cols)[dedup.sample_rows(rows)]
    with threads_for(sample.nbytes):  # a small job inside a big one: skip the thread wake-ups
        quantized = quantize.quantize(sample.reshape(-1), step, abs_error)
        found = dedup.deduplicate(quantized.codes.reshape(-1, cols), quantized.outlier_mask.reshape(-1, cols))
    return found.unique_count < sample.shape[0]


def encode_array(values: np.ndarray, error_mode: ErrorMode, error_value: float, abs_error: float,
                 strategy: Strategy, constant=None, bandwidth=None, dedup_hint=None) -> np.ndarray:
    """Compress a C-contiguous float32/float64 array into a frame (uint8)."""
    dtype_id = DTypeId.from_numpy(values.dtype)
    base = FrameHeader(dtype_id, tuple(values.shape), error_mode, int(strategy), Flags.NONE,
                       float(error_value), float(abs_error), 0.0, ())
    step = quantize.choose_step(abs_error, values.dtype, constant)
    if values.size == 0 or step is None:
        return _raw_frame(values, base)
    if dedup.wanted(dedup_hint, values.shape, lambda: _dedup_candidate(values, step, abs_error)):
        return _encode_materialized(values, base, step, strategy, bandwidth, try_dedup=True)
    if strategy == Strategy.FAST:
        return _encode_fast(values, base, step)
    return _encode_materialized(values, base, step, strategy, bandwidth, try_dedup=False)


def _too_big(payload_bytes: int, section_count: int, values: np.ndarray) -> bool:
    # The raw fallback: a frame is never larger than the raw data plus a RAW frame's header.
    return payload_bytes + 24 * (section_count - 1) >= values.nbytes


def _encode_fast(values: np.ndarray, base: FrameHeader, step) -> np.ndarray:
    """Fast strategy without dedup: fused quantize + bit-pack straight into the frame."""
    flat = values.reshape(-1)
    n = flat.size
    block = bitpack.BLOCK_SIZE
    full = n // block
    body, tail = flat[:full * block], flat[full * block:]
    inv_step, bound = 1.0 / float(step), float(base.abs_error)
    plan_blocks, pack_blocks = ((fused.plan_blocks_f32, fused.pack_blocks_f32) if flat.dtype == np.float32
                                else (fused.plan_blocks_f64, fused.pack_blocks_f64))
    plan_blocks, pack_blocks = for_size(plan_blocks, flat.nbytes), for_size(pack_blocks, flat.nbytes)
    widths = np.empty(full + (1 if tail.size else 0), dtype=np.uint8)
    block_outliers = np.empty(full, dtype=np.int64)
    plan_blocks(body, inv_step, step, bound, widths[:full], block_outliers)
    tail_q = quantize.quantize(tail, step, bound) if tail.size else None
    tail_outliers = tail_q.outlier_count if tail.size else 0
    if tail.size:
        widths[full] = int(np.bitwise_or.reduce(tail_q.codes)).bit_length()
    outlier_count = int(block_outliers.sum()) + tail_outliers
    codes_size = bitpack.section_size(n, widths)
    sections = [Section(SectionKind.CODES, Encoder.BITPACK, n, codes_size)]
    if outlier_count:
        sections += [Section(SectionKind.OUTLIER_POSITIONS, Encoder.RAW, outlier_count, 8 * outlier_count),
                     Section(SectionKind.OUTLIER_VALUES, Encoder.RAW, outlier_count, outlier_count * flat.itemsize)]
    if _too_big(sum(s.length for s in sections), len(sections), values):
        return _raw_frame(values, base)
    header = _with(base, base.flags, float(step), tuple(sections))
    frame = allocate_frame(header)
    offsets = section_offsets(header)
    section = frame[offsets[0]:offsets[0] + codes_size]
    head = bitpack.write_head(section, widths)
    _, _, word_offsets, _ = bitpack.geometry(n, widths)
    nwords = int(word_offsets[-1])
    words = section[head:head + 4 * nwords].view(np.uint32)  # aligned: see allocate_frame
    outlier_offsets = np.zeros(full, dtype=np.int64)
    np.cumsum(block_outliers[:-1], out=outlier_offsets[1:])
    positions = np.empty(outlier_count, dtype=np.int64)
    scratch = np.empty((fused.SCRATCH_ROWS, block), dtype=np.uint32)
    pack_blocks(body, inv_step, step, bound, widths[:full], word_offsets, words,
                block_outliers, outlier_offsets, positions, scratch)
    if tail.size:
        bitpack_kernels.pack_tail(tail_q.codes, int(widths[full]), section[head + 4 * nwords:])
        positions[outlier_count - tail_outliers:] = full * block + np.flatnonzero(tail_q.outlier_mask)
    if outlier_count:
        _, payloads = _outlier_payloads(flat, positions)
        for offset, payload in zip(offsets[1:], payloads):
            frame[offset:offset + payload.size] = payload
    return finish_frame(frame, header)


def _encode_materialized(values: np.ndarray, base: FrameHeader, step, strategy: Strategy, bandwidth,
                         try_dedup: bool) -> np.ndarray:
    """Quantize into a code array, optionally deduplicate rows, then encode the streams."""
    flat = values.reshape(-1)
    quantized = quantize.quantize(flat, step, base.abs_error)
    if quantized.outlier_count * (8 + values.itemsize) >= values.nbytes:
        return _raw_frame(values, base)  # mostly outliers: raw is smaller, skip the encoders
    codes, mask = quantized.codes, quantized.outlier_mask
    sections, payloads, flags, refs = [], [], Flags.NONE, None
    if try_dedup:
        cols = values.shape[-1]
        found = dedup.deduplicate(codes.reshape(-1, cols), mask.reshape(-1, cols))
        if found.unique_count < found.refs.size:
            flags, refs, keep = Flags.DEDUP, found.refs, found.unique_rows
            codes = np.take(codes.reshape(-1, cols), keep, axis=0).reshape(-1)
            if quantized.outlier_count:  # the mask and values serve only the outlier sections
                mask = np.take(mask.reshape(-1, cols), keep, axis=0).reshape(-1)
                flat = np.take(flat.reshape(-1, cols), keep, axis=0).reshape(-1)
    encoder, section = _encode_stream(codes, strategy, bandwidth)
    sections.append(Section(SectionKind.CODES, encoder, codes.size, section.size))
    payloads.append(section)
    if refs is not None:
        encoder, section = _encode_stream(refs, strategy, bandwidth)
        sections.append(Section(SectionKind.ROW_INDEX, encoder, refs.size, section.size))
        payloads.append(section)
    if quantized.outlier_count:
        outlier_sections, outlier_payloads = _outlier_payloads(flat, np.flatnonzero(mask))
        sections += outlier_sections
        payloads += outlier_payloads
    if _too_big(sum(p.size for p in payloads), len(sections), values):
        return _raw_frame(values, base)
    header = _with(base, flags, float(step), tuple(sections))
    return pack_frame(header, payloads)


def _decode_codes(buf: np.ndarray, sec: Section, step=None, out=None) -> np.ndarray:
    data = buf[sec.offset:sec.offset + sec.length]
    if sec.encoding == Encoder.BITPACK:
        return bitpack.decode(data, sec.count, out=out, step=step)
    return rans.decode(data, sec.count, out=out, step=step)


def _outliers(buf: np.ndarray, header: FrameHeader, limit: int):
    pos_sec = header.section(SectionKind.OUTLIER_POSITIONS)
    if pos_sec is None:
        return None
    val_sec = header.section(SectionKind.OUTLIER_VALUES)
    # views of the frame's bytes (unaligned, little-endian), then one aligned native copy each
    # for the kernel: 12 (float32) or 16 (float64) bytes of working memory per outlier
    # checked as stored (unsigned): a position of 2**63 or more is negative as int64, and a
    # negative index below passed "< limit" and wrote before the array (a bit flip found it)
    stored = buf[pos_sec.offset:pos_sec.offset + pos_sec.length].view("<u8")
    if stored[-1] >= limit or (stored.size > 1 and not np.all(stored[1:] > stored[:-1])):
        raise CorruptFrameError(f"outlier positions must increase strictly and stay below {limit}")
    positions = stored.astype(np.int64)
    dtype = header.dtype.numpy
    values = buf[val_sec.offset:val_sec.offset + val_sec.length].view(dtype)
    return positions, values.astype(dtype.newbyteorder("="))


def decode_into(header: FrameHeader, buf: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Decode a validated frame into ``out`` (C-contiguous, header's dtype and shape)."""
    flat = out.reshape(-1)
    raw = header.section(SectionKind.RAW)
    if raw is not None:
        flat[:] = buf[raw.offset:raw.offset + raw.length].view(header.dtype.numpy)  # (a view: no copy)
        return out
    step = out.dtype.type(header.step)
    codes_sec = header.section(SectionKind.CODES)
    if header.flags != Flags.DEDUP:  # validated: 0 or DEDUP (IntFlag's & costs ~1 us)
        _decode_codes(buf, codes_sec, step, flat)
        outliers = _outliers(buf, header, flat.size)
        if outliers is not None:
            quantize.patch_outliers(flat, *outliers)
        return out
    cols = header.shape[-1]
    unique = np.empty(codes_sec.count, dtype=out.dtype)
    _decode_codes(buf, codes_sec, step, unique)
    outliers = _outliers(buf, header, unique.size)
    if outliers is not None:
        quantize.patch_outliers(unique, *outliers)
    refs = _decode_codes(buf, header.section(SectionKind.ROW_INDEX))
    row_ids = dedup.resolve(refs, codes_sec.count // cols)
    dedup.expand(unique.reshape(-1, cols), row_ids, out.reshape(-1, cols))
    return out
