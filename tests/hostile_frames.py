"""The hostile frames of tests/test_hostile.py: the v1 frame layout restated independently of
embzip's reader (``parse`` / ``build`` / ``recrc``), the frame kinds, the forgeries, and the
case groups that tests/hostile_worker.py decodes.
"""

from __future__ import annotations

import dataclasses
import random
import struct

import numpy as np

import embzip
from embzip.checksum import crc32c


# --------------------------------------------------------------------------- frame v1 layout
# Re-stated from the format (embzip/format/header.py) so the forgeries do not depend on the
# code under test: magic, major, minor, header_length, dtype, ndim, error_mode, strategy,
# flags, section_count, reserved, error_value, abs_error, step, payload_length, payload_crc;
# then ndim u64 extents; then per section (kind u8, encoding u8, 6 pad, count u64, length
# u64); then the CRC32C of all header bytes before it; then the section payloads in order.
FIXED = struct.Struct("<4sBBHBBBBBBHdddQI")
SECTION = struct.Struct("<BB6xQQ")
FIELDS = ("magic", "major", "minor", "header_length", "dtype", "ndim", "error_mode", "strategy",
          "flags", "section_count", "reserved", "error_value", "abs_error", "step",
          "payload_length", "payload_crc")
FIELD_OFFSETS = {"magic": 0, "major": 4, "minor": 5, "header_length": 6, "dtype": 8, "ndim": 9,
                 "error_mode": 10, "strategy": 11, "flags": 12, "section_count": 13, "reserved": 14,
                 "error_value": 16, "abs_error": 24, "step": 32, "payload_length": 40, "payload_crc": 48}
RAW, CODES, ROW_INDEX, OUTLIER_POSITIONS, OUTLIER_VALUES = 1, 2, 3, 4, 5
ENC_RAW, ENC_BITPACK, ENC_RANS = 0, 1, 2
FLAG_DEDUP = 1


def header_length(ndim: int, nsec: int) -> int:
    return FIXED.size + 8 * ndim + SECTION.size * nsec + 4


@dataclasses.dataclass
class Parsed:
    fields: dict
    shape: list
    sections: list  # [kind, encoding, count, length]
    payloads: list  # bytes of each section

    def copy(self) -> "Parsed":
        return Parsed(dict(self.fields), list(self.shape), [list(s) for s in self.sections], list(self.payloads))

    def index(self, kind: int) -> int:
        return [s[0] for s in self.sections].index(kind)

    def set_payload(self, kind: int, data: bytes) -> "Parsed":
        i = self.index(kind)
        self.payloads[i] = bytes(data)
        self.sections[i][3] = len(data)
        return self


def parse(frame) -> Parsed:
    b = bytes(frame)
    fields = dict(zip(FIELDS, FIXED.unpack_from(b, 0)))
    ndim, nsec = fields["ndim"], fields["section_count"]
    shape = list(struct.unpack_from(f"<{ndim}Q", b, FIXED.size))
    sections, payloads = [], []
    pos = fields["header_length"]
    for i in range(nsec):
        kind, enc, count, length = SECTION.unpack_from(b, FIXED.size + 8 * ndim + SECTION.size * i)
        sections.append([kind, enc, count, length])
        payloads.append(b[pos:pos + length])
        pos += length
    return Parsed(fields, shape, sections, payloads)


def build(p: Parsed, *, sync: bool = True, header_crc=None, **overrides) -> bytes:
    """Serialize; with ``sync`` the derived fields (ndim, section_count, header_length,
    payload_length, payload_crc) follow the content. ``overrides`` set fields after that
    (to make them lie); the header CRC is recomputed unless ``header_crc`` is given."""
    f = dict(p.fields)
    payload = b"".join(p.payloads)
    if sync:
        f.update(ndim=len(p.shape), section_count=len(p.sections),
                 header_length=header_length(len(p.shape), len(p.sections)),
                 payload_length=len(payload), payload_crc=crc32c(payload))
    f.update(overrides)
    head = (FIXED.pack(*(f[k] for k in FIELDS)) + struct.pack(f"<{len(p.shape)}Q", *p.shape)
            + b"".join(SECTION.pack(*s) for s in p.sections))
    crc = crc32c(head) if header_crc is None else header_crc
    return head + struct.pack("<I", crc) + payload


def recrc(frame: bytes) -> bytes:
    """Recompute both CRCs of a frame whose payload bytes were edited in place."""
    return build(parse(frame))


