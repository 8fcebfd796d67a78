"""One destination's segment (or a chunk of it) <-> one self-describing blob of embzip frames.

Blob layout (little-endian uint64 words, then frames, each starting 8-byte aligned)::

    magic "EMBZSEG1", offset, count, n_frames, tables, dim, n_frames x frame length,
    [tables x uint32 group id, padded to 8 bytes], frames...

``offset`` / ``count`` place the blob's elements inside the receiver's segment (a pipelined
call sends a segment as several blobs). With ``tables == 0`` the frames tile those elements
in order; otherwise the region is rows of ``tables * dim`` values and frame ``g`` holds the
columns of the tables whose group id is ``g``. The receiver needs nothing but the blob, and
every field is checked before anything is written: a hostile blob raises an EmbzipError.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .. import _api
from ..errors import CorruptFrameError, FormatError

__all__ = ["encode", "decode", "warm_up", "BLOB_MAGIC"]

BLOB_MAGIC = int.from_bytes(b"EMBZSEG1", "little")
_FIXED_WORDS = 6
MAX_FRAMES = 1 << 16
MAX_TABLES = 1 << 20


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _compress(data: np.ndarray, mode: str, bound: float, strategy: str) -> np.ndarray:
    if mode == "abs":
        return _api.compress(data, abs_error=bound, strategy=strategy)
    return _api.compress(data, rel_error=bound, strategy=strategy)


_WARM = set()
#: EMBZIP_COMM_WARMUP=0 skips the warm-up: the first call's codec timings then include numba's
#: compilation (the cost model recovers after a few calls); test suites use it to compile less.
WARM_UP = os.environ.get("EMBZIP_COMM_WARMUP", "1") != "0"


def warm_up(region: np.ndarray, plan, d: int, row_hint: int, strategy: str) -> None:
    """Compile the codec's kernels for this kind of segment on a few of its rows, once per process.

    Why: numba compiles on first use (seconds), and the cost model must not mistake that for
    the codec's speed; the comm layer calls this before it times a compression.
    """
    unit = plan.row_unit(row_hint)
    key = (region.dtype, strategy, unit > 1, plan.groups(d) is not None)
    if not WARM_UP or key in _WARM or region.size < unit:
        return
    head = region[:min(region.size // unit, max(1, 65536 // unit)) * unit]  # big enough for every kernel
    try:
        blob = _encode(head, 0, plan, d, row_hint, strategy)
        for shift in range(4):  # the codec specializes on whether a section is 4-byte aligned
            moved = np.empty(blob.size + shift, dtype=np.uint8)[shift:]
            moved[:] = blob
            decode(moved, np.empty_like(head))
    except Exception:  # not ours to report: the real compression will fail the same way, and say so
        return
    _WARM.add(key)


def _encode(region: np.ndarray, offset: int, plan, d: int, row_hint: int, strategy: str) -> np.ndarray:
    """Compress ``region`` (1-D, elements ``offset..`` of the segment for rank ``d``) into a blob."""
    count = int(region.size)
    groups = plan.groups(d)
    tables, dim, gid = 0, 0, None
    if groups is None:
        width = plan.dim or row_hint
        shaped = region.reshape(-1, width) if width > 1 and count % width == 0 and count else region
        bound = plan.per_dest[d] if plan.table_bounds is None else plan.table_bounds[d][0]
        frames = [_compress(shaped, plan.mode, float(bound), strategy)]
    else:
        tables, dim = plan.table_bounds.shape[1], plan.dim
        rows = count // (tables * dim)
        cube = region.reshape(rows, tables, dim)
        gid = np.empty(tables, dtype="<u4")
        frames = []
        for g, (idx, bound) in enumerate(groups):
            gid[idx] = g
            part = cube[:, idx, :].reshape(rows * idx.size, dim)  # fancy index: a copy of the columns
            frames.append(_compress(part, plan.mode, float(bound), strategy))
    head = [BLOB_MAGIC, offset, count, len(frames), tables, dim] + [f.size for f in frames]
    head_bytes = 8 * len(head) + (_pad8(4 * tables) if tables else 0)
    blob = np.zeros(head_bytes + sum(_pad8(f.size) for f in frames), dtype=np.uint8)
    blob[:8 * len(head)] = np.asarray(head, dtype="<u8").view(np.uint8)
    if tables:
        blob[8 * len(head):8 * len(head) + 4 * tables] = gid.view(np.uint8)
    pos = head_bytes
    for f in frames:
        blob[pos:pos + f.size] = f
        pos += _pad8(f.size)
    return blob


encode = _encode  # the public name (tests replace it to simulate failures; warm_up keeps the real one)


def _header(blob: np.ndarray, seg_size: int):
    if blob.size < 8 * _FIXED_WORDS or blob.size % 8:
        raise CorruptFrameError(f"segment blob of {blob.size} bytes: shorter than its header or not 8-byte padded")
    fixed = np.frombuffer(blob[:8 * _FIXED_WORDS].tobytes(), dtype="<u8")
    magic, offset, count, n, tables, dim = (int(v) for v in fixed)
    if magic != BLOB_MAGIC:
        raise FormatError(f"not an embzip segment blob: magic {magic:#x}, expected {BLOB_MAGIC:#x}")
    if not 0 < n <= MAX_FRAMES or tables > MAX_TABLES or (tables and not dim):
        raise CorruptFrameError(f"segment blob claims {n} frames, {tables} tables of dim {dim}")
    if offset > seg_size or count > seg_size - offset:
        raise CorruptFrameError(f"segment blob covers elements {offset}..{offset + count}, "
                                f"but the receive segment holds {seg_size}")
    head_bytes = 8 * (_FIXED_WORDS + n) + (_pad8(4 * tables) if tables else 0)
    if head_bytes > blob.size:
        raise CorruptFrameError(f"segment blob header needs {head_bytes} bytes, the blob has {blob.size}")
    lengths = np.frombuffer(blob[8 * _FIXED_WORDS:8 * (_FIXED_WORDS + n)].tobytes(), dtype="<u8")
    if head_bytes + sum(_pad8(int(x)) for x in lengths) != blob.size:
        raise CorruptFrameError(f"segment blob frame lengths {lengths.tolist()} do not add up to its "
                                f"{blob.size - head_bytes} payload bytes")
    gid = None
    if tables:
        at = 8 * (_FIXED_WORDS + n)
        gid = np.frombuffer(blob[at:at + 4 * tables].tobytes(), dtype="<u4").astype(np.int64)
        if gid.max() >= n or np.unique(gid).size != n:
            raise CorruptFrameError(f"segment blob group ids must name each of its {n} frames")
        if count % (tables * dim):
            raise CorruptFrameError(f"segment blob count {count} is not rows of {tables} x {dim}")
    return offset, count, [int(x) for x in lengths], head_bytes, tables, dim, gid


def decode(blob: np.ndarray, segment: np.ndarray):
    """Decode ``blob`` into its region of ``segment`` (1-D, C-contiguous); return (offset, count)."""
    offset, count, lengths, pos, tables, dim, gid = _header(blob, int(segment.size))
    region = segment[offset:offset + count]
    dtype = segment.dtype
    frames = []
    for n in lengths:
        frames.append(blob[pos:pos + n])
        pos += _pad8(n)
    if not tables:
        at = 0
        for frame in frames:
            info = _api.inspect(frame)
            size = math.prod(info.shape)
            if info.dtype != dtype or size > count - at:
                raise CorruptFrameError(f"frame holds {info.dtype} {info.shape}: it does not fit the "
                                        f"{count - at} {dtype} elements left in the receive region")
            _api.decompress(frame, out=region[at:at + size].reshape(info.shape))
            at += size
        if at != count:
            raise CorruptFrameError(f"frames decode to {at} elements, the segment blob says {count}")
        return offset, count
    rows = count // (tables * dim)
    cube = region.reshape(rows, tables, dim)
    for g, frame in enumerate(frames):
        idx = np.flatnonzero(gid == g)
        info = _api.inspect(frame)
        if info.dtype != dtype or math.prod(info.shape) != rows * idx.size * dim:
            raise CorruptFrameError(f"frame {g} holds {info.dtype} {info.shape}, expected {rows * idx.size * dim} "
                                    f"{dtype} elements ({rows} rows x {idx.size} tables x {dim})")
        decoded = _api.decompress(frame)
        cube[:, idx, :] = decoded.reshape(rows, idx.size, dim)
    return offset, count
