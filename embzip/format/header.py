"""Frame v1 header: packing, parsing and validation (normative spec: docs/format.md).

Everything here is pure Python over ``struct``: the header is tiny, and being strict about
every field before any kernel runs is what keeps hostile frames from reaching numba code.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct

import numpy as np

from ..checksum import crc32c
from ..errors import CorruptFrameError, FormatError, TruncatedFrameError, UnsupportedVersionError
from .ids import MAGIC, MAJOR_VERSION, MINOR_VERSION, DTypeId, Encoder, ErrorMode, Flags, SectionKind

# magic, major, minor, header_length, dtype, ndim, error_mode, strategy, flags, section_count,
# reserved(u16), error_value, abs_error, step, payload_length, payload_crc
_FIXED = struct.Struct("<4sBBHBBBBBBHdddQI")
_SECTION = struct.Struct("<BB6xQQ")  # kind, encoding, count, length (written: the reserved bytes are zeros)
_SECTION_READ = "BB6sQQ"  # read: kind, encoding, the reserved bytes (checked), count, length
_CRC = struct.Struct("<I")
FIXED_SIZE = _FIXED.size  # 52
MAX_NDIM = 32
MAX_SECTIONS = 8

# Which encodings each section kind may use (RAW sections hold bytes, not code streams).
_ALLOWED_ENCODING = {
    SectionKind.RAW: {Encoder.RAW},
    SectionKind.CODES: {Encoder.BITPACK, Encoder.RANS},
    SectionKind.ROW_INDEX: {Encoder.BITPACK, Encoder.RANS},
    SectionKind.OUTLIER_POSITIONS: {Encoder.RAW},
    SectionKind.OUTLIER_VALUES: {Encoder.RAW},
}


@dataclasses.dataclass(frozen=True)
class Section:
    """One payload section: what it holds, how it is encoded, how many items, how many bytes."""

    kind: SectionKind
    encoding: Encoder
    count: int
    length: int
    offset: int = 0  # absolute offset in the frame; filled by parse_frame


@dataclasses.dataclass(frozen=True)
class FrameHeader:
    """Decoded header fields (see docs/format.md for their meaning)."""

    dtype: DTypeId
    shape: tuple
    error_mode: ErrorMode
    strategy: int  # the StrategyId the caller asked for (informational)
    flags: Flags
    error_value: float
    abs_error: float
    step: float
    sections: tuple
    payload_length: int = 0
    payload_crc: int = 0
    header_length: int = 0

    @property
    def element_count(self) -> int:
        return math.prod(self.shape)

    @property
    def raw_size(self) -> int:
        return self.element_count * self.dtype.numpy.itemsize

    @property
    def frame_size(self) -> int:
        return self.header_length + self.payload_length

    def section(self, kind: SectionKind):
        for sec in self.sections:
            if sec.kind == kind:
                return sec
        return None


def header_length_for(ndim: int, section_count: int) -> int:
    return FIXED_SIZE + 8 * ndim + _SECTION.size * section_count + _CRC.size


def allocate_frame(header: FrameHeader) -> np.ndarray:
    """An uninitialized frame for ``header``'s sections (payload starts 4-byte aligned).

    Fill the payload in place (see :func:`section_offsets`), then call :func:`finish_frame`.
    """
    hlen = header_length_for(len(header.shape), len(header.sections))
    return np.empty(hlen + sum(s.length for s in header.sections), dtype=np.uint8)


def section_offsets(header: FrameHeader) -> list:
    """Absolute frame offset of each section of ``header``, in order."""
    pos = header_length_for(len(header.shape), len(header.sections))
    offsets = []
    for sec in header.sections:
        offsets.append(pos)
        pos += sec.length
    return offsets


#: Byte offset of the payload CRC field (the last field of the fixed header).
PAYLOAD_CRC_OFFSET = FIXED_SIZE - 4


@functools.lru_cache(maxsize=None)
def _header_struct(ndim: int, section_count: int) -> struct.Struct:
    """The whole header but its CRC as one Struct ("<": no padding, so the same bytes as the
    fixed part, the shape and each section packed one after another); one ``pack_into``
    per frame instead of a pack, a join and a copy per part."""
    return struct.Struct(_FIXED.format + f"{ndim}Q" + _SECTION.format[1:] * section_count)


def _write_header(out, header: FrameHeader, payload_length: int, payload_crc: int) -> int:
    """Pack the header, header CRC included, into the start of the writable buffer ``out``
    (a bytearray or a uint8 array); return its length."""
    sections = header.sections
    ndim = len(header.shape)
    hlen = header_length_for(ndim, len(sections))
    fields = [int(f) for s in sections for f in (s.kind, s.encoding, s.count, s.length)]
    _header_struct(ndim, len(sections)).pack_into(
        out, 0, MAGIC, MAJOR_VERSION, MINOR_VERSION, hlen, int(header.dtype), ndim, int(header.error_mode),
        int(header.strategy), int(header.flags), len(sections), 0, header.error_value, header.abs_error,
        header.step, payload_length, payload_crc, *header.shape, *fields)
    view = out if isinstance(out, np.ndarray) else np.frombuffer(out, dtype=np.uint8)
    _CRC.pack_into(out, hlen - 4, crc32c(view[:hlen - 4]))
    return hlen


def header_bytes(header: FrameHeader, payload_length: int, payload_crc: int) -> bytes:
    """The complete header (header CRC included) for ``header``'s sections and this payload.

    The CUDA backend writes these bytes with ``payload_crc=0`` and patches both CRCs on the
    device (the payload CRC at :data:`PAYLOAD_CRC_OFFSET`, the header CRC in the last 4 bytes).
    """
    out = bytearray(header_length_for(len(header.shape), len(header.sections)))
    _write_header(out, header, payload_length, payload_crc)
    return bytes(out)


def finish_frame(frame: np.ndarray, header: FrameHeader) -> np.ndarray:
    """Write the header (with the payload CRC and the header CRC) into a filled frame."""
    hlen = header_length_for(len(header.shape), len(header.sections))
    _write_header(frame, header, frame.size - hlen, crc32c(frame[hlen:]))
    return frame


def pack_frame(header: FrameHeader, payloads) -> np.ndarray:
    """Build a frame from one payload (bytes-like) per section."""
    if len(header.sections) != len(payloads):
        raise AssertionError("one payload per section")
    frame = allocate_frame(header)
    for offset, payload in zip(section_offsets(header), payloads):
        if type(payload) is np.ndarray and payload.dtype == np.uint8 and payload.ndim == 1:  # the codec's
            view = payload
        else:
            view = np.frombuffer(memoryview(payload).cast("B"), dtype=np.uint8)
        frame[offset:offset + view.size] = view
    return finish_frame(frame, header)


def as_frame_bytes(frame) -> np.ndarray:
    """Any bytes-like frame (bytes, bytearray, memoryview, uint8 array) as a uint8 array view."""
    if isinstance(frame, np.ndarray):
        if frame.dtype != np.uint8 or frame.ndim != 1:
            raise TypeError(f"expected a 1-D uint8 frame array, found dtype {frame.dtype} with ndim {frame.ndim}")
        return np.ascontiguousarray(frame)
    try:
        view = memoryview(frame)
    except TypeError:
        raise TypeError(f"expected a bytes-like frame, found {type(frame).__name__}") from None
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return np.frombuffer(view.cast("B"), dtype=np.uint8)


def read_header(buf: np.ndarray) -> FrameHeader:
    """Parse and validate the header of ``buf`` (uint8); sections get absolute offsets.

    Checks every field, the header CRC, and that the frame is exactly header + payload long.
    The payload CRC is not checked here (see :func:`parse_frame`).
    """
    size = buf.size
    fixed = buf[:FIXED_SIZE].tobytes()  # one copy serves the magic and the fixed fields
    if size < 4 or fixed[:4] != MAGIC:
        if size < 4 and fixed[:size] == MAGIC[:size]:
            raise TruncatedFrameError(f"frame is {size} bytes, shorter than the 4-byte magic")
        raise FormatError(f"not an embzip frame: expected magic {MAGIC!r}, found {fixed[:4]!r}")
    if size < FIXED_SIZE:
        raise TruncatedFrameError(f"frame is {size} bytes, shorter than the {FIXED_SIZE}-byte fixed header")
    (_, major, minor, hlen, dtype_id, ndim, mode, strategy, flags, nsec, reserved, error_value,
     abs_error, step, payload_length, payload_crc) = _FIXED.unpack_from(fixed)
    if major != MAJOR_VERSION:
        if major > MAJOR_VERSION:
            raise UnsupportedVersionError(
                f"frame format version {major}.{minor} is newer than this embzip reads ({MAJOR_VERSION}.x)")
        raise FormatError(f"frame format major version {major} is invalid (expected {MAJOR_VERSION})")
    if ndim > MAX_NDIM or nsec > MAX_SECTIONS:
        raise CorruptFrameError(f"header claims ndim={ndim} (max {MAX_NDIM}) and {nsec} sections (max {MAX_SECTIONS})")
    expected_hlen = header_length_for(ndim, nsec)
    if hlen != expected_hlen:
        raise CorruptFrameError(f"header length field is {hlen}, expected {expected_hlen} for ndim={ndim}, {nsec} sections")
    if size < hlen:
        raise TruncatedFrameError(f"frame is {size} bytes, shorter than its {hlen}-byte header")
    head_array = buf[:hlen]
    head = head_array.tobytes()
    (stored_crc,) = _CRC.unpack_from(head, hlen - 4)
    if crc32c(np.ascontiguousarray(head_array[:-4])) != stored_crc:
        raise CorruptFrameError("header checksum mismatch: the header is corrupted")
    if reserved != 0:
        raise CorruptFrameError(f"reserved header field is {reserved}, expected 0")
    if size != hlen + payload_length:
        if size < hlen + payload_length:
            raise TruncatedFrameError(f"frame is {size} bytes, header says {hlen + payload_length}")
        raise FormatError(f"frame is {size} bytes, header says {hlen + payload_length}: trailing bytes")
    table = _table_struct(ndim, nsec).unpack_from(head, FIXED_SIZE)  # shape, then 5 fields a section
    shape = table[:ndim]
    # Dict lookups, not enum calls: calling an enum class costs ~0.5 us, ~10 times a frame.
    dtype = _DTYPES.get(dtype_id)
    error_mode = _ERROR_MODES.get(mode)
    if dtype is None or error_mode is None:
        bad = f"{dtype_id} is not a valid DTypeId" if dtype is None else f"{mode} is not a valid ErrorMode"
        raise CorruptFrameError(f"invalid header field: {bad}")
    flag_value = _FLAGS.get(flags)
    if flag_value is None:
        raise CorruptFrameError(f"unknown flag bits {flags:#x}")
    sections = []
    pos = hlen
    for k in range(nsec):
        kind_id, enc_id, reserved, count, length = table[ndim + 5 * k:ndim + 5 * k + 5]
        if reserved != _ZEROS:
            raise CorruptFrameError(f"section {k}: reserved bytes are {reserved.hex()}, expected zeros")
        kind, enc = _SECTION_KINDS.get(kind_id), _ENCODERS.get(enc_id)
        if kind is None or enc is None:
            bad = f"{kind_id} is not a valid SectionKind" if kind is None else f"{enc_id} is not a valid Encoder"
            raise CorruptFrameError(f"section {k}: {bad}")
        sections.append(Section(kind, enc, count, length, pos))
        pos += length
    header = FrameHeader(dtype, shape, error_mode, strategy, flag_value, error_value, abs_error,
                         step, tuple(sections), payload_length, payload_crc, hlen)
    _validate_semantics(header)
    return header


_DTYPES = {int(m): m for m in DTypeId}
_ERROR_MODES = {int(m): m for m in ErrorMode}
_FLAGS = {0: Flags.NONE, int(Flags.DEDUP): Flags.DEDUP}  # every valid flags byte
_SECTION_KINDS = {int(m): m for m in SectionKind}
_ENCODERS = {int(m): m for m in Encoder}
_ZEROS = bytes(6)
#: The largest finite value of each dtype: a step above it cannot be stored in the dtype.
_DTYPE_MAX = {DTypeId.FLOAT32: float(np.finfo(np.float32).max), DTypeId.FLOAT64: float(np.finfo(np.float64).max)}


@functools.lru_cache(maxsize=None)
def _table_struct(ndim: int, section_count: int) -> struct.Struct:
    """The shape and section table that follow the fixed header, as one Struct."""
    return struct.Struct(f"<{ndim}Q" + _SECTION_READ * section_count)


#: Most elements a frame's shape may span (the product of its nonzero extents).
MAX_EXTENT_PRODUCT = 1 << 48


def check_shape(shape) -> None:
    """Raise ValueError for a shape no frame can hold (checked before compressing: a frame
    written with it would be refused by every decoder)."""
    if len(shape) > MAX_NDIM:
        raise ValueError(f"arrays of up to {MAX_NDIM} dimensions can be compressed, found {len(shape)}")
    if math.prod(extent for extent in shape if extent) > MAX_EXTENT_PRODUCT:
        raise ValueError(f"shape {tuple(shape)}: the product of its extents exceeds 2**48, the most a frame "
                         f"can describe")


def _validate_semantics(h: FrameHeader) -> None:
    """Cross-field checks: a frame that passes them can be decoded without any out-of-bounds access."""
    n = math.prod(h.shape)
    # The nonzero extents too: (2**40, 0, 2**40) has no elements, but no array can have it.
    if math.prod(extent for extent in h.shape if extent) > MAX_EXTENT_PRODUCT:
        raise CorruptFrameError(f"shape {h.shape}: the product of its extents exceeds 2**48")
    itemsize = h.dtype.numpy.itemsize
    if sum(s.length for s in h.sections) != h.payload_length:
        raise CorruptFrameError(f"section lengths add up to {sum(s.length for s in h.sections)}, payload is {h.payload_length}")
    kinds = [s.kind for s in h.sections]
    if kinds != sorted(set(kinds)):
        raise CorruptFrameError(f"sections must appear once each, in order; found {[k.name for k in kinds]}")
    for s in h.sections:
        if s.encoding not in _ALLOWED_ENCODING[s.kind]:
            raise CorruptFrameError(f"section {s.kind.name} cannot use encoding {s.encoding.name}")
    if not (math.isfinite(h.abs_error) and h.abs_error >= 0 and math.isfinite(h.error_value) and h.error_value >= 0):
        raise CorruptFrameError(f"invalid bound in header: abs_error={h.abs_error}, error_value={h.error_value}")
    raw = h.section(SectionKind.RAW)
    if raw is not None:
        if kinds != [SectionKind.RAW] or h.flags != Flags.NONE:
            raise CorruptFrameError("a RAW frame holds exactly one RAW section and no flags")
        if raw.count != n or raw.length != n * itemsize:
            raise CorruptFrameError(f"RAW section holds {raw.count} items / {raw.length} bytes, expected {n} / {n * itemsize}")
        return
    codes = h.section(SectionKind.CODES)
    if codes is None:
        raise CorruptFrameError("frame has neither a RAW nor a CODES section")
    # A forged step may overflow the dtype: checking it against the dtype's largest value
    # first keeps the conversion from overflowing (no np.errstate, which costs ~5 us).
    if not (math.isfinite(h.step) and 0 < h.step <= _DTYPE_MAX[h.dtype]
            and float(h.dtype.numpy.type(h.step)) == h.step):
        raise CorruptFrameError(f"invalid step {h.step!r} for dtype {h.dtype.name}")
    row_len = h.shape[-1] if len(h.shape) >= 2 else 1
    rows = n // row_len if row_len else 0
    index = h.section(SectionKind.ROW_INDEX)
    if (h.flags == Flags.DEDUP) != (index is not None):  # flags is 0 or DEDUP (checked by read_header)
        raise CorruptFrameError("DEDUP flag and ROW_INDEX section must come together")
    if index is not None:
        if len(h.shape) < 2 or row_len == 0:
            raise CorruptFrameError(f"DEDUP needs rows of at least one value; shape is {h.shape}")
        if index.count != rows or codes.count % row_len or codes.count // row_len > rows:
            raise CorruptFrameError(f"ROW_INDEX/CODES counts {index.count}/{codes.count} do not fit shape {h.shape}")
    elif codes.count != n:
        raise CorruptFrameError(f"CODES section holds {codes.count} codes, expected {n}")
    pos_sec, val_sec = h.section(SectionKind.OUTLIER_POSITIONS), h.section(SectionKind.OUTLIER_VALUES)
    if (pos_sec is None) != (val_sec is None):
        raise CorruptFrameError("outlier positions and values must come together")
    if pos_sec is not None:
        if pos_sec.count != val_sec.count or pos_sec.count == 0 or pos_sec.count > codes.count:
            raise CorruptFrameError(f"outlier counts {pos_sec.count}/{val_sec.count} invalid for {codes.count} codes")
        if pos_sec.length != 8 * pos_sec.count or val_sec.length != itemsize * val_sec.count:
            raise CorruptFrameError("outlier section lengths do not match their counts")


def parse_frame(frame, verify: bool = True):
    """Validate a whole frame; return ``(header, buf)`` where ``buf`` is the uint8 frame."""
    buf = as_frame_bytes(frame)
    header = read_header(buf)
    if verify:
        check_payload(header, buf)
    return header, buf


def check_payload(header: FrameHeader, buf: np.ndarray) -> None:
    """Raise CorruptFrameError unless the payload's CRC is the header's."""
    if crc32c(buf[header.header_length:]) != header.payload_crc:
        raise CorruptFrameError("payload checksum mismatch: the payload is corrupted")