def declaring(elements: int) -> bytes:
    """A valid ~90-byte frame of ``elements`` float32 zeros: one constant rANS section lets a
    few bytes declare up to 2**48 values (more than any machine can allocate)."""
    p = parse(embzip.compress(np.zeros(1000, np.float32), abs_error=0.1, strategy="compact").tobytes())
    p.shape = [elements]
    p.sections[p.index(CODES)][2] = elements
    return build(p)


def every_row_unique(rows: int, cols: int, dtype=np.float32) -> bytes:
    """A valid ~140-byte dedup frame of ``rows`` x ``cols`` zeros in which every row is a
    unique row (constant rANS sections for the codes and the row index): the most working
    memory a frame of that shape makes the decoder need (by a review)."""
    p = parse(embzip.compress(np.zeros(1000, dtype), abs_error=0.1, strategy="compact").tobytes())
    p.shape = [rows, cols]
    p.sections[p.index(CODES)][2] = rows * cols
    p.sections.append([ROW_INDEX, ENC_RANS, rows, 2])
    p.payloads.append(b"\x01\x00")  # a constant reference 0: each row is the next unique row
    p.fields["flags"] = FLAG_DEDUP
    return build(p)


# --------------------------------------------------------------------------- frame kinds


def kind_inputs() -> dict:
    """name -> (array, compress kwargs, stages the frame must have)."""
    rng = np.random.default_rng(20240611)
    x = rng.normal(size=700).astype(np.float32)
    sparse = np.zeros(70_000, np.float32)
    sparse[rng.choice(sparse.size, 200, replace=False)] = rng.normal(size=200)
    unique = rng.normal(size=(6, 8)).astype(np.float32)
    picks = rng.integers(0, 6, 96)
    rows = unique[picks]
    unique_out = unique.copy()
    unique_out[1, 2] = np.float32(np.nan)
    unique_out[3, 0] = np.float32(1e30)
    rows_out = unique_out[picks]
    spiky = rng.normal(size=600).astype(np.float32)
    spiky[::37] = np.nan
    spiky[5], spiky[9], spiky[11] = np.inf, -np.inf, 1e30
    spiky.view(np.uint32)[40] = 0x7F800001  # a signalling NaN
    f64 = rng.normal(size=(40, 12))
    f64[::7, 3] = np.nan
    return {
        "raw": (rng.normal(size=150).astype(np.float32), dict(abs_error=1e-30, strategy="fast"), {"raw"}),
        "bitpack": (x, dict(abs_error=1e-2, strategy="fast"), {"codes:bitpack"}),
        "rans": (x, dict(abs_error=1e-2, strategy="compact"), {"codes:rans"}),
        "rans_multichunk": (sparse, dict(abs_error=1e-2, strategy="compact"), {"codes:rans"}),
        "dedup_bitpack": (rows, dict(abs_error=1e-3, strategy="fast"), {"dedup", "codes:bitpack", "row_index:bitpack"}),
        "dedup_rans": (rows, dict(abs_error=1e-3, strategy="compact"), {"dedup", "codes:rans", "row_index:rans"}),
        "outliers_bitpack": (spiky, dict(abs_error=1e-3, strategy="fast"), {"codes:bitpack", "outliers"}),
        "outliers_rans": (spiky, dict(abs_error=1e-3, strategy="compact"), {"codes:rans", "outliers"}),
        "dedup_outliers_bitpack": (rows_out, dict(abs_error=1e-3, strategy="fast"),
                                   {"dedup", "codes:bitpack", "outliers"}),
        "dedup_outliers_rans": (rows_out, dict(abs_error=1e-3, strategy="compact"), {"dedup", "codes:rans", "outliers"}),
        "float64": (f64, dict(rel_error=1e-3, strategy="auto"), {"quantize", "outliers"}),
        "0d": (np.array(1.5), dict(abs_error=0.1), set()),
        "empty": (np.zeros((3, 0), np.float32), dict(abs_error=0.1), {"raw"}),
        "constant_rans": (np.full(500, 3.25, np.float32), dict(rel_error=0.01, strategy="compact"), {"codes:rans"}),
    }


KINDS = list(kind_inputs())


def make_frames() -> dict:
    return {name: embzip.compress(x, **kw).tobytes() for name, (x, kw, _) in kind_inputs().items()}


# --------------------------------------------------------------------------- forgeries


def _bitpack(values) -> bytes:
    from embzip.stages import bitpack
    return bitpack.encode(np.asarray(values, np.uint32)).tobytes()


