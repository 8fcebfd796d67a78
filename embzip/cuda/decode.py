"""The CUDA decoder: a device frame back into values (the encoder is pipeline.py).

It raises the CPU decoder's errors, word for word and in the same order, for every corrupt or
hostile frame; every offset a kernel reads is checked first (the header by read_header,
each section by its stage wrapper in streams.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import CorruptFrameError
from ..format import FrameHeader, Section, read_header
from ..format.ids import Encoder, Flags, SectionKind
from . import dedup as kd
from . import quantize as kq
from ._launch import THREADS, blocks
from .frames import MAX_HEADER, UINT, as_bytes, payload_crc
from .memory import current_workspace, in_workspace
from .scan import copy_bytes, device_empty
from .streams import (check_bits, decode_bits, judge_rans_chunks, rans_decode, resolve_rows, start_rans_decode,
                      unpack_bits)

__all__ = ["decode_frame", "read_device_header"]



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


@in_workspace
def read_device_header(frame) -> FrameHeader:
    """Parse and validate the header of a device frame (its first <= 504 bytes are copied)."""
    size = frame.shape[0]
    head = frame[:min(size, MAX_HEADER)].copy_to_host() if size else np.empty(0, np.uint8)
    return read_header(_HeadView(head, size))


@in_workspace
def decode_frame(frame, header: FrameHeader, out_flat, verify: bool):
    """Decode a device frame (8-byte aligned) with a validated ``header`` into ``out_flat``.

    The payload CRC, the checks of the code section (a bit-packed width table, or the rANS
    chunk decoders' verdicts) and of the outlier positions run as kernels and are read back
    together in one host copy, then judged in the CPU's order (the same errors).
    """
    ws = current_workspace()
    crc = payload_crc(frame, header.header_length, header.payload_length) if verify else None
    raw = header.section(SectionKind.RAW)
    codes_sec = header.section(SectionKind.CODES)
    dedup = bool(header.flags & Flags.DEDUP)
    bits = symbols = chunk_verdicts = positions = None
    if raw is None:
        try:  # what the host finds wrong in a section's head is raised here, after the CRC
            if codes_sec.encoding == Encoder.BITPACK:
                bits = check_bits(frame, codes_sec.offset, codes_sec.length, codes_sec.count)
            else:
                symbols, chunk_verdicts = start_rans_decode(frame, codes_sec.offset, codes_sec.length,
                                                            codes_sec.count)
        except CorruptFrameError:
            _judge_crc(header, crc and ws.read(crc)[0])
            raise
        positions = _check_positions(frame, header, codes_sec.count if dedup else out_flat.shape[0])
    pending = [crc, bits and bits.stats, bits and bits.totals, chunk_verdicts, positions]
    values = iter(ws.read(*(c for c in pending if c is not None)))
    read = [c and next(values) for c in pending]  # (None where nothing was queued)
    _judge_crc(header, read[0])
    if raw is not None:
        if raw.length:
            copy_bytes(frame[raw.offset:raw.offset + raw.length], as_bytes(out_flat), 0)
        return out_flat
    step = out_flat.dtype.type(header.step)
    decoded = out_flat if not dedup else device_empty(codes_sec.count, out_flat.dtype)
    if bits is not None:
        unpack_bits(frame, bits, read[1], read[2], step, decoded)
    else:
        if chunk_verdicts is not None:
            judge_rans_chunks(read[3])
        _dequantize(symbols, step, decoded)
    if positions is not None:
        _judge_positions(read[4], decoded.shape[0])
        _patch_outliers(frame, header, decoded)
    if not dedup:
        return out_flat
    cols = header.shape[-1]
    refs = _decode_codes(frame, header.section(SectionKind.ROW_INDEX))
    row_ids = resolve_rows(refs, codes_sec.count // cols)
    if out_flat.shape[0]:
        kd.expand_rows[blocks(out_flat.shape[0]), THREADS](decoded, cols, row_ids, out_flat)
    return out_flat


@in_workspace
def check_payload(frame, header: FrameHeader) -> None:
    """Raise CorruptFrameError when the payload's CRC32C is not the header's (a host read).

    For the out-of-memory path: a frame whose output cannot be allocated is judged as the
    CPU judges it, which checks the CRC before it allocates (the same error on both)."""
    _judge_crc(header, current_workspace().read(payload_crc(frame, header.header_length, header.payload_length))[0])


def _judge_crc(header: FrameHeader, crc) -> None:
    """``crc``: the payload CRC as read (a list of one), or None when not verified."""
    if crc is not None and crc[0] != header.payload_crc:
        raise CorruptFrameError("payload checksum mismatch: the payload is corrupted")


def _decode_codes(frame, sec: Section):
    """The symbols of a reference-stream section (its own host read)."""
    if sec.encoding == Encoder.BITPACK:
        return decode_bits(frame, sec.offset, sec.length, sec.count)
    return rans_decode(frame, sec.offset, sec.length, sec.count)


def _dequantize(symbols, step, out) -> None:
    kernel = kq.dequantize_f32 if step.dtype == np.float32 else kq.dequantize_f64
    if symbols.shape[0]:
        kernel[blocks(symbols.shape[0]), THREADS](symbols, step, out)


def _check_positions(frame, header: FrameHeader, limit: int):
    """Queue the check of the outlier positions (below ``limit``, increasing): Counters whose
    slot will be 1 when they fail, or None when the frame has no outliers."""
    pos_sec = header.section(SectionKind.OUTLIER_POSITIONS)
    if pos_sec is None:
        return None
    bad = current_workspace().counters(1)
    kq.check_positions[blocks(pos_sec.count), THREADS](frame, pos_sec.offset, pos_sec.count, limit, bad.device)
    return bad


def _judge_positions(bad: list, limit: int) -> None:
    if bad[0]:
        raise CorruptFrameError(f"outlier positions must increase strictly and stay below {limit}")


def _patch_outliers(frame, header: FrameHeader, out):
    """Write the outliers (positions already checked) into ``out``."""
    pos_sec = header.section(SectionKind.OUTLIER_POSITIONS)
    val_sec = header.section(SectionKind.OUTLIER_VALUES)
    patch = kq.patch_outliers_f32 if out.dtype == np.float32 else kq.patch_outliers_f64
    patch[blocks(pos_sec.count), THREADS](out.view(UINT[out.dtype.itemsize]), frame, pos_sec.offset, val_sec.offset,
                                          pos_sec.count)
