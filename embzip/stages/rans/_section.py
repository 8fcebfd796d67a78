"""The rANS section's layout: constants, and the checked readers of its head.

A section is ``kind | header | frequency table | chunk directory | chunks`` (normative
layout in ``docs/entropy.md``). The host decoder (:mod:`._decoder`) and the device decoder
(:mod:`embzip.cuda.rans_table`) both read the head with these functions, so a corrupt
section raises the same :class:`~embzip.errors.CorruptFrameError` with the same message on
either backend. The device decoder passes a host copy of the head only, plus the section's
full length: nothing here reads past ``head``.
"""

from __future__ import annotations

import numpy as np

from embzip.cpu import rans as _k
from embzip.cpu import rans_table as _t
from embzip.errors import CorruptFrameError

KIND_CONSTANT = 1
KIND_RANS = 2
RANS_HEADER_BYTES = 3

DEFAULT_CHUNK_SIZE = 1 << 16
DEFAULT_DIRECT_BITS = 8
DEFAULT_MAX_SCALE_BITS = 14

MIN_CHUNK_LOG2, MAX_CHUNK_LOG2 = 8, 24
MAX_DIRECT_BITS = 12
MAX_SCALE_BITS = 15
MAX_LANES_LOG2 = 5
#: A varint of a 32-bit value takes at most this many bytes.
MAX_VARINT_BYTES = 5

STATUS_TEXT = {
    _t.ERR_TRUNCATED: "data running past the end of the section",
    _t.ERR_BAD_VARINT: "a varint longer than 5 bytes, >= 2**32, or not minimal",
}

_TABLE_ERRORS = {
    _t.ERR_TABLE_COUNT: "present-token count",
    _t.ERR_TABLE_TOKEN: "token index",
    _t.ERR_TABLE_FREQ: "frequency (bit length) leaving every later token >= 1",
    _t.ERR_TABLE_PADDING: "padding bits",
}

_CHUNK_ERRORS = {
    _k.ERR_RANS_LENGTH: "rANS bytes consumed",
    _k.ERR_FINAL_STATE: "final state",
    _k.ERR_RAW_LENGTH: "raw-bit bytes consumed",
    _k.ERR_RAW_PADDING: "raw-bit padding",
}


def alphabet_size(direct_bits: int) -> int:
    """Tokens of the coder's alphabet: ``2**direct_bits`` direct values, one escape per
    bit length ``direct_bits + 1 .. 32``."""
    return (1 << direct_bits) + 32 - direct_bits


def corrupt(what: str, expected, found) -> CorruptFrameError:
    """The error every malformed section raises: what was read, expected and found."""
    return CorruptFrameError(f"rANS section: {what}: expected {expected}, found {found}")


def check_length(count: int, length: int) -> bool:
    """Check a section's byte length against its symbol count; True when both are 0."""
    if count == 0:
        if length != 0:
            raise corrupt("section length for 0 symbols", 0, length)
        return True
    if length == 0:
        raise corrupt(f"section length for {count} symbols", ">= 2", 0)
    return False


def check_kind(kind: int) -> int:
    if kind not in (KIND_CONSTANT, KIND_RANS):
        raise corrupt("section kind", f"{KIND_CONSTANT} or {KIND_RANS}", kind)
    return kind


def parse_constant(head: np.ndarray, length: int) -> int:
    """The value of a constant section (``head`` holds at least its first 7 bytes)."""
    value, end, status = _t.read_varint(head, 1, head.size)
    if status != _t.OK:
        raise corrupt("constant value", "a well-formed varint", STATUS_TEXT[status])
    if end != length:
        raise corrupt("constant section length", end, length)
    return int(value)


