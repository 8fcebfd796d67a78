"""The CPU codec pipeline: quantize -> deduplicate -> encode -> frame, and back.

Arguments arrive validated from ``_api``; this module chains the stages and is the only
place that decides which sections a frame gets.
"""

from __future__ import annotations

import numpy as np

from . import costmodel
from .errors import CorruptFrameError
from .format import FrameHeader, Section, pack_frame
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


def _raw_frame(values: np.ndarray, header: FrameHeader) -> np.ndarray:
    raw = values.astype(values.dtype.newbyteorder("<"), copy=False).reshape(-1)
    section = Section(SectionKind.RAW, Encoder.RAW, raw.size, raw.nbytes)
    import dataclasses

    header = dataclasses.replace(header, flags=Flags.NONE, step=0.0, sections=(section,))
    return pack_frame(header, [raw.view(np.uint8)])


def encode_array(values: np.ndarray, error_mode: ErrorMode, error_value: float, abs_error: float,
                 strategy: Strategy, constant=None, bandwidth=None) -> np.ndarray:
    """Compress a C-contiguous float32/float64 array into a frame (uint8)."""
    dtype_id = DTypeId.from_numpy(values.dtype)
    base = FrameHeader(dtype_id, tuple(values.shape), error_mode, int(strategy), Flags.NONE,
                       float(error_value), float(abs_error), 0.0, ())
    step = quantize.choose_step(abs_error, values.dtype, constant)
    if values.size == 0 or step is None:
        return _raw_frame(values, base)
    flat = values.reshape(-1)
    quantized = quantize.quantize(flat, step, abs_error)
    if quantized.outlier_count * (8 + values.itemsize) >= values.nbytes:
        return _raw_frame(values, base)  # mostly outliers: raw is smaller, skip the encoders

    codes, mask = quantized.codes, quantized.outlier_mask
    sections, payloads, flags = [], [], Flags.NONE
    refs = None
    if values.ndim >= 2 and values.shape[-1] > 0 and flat.size // values.shape[-1] >= 2:
        cols = values.shape[-1]
        found = dedup.deduplicate(codes.reshape(-1, cols), mask.reshape(-1, cols))
        if found.unique_count < found.refs.size:
            flags = Flags.DEDUP
            refs = found.refs
            keep = found.unique_rows
            codes = codes.reshape(-1, cols)[keep].reshape(-1)
            mask = mask.reshape(-1, cols)[keep].reshape(-1)
            flat = flat.reshape(-1, cols)[keep].reshape(-1)

    encoder, section = _encode_stream(codes, strategy, bandwidth)
    sections.append(Section(SectionKind.CODES, encoder, codes.size, section.size))
    payloads.append(section)
    if refs is not None:
        encoder, section = _encode_stream(refs, strategy, bandwidth)
        sections.append(Section(SectionKind.ROW_INDEX, encoder, refs.size, section.size))
        payloads.append(section)
    if quantized.outlier_count:
        positions = np.flatnonzero(mask).astype("<u8")
        outlier_values = flat[positions].astype(values.dtype.newbyteorder("<"), copy=False)
        sections.append(Section(SectionKind.OUTLIER_POSITIONS, Encoder.RAW, positions.size, positions.nbytes))
        sections.append(Section(SectionKind.OUTLIER_VALUES, Encoder.RAW, positions.size, outlier_values.nbytes))
        payloads += [positions.view(np.uint8), outlier_values.view(np.uint8)]
    if sum(p.size for p in payloads) + 24 * (len(sections) - 1) >= values.nbytes:
        return _raw_frame(values, base)  # the raw fallback: never larger than raw + header
    import dataclasses

    header = dataclasses.replace(base, flags=flags, step=float(step), sections=tuple(sections))
    return pack_frame(header, payloads)


def _decode_codes(buf: np.ndarray, sec: Section, step=None, out=None) -> np.ndarray:
    data = buf[sec.offset:sec.offset + sec.length]
    if sec.encoding == Encoder.BITPACK:
        return bitpack.decode(data, sec.count, out=out, step=step)
    codes = rans.decode(data, sec.count)
    if step is None:
        return codes
    return quantize.dequantize(codes, step, out if out is not None else np.empty(sec.count, step.dtype))


def _outliers(buf: np.ndarray, header: FrameHeader, limit: int):
    pos_sec = header.section(SectionKind.OUTLIER_POSITIONS)
    if pos_sec is None:
        return None
    val_sec = header.section(SectionKind.OUTLIER_VALUES)
    positions = np.frombuffer(buf[pos_sec.offset:pos_sec.offset + pos_sec.length].tobytes(), dtype="<u8")
    if positions[-1] >= limit or (positions.size > 1 and not np.all(positions[1:] > positions[:-1])):
        raise CorruptFrameError(f"outlier positions must increase strictly and stay below {limit}")
    dtype = header.dtype.numpy
    values = np.frombuffer(buf[val_sec.offset:val_sec.offset + val_sec.length].tobytes(), dtype=dtype)
    return positions.astype(np.int64), values.astype(dtype.newbyteorder("="))


def decode_into(header: FrameHeader, buf: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Decode a validated frame into ``out`` (C-contiguous, header's dtype and shape)."""
    flat = out.reshape(-1)
    raw = header.section(SectionKind.RAW)
    if raw is not None:
        data = np.frombuffer(buf[raw.offset:raw.offset + raw.length].tobytes(), dtype=header.dtype.numpy)
        flat[:] = data
        return out
    step = out.dtype.type(header.step)
    codes_sec = header.section(SectionKind.CODES)
    if not header.flags & Flags.DEDUP:
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
