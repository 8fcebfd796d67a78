"""Frames on the device: allocation, the payload CRC, the header and its CRCs, raw frames.

Shared by the encoder (pipeline.py) and the decoder (decode.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..format import FrameHeader, Section, section_offsets
from ..format.header import PAYLOAD_CRC_OFFSET, header_bytes, header_length_for
from ..format.ids import Encoder, Flags, SectionKind
from . import checksum as kc
from ._launch import CRC_CHUNK_WORDS, THREADS, blocks
from .memory import current_workspace
from .scan import copy_bytes, device_empty, to_device

__all__ = ["MAX_HEADER", "UINT", "payload_crc", "NewFrame", "new_frame", "finish", "as_bytes", "raw_frame", "too_big"]

#: The longest header a valid frame has (32 dimensions, 8 sections).
MAX_HEADER = header_length_for(32, 8)
#: Unsigned ints of each float width: how values' bits are moved.
UINT = {4: np.uint32, 8: np.uint64}


def payload_crc(frame, start: int, length: int):
    """Counters (1 slot) that will hold the CRC32C of ``frame[start:start + length]``, once
    the work queued here has run (frame 4-aligned)."""
    crc = current_workspace().counters(1)
    if length:
        tables, x2n = kc.device_tables()
        usable = frame.shape[0] - frame.shape[0] % 4
        words = frame[:usable].view(np.uint32) if usable else device_empty(1, np.uint32)
        chunks = -(-length // (4 * CRC_CHUNK_WORDS))
        kc.crc_chunks[blocks(chunks), THREADS](words, frame, start, length, tables, x2n, crc.device.view(np.uint32))
    return crc


@dataclasses.dataclass
class NewFrame:
    """A frame being written: its device bytes, where each section goes, and its header's
    bytes already on the device (written in by :func:`finish`)."""

    data: object  # uint8[header_length + payload], handed to the caller
    offsets: list
    header_length: int
    head: object  # uint8[header_length] on the device, payload CRC 0


def new_frame(header: FrameHeader) -> NewFrame:
    """Allocate the frame of a header whose sections are final, and upload the header.

    Call it right after the host read that sized the sections, before queuing the kernels
    that fill it: a copy from pageable host memory first waits for all queued work, and
    there is none then."""
    hlen = header_length_for(len(header.shape), len(header.sections))
    payload = sum(s.length for s in header.sections)
    head = to_device(np.frombuffer(header_bytes(header, payload, 0), dtype=np.uint8))
    return NewFrame(device_empty(hlen + payload, np.uint8, for_caller=True), section_offsets(header), hlen, head)


def finish(frame: NewFrame):
    """Write the header, then both CRCs, on the device (no host sync); the frame's bytes."""
    data, hlen = frame.data, frame.header_length
    crc = payload_crc(data, hlen, data.shape[0] - hlen)
    kc.finish_header[1, 1](data, frame.head, hlen, PAYLOAD_CRC_OFFSET, crc.device.view(np.uint32),
                           kc.device_tables()[0])
    return data


def as_bytes(array):
    """A contiguous 1-D device array's bytes (a uint8 view)."""
    return array.view(np.uint8)


def raw_frame(flat, header: FrameHeader):
    """A frame storing ``flat`` verbatim (the fallback when coding would not pay)."""
    section = Section(SectionKind.RAW, Encoder.RAW, flat.shape[0], flat.shape[0] * flat.dtype.itemsize)
    header = dataclasses.replace(header, flags=Flags.NONE, step=0.0, sections=(section,))
    frame = new_frame(header)
    if flat.shape[0]:
        copy_bytes(as_bytes(flat), frame.data, frame.offsets[0])
    return finish(frame)


def too_big(payload_bytes: int, section_count: int, raw_bytes: int) -> bool:
    """Whether coded sections would not beat a raw frame."""
    return payload_bytes + 24 * (section_count - 1) >= raw_bytes  # as _codec._too_big