def _decoded_refs(frames) -> np.ndarray:
    """The row references of the dedup_bitpack frame (0 = new row, k = unique row k - 1)."""
    from embzip.stages import bitpack
    p = parse(frames["dedup_bitpack"])
    i = p.index(ROW_INDEX)
    return bitpack.decode(np.frombuffer(p.payloads[i], np.uint8), p.sections[i][2]).copy()


def _with_refs(frames, refs) -> bytes:
    p = parse(frames["dedup_bitpack"]).copy()
    p.set_payload(ROW_INDEX, _bitpack(refs))
    p.sections[p.index(ROW_INDEX)][2] = len(refs)
    return build(p)


def _edit(frames, kind, fn, **overrides) -> bytes:
    p = parse(frames[kind]).copy()
    fn(p)
    return build(p, **overrides)


def _positions(frames, kind, fn) -> bytes:
    def edit(p):
        i = p.index(OUTLIER_POSITIONS)
        pos = np.frombuffer(p.payloads[i], "<u8").copy()
        fn(pos)
        p.payloads[i] = pos.astype("<u8").tobytes()
    return _edit(frames, kind, edit)


def _section_reserved(frames, kind, section, byte):
    """``frames[kind]`` with a reserved byte of a section entry set (the header CRC made to
    match): the format says they are zeros, and a reader that skips them would take a frame
    that says something else."""
    frame = bytearray(frames[kind])
    p = parse(frame)
    at = FIXED.size + 8 * len(p.shape) + SECTION.size * section + 2 + byte
    frame[at] = 0x80
    hlen = p.fields["header_length"]
    struct.pack_into("<I", frame, hlen - 4, crc32c(bytes(frame[:hlen - 4])))
    return bytes(frame)


def _swap_last_two_sections(p):
    p.sections[-1], p.sections[-2] = p.sections[-2], p.sections[-1]
    p.payloads[-1], p.payloads[-2] = p.payloads[-2], p.payloads[-1]


def _set_section(i, field, value):
    def edit(p):
        p.sections[i][field] = value
    return edit


def _set_codes(field, value):
    def edit(p):
        p.sections[p.index(CODES)][field] = value
    return edit


def _set_shape(shape):
    def edit(p):
        p.shape[:] = shape
    return edit


def _codes_payload(fn):
    def edit(p):
        i = p.index(CODES)
        b = bytearray(p.payloads[i])
        fn(b)
        p.payloads[i] = bytes(b)
        p.sections[i][3] = len(b)
    return edit


def _both_outlier_counts(delta):
    def edit(p):
        p.sections[p.index(OUTLIER_POSITIONS)][2] += delta
        p.sections[p.index(OUTLIER_VALUES)][2] += delta
    return edit


def _shift_lengths(a, b, delta):
    def edit(p):
        i, j = p.index(a), p.index(b)
        p.sections[i][3] += delta
        p.sections[j][3] -= delta
        data = p.payloads[i] + p.payloads[j]
        p.payloads[i], p.payloads[j] = data[:p.sections[i][3]], data[p.sections[i][3]:]
    return edit


def _raw_extra_section(p):
    p.sections.append([CODES, ENC_BITPACK, p.sections[0][2], 0])
    p.payloads.append(b"")


def _duplicate_codes(p):
    p.sections.insert(1, list(p.sections[0]))
    p.payloads.insert(1, p.payloads[0])


def _drop_last_section_entry(p):
    # the header loses its last section entry; the payload keeps the bytes
    tail = p.payloads.pop()
    p.sections.pop()
    p.payloads[-1] += tail


def _nothing(p):
    pass


def _ones(n):
    return _set_shape([1] * n)


def _nine_sections(p):
    while len(p.sections) < 9:
        p.sections.append([OUTLIER_VALUES, ENC_RAW, 0, 0])
        p.payloads.append(b"")


