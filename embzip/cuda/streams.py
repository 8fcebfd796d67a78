"""Device stage wrappers (CUDA twin of embzip/stages/): validate, allocate, launch.

Kernels (bitpack.py, rans.py, dedup.py) trust their inputs; these functions size every
array, check every length and offset of a section before a kernel reads it, and raise the
same CorruptFrameError as the CPU stages. Only sizes, a histogram of at most 280 tokens and
per-chunk byte counts are read back to the host.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from ..cpu import rans as cpu_rans
from ..cpu import rans_table as cpu_rans_table
from ..errors import CorruptFrameError
from ..stages import bitpack as host_bitpack
from ..stages import dedup as host_dedup
from ..stages.rans import _encoder as host_rans_encoder
from ..stages.rans import _section as host_rans_section
from . import bitpack as kb
from . import dedup as kd
from . import rans as kr
from .rans_table import parse_section
from ._launch import THREADS, blocks
from .memory import current_workspace, upload
from .scan import copy_bytes, device_empty, exclusive_scan, fill, to_device

__all__ = ["BitPlan", "plan_bits", "resolve_plans", "write_bits", "BitSection", "check_bits", "unpack_bits",
           "decode_bits", "rans_histogram", "rans_encode",
           "rans_decode", "start_rans_decode", "judge_rans_chunks", "deduplicate", "resolve_rows"]

BLOCK = kb.BLOCK_SIZE
_HASH_SEED32 = np.uint64(int(host_dedup.HASH_SEED) & 0xFFFFFFFF)  # the device hash is 32-bit
LANES = kb.LANES


@dataclasses.dataclass
class BitPlan:
    """Widths and offsets of one bit-packed stream (device arrays), and its sizes once read."""

    count: int
    widths: object  # uint8[nblocks]
    block_outliers: object  # int64[nblocks]
    width_sums: object  # int64[nblocks + 1], exclusive prefix sums of the widths
    outlier_offsets: object  # int64[nblocks + 1]
    totals: tuple  # (Counters, Counters): [sum, last] of the widths and of the block outliers
    words: int = 0  # packed words of the full blocks
    tail_width: int = 0
    outliers: int = 0
    tail_first_outlier: int = 0  # number of the first outlier of the partial block

    @property
    def full(self) -> int:
        return self.count // BLOCK

    @property
    def head(self) -> int:
        return host_bitpack.words_offset(self.widths.shape[0])

    @property
    def tail_bytes(self) -> int:
        return ((self.count - self.full * BLOCK) * self.tail_width + 7) // 8

    @property
    def size(self) -> int:
        return self.head + 4 * self.words + self.tail_bytes


def plan_bits(plan_kernel, src, inv_step=0.0, step=0.0, abs_error=0.0, resolve: bool = True) -> BitPlan:
    """Run a plan kernel (codes or fused quantizer) over ``src``; one host read of the sizes.

    ``resolve=False`` leaves the sizes unread: :func:`resolve_plans` reads those of several
    plans with one copy.
    """
    n = src.shape[0]
    nblocks = -(-n // BLOCK)
    widths = device_empty(nblocks, np.uint8)
    block_outliers = device_empty(nblocks, np.int64)
    groups = THREADS // kb.GROUP
    if nblocks:
        plan_kernel[blocks(nblocks, groups), THREADS](src, n, inv_step, step, abs_error, widths, block_outliers)
    ws = current_workspace()
    totals = ws.counters(2), ws.counters(2)
    width_sums = exclusive_scan(widths, total=totals[0])
    outlier_offsets = exclusive_scan(block_outliers, total=totals[1])
    plan = BitPlan(n, widths, block_outliers, width_sums, outlier_offsets, totals)
    if resolve:
        resolve_plans(plan)
    return plan


def resolve_plans(*plans: BitPlan) -> None:
    """Read the sizes of ``plans`` (queued by :func:`plan_bits`) in one host copy."""
    values = current_workspace().read(*(c for plan in plans for c in plan.totals))
    for k, plan in enumerate(plans):
        (width_sum, width_last), (outlier_sum, outlier_last) = values[2 * k], values[2 * k + 1]
        has_tail = plan.count % BLOCK != 0  # the last block is the partial one
        plan.tail_width = width_last if has_tail else 0
        plan.words = LANES * (width_sum - plan.tail_width)
        plan.outliers = outlier_sum
        plan.tail_first_outlier = outlier_sum - (outlier_last if has_tail else 0)


def write_bits(plan: BitPlan, pack_kernel, tail_kernel, src, out, at, inv_step=0.0, step=0.0, abs_error=0.0,
               frame=None, positions_at=0, values_at=0, src_bits=None):
    """Write the section planned by ``plan`` into ``out[at:at + plan.size]`` (``at % 4 == 0``).

    With a fused quantizer, outliers go to ``frame`` at ``positions_at`` / ``values_at``.
    """
    head = plan.head
    full = plan.full
    kb.write_head[blocks(head), THREADS](out[at:], plan.widths, head)
    frame = out if frame is None else frame
    src_bits = src if src_bits is None else src_bits
    words_at = at + head
    if full:  # blocks of width 0 write no words but may still hold outliers
        words = out[words_at:words_at + 4 * plan.words].view(np.uint32) if plan.words else device_empty(1, np.uint32)
        groups = THREADS // kb.GROUP
        pack_kernel[blocks(full, groups), THREADS](
            src, inv_step, step, abs_error, plan.widths[:full], plan.width_sums, words,
            plan.block_outliers, plan.outlier_offsets, frame, positions_at, values_at, src_bits)
    tail = plan.count - full * BLOCK
    if tail:
        tail_kernel[1, 1](src, full * BLOCK, tail, inv_step, step, abs_error, plan.tail_width, out,
                          words_at + 4 * plan.words, frame, positions_at, values_at, plan.tail_first_outlier,
                          src_bits)


def _aligned_words(frame, at: int, nwords: int):
    """The words at ``frame[at:]`` as uint32: a view when aligned, else an aligned copy."""
    if nwords == 0:
        return device_empty(1, np.uint32)
    if at % 4 == 0:
        return frame[at:at + 4 * nwords].view(np.uint32)
    copy = device_empty(4 * nwords, np.uint8)
    copy_bytes(frame[at:at + 4 * nwords], copy, 0)
    return copy.view(np.uint32)


@dataclasses.dataclass
class BitSection:
    """A bit-packed section whose checks are queued (:func:`check_bits`) but not yet read."""

    at: int
    length: int
    count: int
    width_sums: object
    stats: object  # Counters: [max width, padding not zero, block size]
    totals: object  # Counters: [sum of the widths, last width]

    @property
    def nblocks(self) -> int:
        return -(-self.count // BLOCK)

    @property
    def head(self) -> int:
        return host_bitpack.words_offset(self.nblocks)


def check_bits(frame, at: int, length: int, count: int) -> BitSection:
    """Queue the checks of the bit-packed section at ``frame[at:at + length]``; read their
    results with others (:meth:`Workspace.read`) and pass them to :func:`unpack_bits`.

    Raises at once what the host can tell alone (the CPU's errors, in the CPU's order)."""
    if length < 4:
        raise CorruptFrameError(f"bit-packed section is {length} bytes, shorter than its 4-byte header")
    nblocks = -(-count // BLOCK)
    head = host_bitpack.words_offset(nblocks)
    if length < head:  # (rare: the CPU reports a wrong block size first)
        _check_block_size(int.from_bytes(bytes(frame[at:at + 4].copy_to_host()), "little"))
        raise CorruptFrameError(f"bit-packed section is {length} bytes, its width table needs {head}")
    ws = current_workspace()
    stats, totals = ws.counters(3), ws.counters(2)
    kb.check_width_table[blocks(max(nblocks, 1)), THREADS](frame, at + 4, nblocks, at + head, stats.device)
    width_sums = exclusive_scan(frame[at + 4:at + 4 + nblocks], total=totals)
    return BitSection(at, length, count, width_sums, stats, totals)


def _check_block_size(block_size: int) -> None:
    if block_size != BLOCK:
        raise CorruptFrameError(f"bit-packed block size is {block_size}, expected {BLOCK}")


def unpack_bits(frame, sec: BitSection, stats: list, totals: list, step=None, out=None):
    """Unpack a section queued by :func:`check_bits`, given its read ``stats`` and ``totals``
    (raises the CPU's CorruptFrameError, in the CPU's order, when they fail)."""
    top, bad_padding, block_size = stats
    _check_block_size(block_size)
    if bad_padding:
        raise CorruptFrameError("bit-packed width table padding is not zero")
    if top > 32:
        raise CorruptFrameError(f"bit width {top} exceeds 32")
    count, at, head = sec.count, sec.at, sec.head
    full = count // BLOCK
    tail = count - full * BLOCK
    width_sum, last = totals
    tail_width = last if tail else 0
    nwords = LANES * (width_sum - tail_width)
    expected = head + 4 * nwords + (tail * tail_width + 7) // 8
    if expected != sec.length:
        raise CorruptFrameError(f"bit-packed section is {sec.length} bytes, its widths say {expected}")
    if step is None:
        out = device_empty(count, np.uint32) if out is None else out
        unpack, unpack_tail, step_arg = kb.unpack_codes, kb.unpack_tail_codes, 0.0
    else:
        f32 = step.dtype == np.float32
        out = device_empty(count, step.dtype) if out is None else out
        unpack = kb.unpack_f32 if f32 else kb.unpack_f64
        unpack_tail = kb.unpack_tail_f32 if f32 else kb.unpack_tail_f64
        step_arg = step
    words_view = _aligned_words(frame, at + head, nwords)
    if full:
        widths = frame[at + 4:at + 4 + full]
        unpack[blocks(full * BLOCK), THREADS](words_view, widths, sec.width_sums, step_arg, out)
    if tail:
        unpack_tail[blocks(tail), THREADS](frame, at + head + 4 * nwords, tail_width, step_arg, out,
                                           full * BLOCK, tail)
    return out


def decode_bits(frame, at: int, length: int, count: int, step=None, out=None):
    """Unpack a bit-packed section at ``frame[at:at + length]`` (validated like the CPU; one
    host read)."""
    sec = check_bits(frame, at, length, count)
    stats, totals = current_workspace().read(sec.stats, sec.totals)
    return unpack_bits(frame, sec, stats, totals, step, out)


# ---------------------------------------------------------------------------------- rANS


def rans_histogram(symbols, chunk_size: int = host_rans_section.DEFAULT_CHUNK_SIZE):
    """The stage's SymbolHistogram, counted on the device (280 counts, per-chunk raw bits and
    the symbols' extremes come back to the host in one copy)."""
    n = symbols.shape[0]
    chunks = -(-n // chunk_size)
    slots = current_workspace().counters(kr.ALPHABET + 2 + max(chunks, 1))
    counts = slots.device[:kr.ALPHABET]
    low_high = slots.device[kr.ALPHABET:kr.ALPHABET + 2]
    raw_bits = slots.device[kr.ALPHABET + 2:]
    if n:
        kr.token_histogram[blocks(n), THREADS](symbols, chunk_size, counts, raw_bits, low_high)
    values = np.array(current_workspace().read(slots)[0], dtype=np.int64)
    token_counts = values[:kr.ALPHABET]
    low, high = (1 << 32) - int(values[kr.ALPHABET]), int(values[kr.ALPHABET + 1]) - 1
    present = np.flatnonzero(token_counts)
    constant = None
    if present.size == 1 and low == high:  # one token holding one value (escapes hold many)
        constant = int(low)
    return host_rans_encoder.SymbolHistogram(n, chunk_size, kr.DIRECT_BITS, token_counts,
                                             values[kr.ALPHABET + 2:kr.ALPHABET + 2 + chunks], constant)


def rans_encode(symbols, hist=None):
    """Encode like stages.rans.encode (same bytes); returns a device uint8 section."""
    hist = rans_histogram(symbols) if hist is None else hist
    if hist.symbol_count == 0:
        return device_empty(0, np.uint8)
    if hist.constant_value is not None:
        return to_device(host_rans_encoder.constant_section(hist.constant_value))
    plan = host_rans_encoder.make_plan(hist, host_rans_section.DEFAULT_MAX_SCALE_BITS, None)
    enc_table = np.empty((hist.token_counts.size, 5), np.int64)
    cpu_rans.build_encoder_table(plan.freqs, plan.scale_bits, enc_table)
    chunks = hist.chunk_count
    chunk_size = hist.chunk_size
    row_words = min(chunk_size, hist.symbol_count) + 2 * plan.lanes
    words = device_empty((chunks, row_words), np.uint16)
    word_starts = device_empty(chunks, np.int64)
    raw_bytes = (hist.chunk_raw_bits + 7) // 8
    raw_offsets = np.zeros(chunks + 1, np.int64)
    np.cumsum(raw_bytes, out=raw_offsets[1:])
    raw = device_empty(max(int(raw_offsets[-1]), 1), np.uint8)
    table_dev, raw_bits_dev, raw_offsets_dev = upload(enc_table.reshape(-1), hist.chunk_raw_bits, raw_offsets)
    kr.encode_chunks[blocks(chunks), THREADS](
        symbols, chunk_size, plan.lanes, table_dev, words, word_starts, raw_bits_dev, raw, raw_offsets_dev)
    rans_bytes = 2 * (row_words - word_starts.copy_to_host())
    directory = host_rans_encoder.chunk_directory(rans_bytes, raw_bytes)
    header = host_rans_encoder.section_header(hist, plan)
    prefix = np.empty(header.size + int(host_rans_encoder.varint_sizes(directory).sum()), np.uint8)
    prefix[:header.size] = header
    cpu_rans_table.write_varints(directory, prefix, header.size)
    chunk_bytes = rans_bytes + raw_bytes
    offsets = prefix.size + np.concatenate(([0], np.cumsum(chunk_bytes)[:-1])).astype(np.int64)
    out = device_empty(prefix.size + int(chunk_bytes.sum()), np.uint8)
    prefix_dev, offsets_dev = upload(prefix, offsets)
    copy_bytes(prefix_dev, out, 0)
    kr.assemble_chunks[blocks(chunks, 1), THREADS](words, word_starts, raw, raw_offsets_dev, out, offsets_dev)
    return out


def start_rans_decode(frame, at: int, length: int, count: int):
    """Queue the decoding of ``count`` symbols from the rANS section at ``frame[at:at + length]``:
    (symbols, Counters of the per-chunk verdicts or None). The section's head is parsed on the
    host at once (raising the CPU's errors); pass the verdicts, once read, to
    :func:`judge_rans_chunks` before using the symbols."""
    out = device_empty(count, np.uint32)
    if host_rans_section.check_length(count, length):
        return out, None
    parsed = parse_section(frame, at, length, count)
    if parsed[0] == host_rans_section.KIND_CONSTANT:
        fill(out, np.uint32(parsed[1]))
        return out, None
    _, scale_bits, direct_bits, chunk_size, lanes, freqs, bounds = parsed
    cums = np.concatenate(([0], np.cumsum(freqs)[:-1])).astype(np.int64)
    table = device_empty(1 << scale_bits, np.int64)
    freqs_dev, cums_dev, bounds_dev = upload(freqs, cums, bounds + at)
    kr.build_decoder_table[blocks(freqs.size), THREADS](freqs_dev, cums_dev, table)
    errors = current_workspace().counters(3 * bounds.shape[0])
    kr.decode_chunks[blocks(bounds.shape[0]), THREADS](
        frame, bounds_dev, chunk_size, direct_bits, scale_bits, lanes, table, out,
        errors.device.reshape((bounds.shape[0], 3)))
    return out, errors


def judge_rans_chunks(verdicts: list) -> None:
    """Raise the CPU's CorruptFrameError for the first chunk whose decoder failed."""
    host_rans_section.check_chunk_errors(np.array(verdicts, np.int64).reshape(-1, 3))


def rans_decode(frame, at: int, length: int, count: int):
    """Decode ``count`` symbols from the rANS section at ``frame[at:at + length]``."""
    out, errors = start_rans_decode(frame, at, length, count)
    if errors is not None:
        judge_rans_chunks(current_workspace().read(errors)[0])
    return out


# --------------------------------------------------------------------------------- dedup


def deduplicate(codes, mask, rows: int, cols: int):
    """(refs uint32, unique_rows int64[rows], found) as stages.dedup.deduplicate, where
    ``found`` is a Counters whose first slot, once read, is the unique count ``u`` and the
    first ``u`` entries of ``unique_rows`` are the unique rows (nothing is read here, so the
    caller reads the count with its other counters)."""
    hashes = device_empty(rows, np.uint64)
    has_outlier = device_empty(rows, np.uint8)
    table = device_empty(1 << max(1, (2 * rows - 1).bit_length()), np.int64)
    kd.row_hashes[blocks(max(rows, table.shape[0])), THREADS](codes, mask, cols, _HASH_SEED32, hashes,
                                                               has_outlier, table)
    slot_of = device_empty(rows, np.int64)
    kd.insert_rows[blocks(rows), THREADS](codes, cols, hashes, has_outlier, table, slot_of)
    is_new = device_empty(rows, np.int64)
    first = device_empty(rows, np.int64)
    kd.first_rows[blocks(rows), THREADS](table, slot_of, is_new, first)
    found = current_workspace().counters(2)
    numbers = exclusive_scan(is_new, total=found)
    refs = device_empty(rows, np.uint32)
    unique_rows = device_empty(rows, np.int64)
    kd.assign_refs[blocks(rows), THREADS](first, numbers, refs, unique_rows)
    return refs, unique_rows, found


def resolve_rows(refs, unique_count: int):
    """Row -> unique-row ids from a decoded reference stream (CorruptFrameError as the CPU)."""
    rows = refs.shape[0]
    flags = device_empty(rows, np.int64)
    kd.zero_flags[blocks(rows), THREADS](refs, flags)
    ws = current_workspace()
    new_rows, rows_left = ws.counters(2), ws.counters(1)
    numbers = exclusive_scan(flags, total=new_rows)
    row_ids = device_empty(rows, np.int64)
    kd.resolve_refs[blocks(rows), THREADS](refs, numbers, unique_count, row_ids, rows_left.device)
    (total, _), (left,) = ws.read(new_rows, rows_left)
    bad = rows - left  # rows_left holds rows minus the first bad row, 0 when none is bad
    if bad == rows and total == unique_count:
        return row_ids
    raise CorruptFrameError(
        f"row index stream is inconsistent at row {bad} of {rows} ({unique_count} unique rows)")