def parse_header(head: np.ndarray):
    """``(scale_bits, direct_bits, chunk_log2, lanes)``, each checked against its range."""
    if head.size < RANS_HEADER_BYTES:
        raise corrupt("header length", f">= {RANS_HEADER_BYTES} bytes", head.size)
    packed1, packed2 = int(head[1]), int(head[2])
    scale_bits, direct_bits = packed1 & 0xF, packed1 >> 4
    chunk_log2, lanes_log2 = packed2 & 0x1F, packed2 >> 5
    for name, value, low, high in (
        ("scale_bits", scale_bits, 1, MAX_SCALE_BITS),
        ("direct_bits", direct_bits, 0, MAX_DIRECT_BITS),
        ("chunk_log2", chunk_log2, MIN_CHUNK_LOG2, MAX_CHUNK_LOG2),
        ("lanes_log2", lanes_log2, 0, MAX_LANES_LOG2),
    ):
        if not low <= value <= high:
            raise corrupt(name, f"{low}..{high}", value)
    return scale_bits, direct_bits, chunk_log2, 1 << lanes_log2


def parse_table(head: np.ndarray, scale_bits: int, direct_bits: int):
    """Token frequencies (int64, summing to ``2**scale_bits``) and the position after them."""
    freqs = np.zeros(alphabet_size(direct_bits), np.int64)
    pos, status, found = _t.read_frequency_table(head, RANS_HEADER_BYTES, head.size, scale_bits, freqs)
    if status in STATUS_TEXT:
        raise corrupt("frequency table", "a complete table", STATUS_TEXT[status])
    if status == _t.ERR_TABLE_PADDING:
        raise corrupt("frequency-table padding bits", 0, found)
    if status != _t.OK:
        limit = {
            _t.ERR_TABLE_COUNT: f"<= {min(freqs.size, 1 << scale_bits)}",
            _t.ERR_TABLE_TOKEN: f"< {freqs.size}",
            _t.ERR_TABLE_FREQ: "a value leaving >= 1 for every later token",
        }[status]
        raise corrupt(f"frequency-table {_TABLE_ERRORS[status]}", limit, found)
    return freqs, pos


def parse_directory(head: np.ndarray, pos: int, length: int, chunk_count: int, lanes: int):
    """Byte bounds ``(rans_start, raw_start, raw_end)`` of every chunk, all checked.

    ``head`` holds the section from its start through the directory; ``length`` is the
    whole section's, which the last chunk's rANS byte count follows from.
    """
    # A chunk needs >= 1 directory byte (2 unless last) and 4 state bytes per lane: reject
    # an impossible count before allocating anything proportional to it.
    min_bytes = chunk_count * (2 + 4 * lanes) - 1
    if length - pos < min_bytes:
        raise corrupt(f"bytes left for {chunk_count} chunks", f">= {min_bytes}", length - pos)
    directory = np.empty(2 * chunk_count, np.int64)
    pos, status = _t.read_varints(head, pos, head.size, directory[:-1])
    if status != _t.OK:
        raise corrupt("chunk directory", "well-formed varints", STATUS_TEXT[status])
    directory[-1] = length - pos - directory[:-1].sum()  # the last chunk's rANS bytes
    raw_bytes, rans_bytes = directory[0::2], directory[1::2]
    bad = np.flatnonzero((rans_bytes < 4 * lanes) | (rans_bytes % 2 != 0))
    if bad.size:
        chunk = int(bad[0])
        raise corrupt(f"rANS byte count of chunk {chunk} of {chunk_count}", f"even and >= {4 * lanes}",
                      int(rans_bytes[chunk]))
    bounds = np.empty((chunk_count, 3), np.int64)
    bounds[:, 0] = pos + np.concatenate(([0], np.cumsum(rans_bytes + raw_bytes)[:-1]))
    bounds[:, 1] = bounds[:, 0] + rans_bytes
    bounds[:, 2] = bounds[:, 1] + raw_bytes
    return bounds


def check_chunk_errors(errors: np.ndarray) -> None:
    """Raise for the first chunk whose decoder reported ``(code, expected, found)``."""
    failed = np.flatnonzero(errors[:, 0])
    if not failed.size:
        return
    chunk = int(failed[0])
    code, expected, found = (int(v) for v in errors[chunk])
    if code == _k.ERR_STATE_RANGE:
        raise corrupt(f"chunk {chunk}: initial state of lane {expected}", "[2**15, 2**31)", found)
    raise corrupt(f"chunk {chunk}: {_CHUNK_ERRORS[code]}", expected, found)