# name -> (builder(frames) -> bytes, allowed error classes)
CORRUPTISH = ("FormatError", "CorruptFrameError", "TruncatedFrameError")
FORGERIES = {
    # version and magic
    "major_version_2": (lambda f: _edit(f, "bitpack", _nothing, major=2), ("UnsupportedVersionError",)),
    "major_version_255": (lambda f: _edit(f, "dedup_rans", _nothing, major=255), ("UnsupportedVersionError",)),
    "major_version_0": (lambda f: _edit(f, "bitpack", _nothing, major=0), CORRUPTISH),
    "bad_magic": (lambda f: _edit(f, "bitpack", _nothing, magic=b"EMBX"), CORRUPTISH),
    # header geometry
    "header_length_plus_8": (lambda f: _edit(f, "bitpack", _nothing, header_length=header_length(1, 1) + 8), CORRUPTISH),
    "header_length_minus_24": (lambda f: _edit(f, "outliers_rans", _nothing, header_length=header_length(1, 3) - 24), CORRUPTISH),
    "section_count_plus_one_same_header_length": (lambda f: _edit(f, "outliers_bitpack", _nothing, section_count=4), CORRUPTISH),
    "section_count_9": (lambda f: _edit(f, "outliers_bitpack", _nine_sections), CORRUPTISH),
    "section_entry_dropped": (lambda f: _edit(f, "outliers_bitpack", _drop_last_section_entry), CORRUPTISH),
    "ndim_33": (lambda f: _edit(f, "0d", _ones(33)), CORRUPTISH),
    "payload_length_plus_one": (lambda f: _edit(f, "rans", _nothing, payload_length=len(parse(f["rans"]).payloads[0]) + 1), CORRUPTISH),
    "payload_length_minus_one": (lambda f: _edit(f, "rans", _nothing, payload_length=len(parse(f["rans"]).payloads[0]) - 1), CORRUPTISH),
    "reserved_nonzero": (lambda f: _edit(f, "bitpack", _nothing, reserved=1), CORRUPTISH),
    "section_reserved_first_byte": (lambda f: _section_reserved(f, "bitpack", 0, 0), CORRUPTISH),
    "section_reserved_last_byte_last_section": (lambda f: _section_reserved(f, "outliers_rans", 2, 5), CORRUPTISH),
    # enumerated fields
    "dtype_0": (lambda f: _edit(f, "bitpack", _nothing, dtype=0), CORRUPTISH),
    "dtype_3": (lambda f: _edit(f, "bitpack", _nothing, dtype=3), CORRUPTISH),
    "dtype_float64_on_float32_raw": (lambda f: _edit(f, "raw", _nothing, dtype=2), CORRUPTISH),
    "error_mode_0": (lambda f: _edit(f, "bitpack", _nothing, error_mode=0), CORRUPTISH),
    "error_mode_9": (lambda f: _edit(f, "bitpack", _nothing, error_mode=9), CORRUPTISH),
    "unknown_flag_bit": (lambda f: _edit(f, "bitpack", _nothing, flags=2), CORRUPTISH),
    "dedup_flag_without_row_index": (lambda f: _edit(f, "bitpack", _nothing, flags=FLAG_DEDUP), CORRUPTISH),
    "row_index_without_dedup_flag": (lambda f: _edit(f, "dedup_bitpack", _nothing, flags=0), CORRUPTISH),
    "unknown_section_kind": (lambda f: _edit(f, "bitpack", _set_section(0, 0, 9)), CORRUPTISH),
    "unknown_encoding": (lambda f: _edit(f, "bitpack", _set_section(0, 1, 7)), CORRUPTISH),
    "codes_with_raw_encoding": (lambda f: _edit(f, "bitpack", _set_section(0, 1, ENC_RAW)), CORRUPTISH),
    "raw_with_bitpack_encoding": (lambda f: _edit(f, "raw", _set_section(0, 1, ENC_BITPACK)), CORRUPTISH),
    "outlier_values_bitpack_encoding": (lambda f: _edit(f, "outliers_bitpack", _set_section(2, 1, ENC_BITPACK)), CORRUPTISH),
    "sections_out_of_order": (lambda f: _edit(f, "outliers_bitpack", _swap_last_two_sections), CORRUPTISH),
    "codes_section_twice": (lambda f: _edit(f, "bitpack", _duplicate_codes), CORRUPTISH),
    "raw_plus_codes_section": (lambda f: _edit(f, "raw", _raw_extra_section), CORRUPTISH),
    "no_codes_no_raw": (lambda f: _edit(f, "outliers_bitpack", lambda p: (p.sections.pop(0), p.payloads.pop(0))), CORRUPTISH),
    # bounds and step
    "step_zero": (lambda f: _edit(f, "bitpack", _nothing, step=0.0), CORRUPTISH),
    "step_negative": (lambda f: _edit(f, "bitpack", _nothing, step=-0.02), CORRUPTISH),
    "step_nan": (lambda f: _edit(f, "rans", _nothing, step=float("nan")), CORRUPTISH),
    "step_inf": (lambda f: _edit(f, "rans", _nothing, step=float("inf")), CORRUPTISH),
    "step_not_a_float32": (lambda f: _edit(f, "bitpack", _nothing, step=0.1), CORRUPTISH),
    "abs_error_nan": (lambda f: _edit(f, "bitpack", _nothing, abs_error=float("nan")), CORRUPTISH),
    "abs_error_negative": (lambda f: _edit(f, "bitpack", _nothing, abs_error=-1e-3), CORRUPTISH),
    "error_value_inf": (lambda f: _edit(f, "bitpack", _nothing, error_value=float("inf")), CORRUPTISH),
    # shapes and counts
    "shape_plus_one": (lambda f: _edit(f, "bitpack", _set_shape([701])), CORRUPTISH),
    "shape_minus_one": (lambda f: _edit(f, "rans", _set_shape([699])), CORRUPTISH),
    "shape_rows_changed_dedup": (lambda f: _edit(f, "dedup_bitpack", _set_shape([95, 8])), CORRUPTISH),
    "shape_cols_changed_dedup": (lambda f: _edit(f, "dedup_rans", _set_shape([48, 16])), CORRUPTISH),
    "shape_over_2_48_elements": (lambda f: _edit(f, "bitpack", _set_shape([2**32, 2**32])), CORRUPTISH),
    "shape_max_u64": (lambda f: _edit(f, "bitpack", _set_shape([2**64 - 1])), CORRUPTISH),
    "empty_shape_with_huge_extent": (lambda f: _edit(f, "empty", _set_shape([0, 2**62])), CORRUPTISH),
    "empty_shape_with_max_extent": (lambda f: _edit(f, "empty", _set_shape([2**64 - 1, 0])), CORRUPTISH),
    "empty_shape_with_huge_extents_3d": (lambda f: _edit(f, "empty", _set_shape([2**40, 0, 2**40])), CORRUPTISH),
    "empty_shape_with_huge_extents_4d": (lambda f: _edit(f, "empty", _set_shape([2**40, 0, 2**40, 2**40])), CORRUPTISH),
    "empty_shape_with_2_48_extents": (lambda f: _edit(f, "empty", _set_shape([2**48, 2**48, 0])), CORRUPTISH),
    "raw_count_minus_one": (lambda f: _edit(f, "raw", _set_section(0, 2, 149)), CORRUPTISH),
    "raw_length_minus_four": (lambda f: _edit(f, "raw", lambda p: (_set_section(0, 3, 596)(p), p.payloads.__setitem__(0, p.payloads[0][:596]))), CORRUPTISH),
    "codes_count_plus_one": (lambda f: _edit(f, "bitpack", _set_codes(2, 701)), CORRUPTISH),
    "codes_count_minus_one": (lambda f: _edit(f, "rans", _set_codes(2, 699)), CORRUPTISH),
    "codes_count_huge": (lambda f: _edit(f, "rans", _set_codes(2, 2**63)), CORRUPTISH),
    "codes_count_zero": (lambda f: _edit(f, "bitpack", _set_codes(2, 0)), CORRUPTISH),
    "dedup_codes_not_whole_rows": (lambda f: _edit(f, "dedup_bitpack", _set_codes(2, parse(f["dedup_bitpack"]).sections[0][2] - 1)), CORRUPTISH),
    "dedup_codes_more_rows_than_shape": (lambda f: _edit(f, "dedup_rans", _set_codes(2, 97 * 8)), CORRUPTISH),
    "dedup_codes_one_row_fewer": (lambda f: _edit(f, "dedup_rans", _set_codes(2, parse(f["dedup_rans"]).sections[0][2] - 8)), CORRUPTISH),
    "row_index_count_minus_one": (lambda f: _edit(f, "dedup_bitpack", _set_section(1, 2, 95)), CORRUPTISH),
    "section_length_huge": (lambda f: _edit(f, "bitpack", _set_section(0, 3, 2**64 - 1)), CORRUPTISH),
    "section_lengths_shifted_codes_outliers": (lambda f: _edit(f, "outliers_bitpack", _shift_lengths(CODES, OUTLIER_POSITIONS, 8)), CORRUPTISH),
    "section_lengths_shifted_rans_outliers": (lambda f: _edit(f, "outliers_rans", _shift_lengths(CODES, OUTLIER_POSITIONS, -8)), CORRUPTISH),
    "section_lengths_shifted_codes_row_index": (lambda f: _edit(f, "dedup_bitpack", _shift_lengths(CODES, ROW_INDEX, 4)), CORRUPTISH),
    "section_lengths_shifted_rans_row_index": (lambda f: _edit(f, "dedup_rans", _shift_lengths(CODES, ROW_INDEX, -1)), CORRUPTISH),
    # bit-packed sections
    "bitpack_block_size_128": (lambda f: _edit(f, "bitpack", _codes_payload(lambda b: b.__setitem__(slice(0, 4), struct.pack("<I", 128)))), CORRUPTISH),
    "bitpack_block_size_0": (lambda f: _edit(f, "bitpack", _codes_payload(lambda b: b.__setitem__(slice(0, 4), b"\0\0\0\0"))), CORRUPTISH),
    "bitpack_width_33": (lambda f: _edit(f, "bitpack", _codes_payload(lambda b: b.__setitem__(4, 33))), CORRUPTISH),
    "bitpack_width_255": (lambda f: _edit(f, "bitpack", _codes_payload(lambda b: b.__setitem__(5, 255))), CORRUPTISH),
    "bitpack_width_plus_one": (lambda f: _edit(f, "bitpack", _codes_payload(lambda b: b.__setitem__(4, b[4] + 1))), CORRUPTISH),
    "bitpack_tail_width_plus_one": (lambda f: _edit(f, "bitpack", _codes_payload(lambda b: b.__setitem__(6, b[6] + 1))), CORRUPTISH),
    "bitpack_width_table_truncated": (lambda f: _edit(f, "bitpack", _codes_payload(lambda b: b.__delitem__(slice(5, None)))), CORRUPTISH),
    "bitpack_section_empty": (lambda f: _edit(f, "bitpack", _codes_payload(lambda b: b.clear())), CORRUPTISH),
    "bitpack_one_byte_extra": (lambda f: _edit(f, "bitpack", _codes_payload(lambda b: b.append(0))), CORRUPTISH),
    "bitpack_one_byte_short": (lambda f: _edit(f, "bitpack", _codes_payload(lambda b: b.pop())), CORRUPTISH),
    # rANS sections
    "rans_kind_byte_0": (lambda f: _edit(f, "rans", _codes_payload(lambda b: b.__setitem__(0, 0))), CORRUPTISH),
    "rans_kind_byte_3": (lambda f: _edit(f, "rans", _codes_payload(lambda b: b.__setitem__(0, 3))), CORRUPTISH),
    "rans_kind_byte_255": (lambda f: _edit(f, "rans_multichunk", _codes_payload(lambda b: b.__setitem__(0, 255))), CORRUPTISH),
    "rans_section_empty": (lambda f: _edit(f, "rans", _codes_payload(lambda b: b.clear())), CORRUPTISH),
    "rans_section_kind_only": (lambda f: _edit(f, "rans", _codes_payload(lambda b: b.__delitem__(slice(1, None)))), CORRUPTISH),
    "rans_section_one_byte_extra": (lambda f: _edit(f, "rans", _codes_payload(lambda b: b.append(0))), CORRUPTISH),
    "rans_section_one_byte_short": (lambda f: _edit(f, "rans_multichunk", _codes_payload(lambda b: b.pop())), CORRUPTISH),
    "rans_section_half": (lambda f: _edit(f, "rans_multichunk", _codes_payload(lambda b: b.__delitem__(slice(len(b) // 2, None)))), CORRUPTISH),
    "rans_constant_extra_byte": (lambda f: _edit(f, "constant_rans", _codes_payload(lambda b: b.append(0))), CORRUPTISH),
    "rans_constant_unterminated_varint": (lambda f: _edit(f, "constant_rans", _codes_payload(lambda b: b.__setitem__(slice(1, None), b"\x80\x80"))), CORRUPTISH),
    "rans_constant_overlong_varint": (lambda f: _edit(f, "constant_rans", _codes_payload(lambda b: b.__setitem__(slice(1, None), b"\xff\xff\xff\xff\xff\x01"))), CORRUPTISH),
    # outliers
    "outlier_position_equals_size": (lambda f: _positions(f, "outliers_bitpack", lambda p: p.__setitem__(-1, 600)), CORRUPTISH),
    "outlier_position_u64_max": (lambda f: _positions(f, "outliers_rans", lambda p: p.__setitem__(-1, 2**64 - 1)), CORRUPTISH),
    "outlier_position_2_63": (lambda f: _positions(f, "outliers_rans", lambda p: p.__setitem__(-1, 2**63)), CORRUPTISH),
    # the first with its top bit set: negative as int64, so "increasing and below the size"
    # held for the signed positions, and the patch wrote before the array (a CI bit flip)
    "outlier_position_first_top_bit": (lambda f: _positions(f, "outliers_rans", lambda p: p.__setitem__(0, p[0] | np.uint64(2**63))), CORRUPTISH),
    "outlier_position_first_top_bit_dedup": (lambda f: _positions(f, "dedup_outliers_bitpack", lambda p: p.__setitem__(0, p[0] | np.uint64(2**63))), CORRUPTISH),
    "outlier_positions_unsorted": (lambda f: _positions(f, "outliers_bitpack", lambda p: p.__setitem__(slice(0, 2), p[1::-1].copy())), CORRUPTISH),
    "outlier_positions_duplicate": (lambda f: _positions(f, "outliers_bitpack", lambda p: p.__setitem__(1, p[0])), CORRUPTISH),
    "outlier_position_beyond_unique_rows": (lambda f: _positions(f, "dedup_outliers_bitpack", lambda p: p.__setitem__(-1, parse(f["dedup_outliers_bitpack"]).sections[0][2])), CORRUPTISH),
    "outlier_counts_differ": (lambda f: _edit(f, "outliers_bitpack", _set_section(2, 2, parse(f["outliers_bitpack"]).sections[2][2] - 1)), CORRUPTISH),
    "outlier_counts_zero": (lambda f: _edit(f, "outliers_rans", _both_outlier_counts(-parse(f["outliers_rans"]).sections[1][2])), CORRUPTISH),
    "outlier_counts_plus_one": (lambda f: _edit(f, "outliers_rans", _both_outlier_counts(1)), CORRUPTISH),
    "outlier_counts_exceed_codes": (lambda f: _edit(f, "outliers_bitpack", _both_outlier_counts(10_000)), CORRUPTISH),
    "outlier_positions_without_values": (lambda f: _edit(f, "outliers_bitpack", lambda p: (p.sections.pop(), p.payloads.pop())), CORRUPTISH),
    # dedup row references
    "row_ref_forward": (lambda f: _with_refs(f, np.r_[1, _decoded_refs(f)[1:]]), CORRUPTISH),
    "row_ref_beyond_unique_rows": (lambda f: _with_refs(f, np.r_[_decoded_refs(f)[:-1], 2**31]), CORRUPTISH),
    "row_refs_all_new": (lambda f: _with_refs(f, np.zeros(96, np.uint32)), CORRUPTISH),
    "row_refs_too_few_new": (lambda f: _with_refs(f, np.where(np.arange(96) == np.flatnonzero(_decoded_refs(f) == 0)[-1], 1, _decoded_refs(f))), CORRUPTISH),
    "row_refs_u32_max": (lambda f: _with_refs(f, np.full(96, 2**32 - 1, np.uint32)), CORRUPTISH),
}


# --------------------------------------------------------------------------- case groups
# A group is (name, base frame kind or None, expectation, [(mutation, op, verify), ...]).
# Mutations: ("none",) ("trunc", k) ("flip", bit) ("set", ((pos, byte), ...))
# ("set_recrc", ((pos, byte), ...)) ("append", bytes) ("explicit", bytes).
# Expectations: "error" (an EmbzipError), "unsupported" (UnsupportedVersionError),
# "format:<classes>" (one of those classes), "tolerant" (EmbzipError, or an array of the
# original shape and dtype), "tolerant_any" (EmbzipError or any array), "equal:<sha>".

BOTH = (True, False)


def _header_len(frame: bytes) -> int:
    return parse(frame).fields["header_length"]


def decoded_sha(y: np.ndarray) -> str:
    import hashlib
    return hashlib.sha256(f"{y.dtype.str}{y.shape}".encode() + np.ascontiguousarray(y).tobytes()).hexdigest()


def build_groups(frames: dict) -> list:
    groups = []
    for kind, frame in frames.items():
        n = len(frame)
        hlen = _header_len(frame)
        plen = n - hlen
        rnd = random.Random(f"hostile/{kind}")
        y = embzip.decompress(frame)
        groups.append((f"valid/{kind}", kind, f"equal:{decoded_sha(y)}",
                       [(("none",), "decompress", v) for v in BOTH]))
        groups.append((f"truncations/{kind}", kind, "error",
                       [(("trunc", k), op, v) for k in range(n)
                        for op, v in (("decompress", True), ("decompress", False), ("inspect", True))]))
        groups.append((f"header_bit_flips/{kind}", kind, "error",
                       [(("flip", bit), op, v) for bit in range(8 * hlen)
                        for op, v in (("decompress", True), ("decompress", False), ("inspect", True))]))
        groups.append((f"trailing_bytes/{kind}", kind, "format:" + ",".join(CORRUPTISH),
                       [(("append", extra), op, v) for extra in (b"\0", b"EMBZ", frame)
                        for op, v in (("decompress", True), ("decompress", False), ("inspect", True))]))
        if plen == 0:
            continue
        budget = 600 if kind == "rans_multichunk" else 2400  # 70k values to decode per case
        if 8 * plen <= budget:
            bits = list(range(8 * hlen, 8 * n))
        else:
            bits = sorted(rnd.sample(range(8 * hlen, 8 * n), budget))
        groups.append((f"payload_bit_flips_verified/{kind}", kind, "error",
                       [(("flip", b), "decompress", True) for b in bits]))
        groups.append((f"payload_bit_flips_unverified/{kind}", kind, "tolerant",
                       [(("flip", b), "decompress", False) for b in bits]))
        garbage = []
        for _ in range(300):
            start = rnd.randrange(hlen, n)
            count = rnd.choice([1, 2, 3, 4, 8, 16, 64])
            garbage.append(tuple((p, rnd.randrange(256)) for p in range(start, min(n, start + count))))
        for _ in range(100):  # scattered bytes
            garbage.append(tuple((rnd.randrange(hlen, n), rnd.randrange(256)) for _ in range(rnd.randint(2, 12))))
        garbage = [g for g in garbage if any(frame[p] != b for p, b in g)]
        groups.append((f"payload_garbage_verified/{kind}", kind, "error",
                       [(("set", g), "decompress", True) for g in garbage]))
        groups.append((f"payload_garbage_unverified/{kind}", kind, "tolerant",
                       [(("set", g), "decompress", False) for g in garbage]))
        groups.append((f"payload_garbage_valid_crcs/{kind}", kind, "tolerant",
                       [(("set_recrc", g), "decompress", True) for g in garbage]))
        # header fields rewritten, header CRC recomputed: a consistent rewrite may decode
        # (to any shape), anything else must be an EmbzipError
        fields = []
        for _ in range(400):
            pos = rnd.randrange(0, hlen - 4)
            fields.append(((pos, rnd.randrange(256)),))
        fields = [g for g in fields if any(frame[p] != b for p, b in g)]
        groups.append((f"header_fields_valid_crc/{kind}", kind, "tolerant_any",
                       [(("set_hcrc", g), op, True) for g in fields for op in ("decompress", "inspect")]))
    rnd = random.Random("hostile/garbage")
    blobs = [b"", b"E", b"EM", b"EMB", b"EMBZ", b"EMBZ\x01", b"\0" * 64, b"\xff" * 64, b"EMBZ" + b"\0" * 200,
             b"EMBZ" + b"\xff" * 200]
    blobs += [bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 400))) for _ in range(200)]
    blobs += [b"EMBZ\x01\x00" + bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 400))) for _ in range(200)]
    groups.append(("garbage", None, "error", [(("explicit", b), op, v) for b in blobs
                                              for op, v in (("decompress", True), ("decompress", False), ("inspect", True))]))
    for name, (make, allowed) in FORGERIES.items():
        data = make(frames)
        expect = "format:" + ",".join(allowed)
        groups.append((f"forged/{name}", None, expect, [(("explicit", data), op, v) for op, v in
                                                        (("decompress", True), ("decompress", False), ("inspect", True))
                                                        if op == "decompress" or name in INSPECT_DETECTS]))
    return groups


# Forgeries that the header alone contradicts: inspect (which validates the header) must
# reject them too. The others lie only inside the payload.
INSPECT_DETECTS = {name for name in FORGERIES if not name.startswith(("bitpack_", "rans_", "outlier_position", "row_ref"))
                   and name not in ("section_lengths_shifted_codes_outliers", "section_lengths_shifted_rans_outliers",
                                    "section_lengths_shifted_codes_row_index", "section_lengths_shifted_rans_row_index",
                                    "dedup_codes_one_row_fewer", "empty_shape_with_huge_extent",
                                    "empty_shape_with_max_extent", "empty_shape_with_huge_extents_4d",
                                    "empty_shape_with_huge_extents_3d", "empty_shape_with_2_48_extents",
                                    "step_not_a_float32")}
