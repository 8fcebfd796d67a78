"""One destination's segment (or a chunk of it) <-> one self-describing blob of embzip frames.

Blob layout (little-endian uint64 words, then frames, each starting 8-byte aligned)::

    magic "EMBZSEG1", offset, count, n_frames, tables, dim, n_frames x frame length,
    [tables x uint32 group id, padded to 8 bytes], frames...

``offset`` / ``count`` place the blob's elements inside the receiver's segment (a pipelined
call sends a segment as several blobs). With ``tables == 0`` the frames tile those elements
in order; otherwise the region is rows of ``tables * dim`` values and frame ``g`` holds the
columns of the tables whose group id is ``g``. The receiver needs nothing but the blob, and
every field is checked before anything is written: a hostile blob raises an EmbzipError.

Device segments (``_device.is_device``) are encoded and decoded by embzip's CUDA backend:
the frames are the CPU's, byte for byte, so a blob does not say where it was made and CPU
and GPU ranks exchange blobs freely. ``encode(..., on_device=True)`` assembles the blob on
the device (for CUDA-aware MPI), else on the host from the device frames (only compressed
bytes cross PCIe); ``decode`` takes a host or device blob, and decodes on the device when the
segment is on the device. Per-table groups gather / scatter their columns on the device.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .. import _api
from ..errors import CorruptFrameError, FormatError
from . import _device

__all__ = ["encode", "decode", "warm_up", "BLOB_MAGIC"]

BLOB_MAGIC = int.from_bytes(b"EMBZSEG1", "little")
_FIXED_WORDS = 6
MAX_FRAMES = 1 << 16
MAX_TABLES = 1 << 20


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def _compress(data, mode: str, bound: float, strategy: str, dedup=None):
    """One frame: a numpy array, or a device array when ``data`` is on the device.

    ``dedup=True`` for TableLayout segments: their rows are embedding lookups, where repeats
    are the rule, so the codec skips sampling for them (~20% of a segment's compression).
    """
    if mode == "abs":
        return _api.compress(data, abs_error=bound, strategy=strategy, dedup=dedup)
    return _api.compress(data, rel_error=bound, strategy=strategy, dedup=dedup)


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
    device = _device.is_device(region)
    key = (np.dtype(region.dtype), strategy, unit > 1, plan.groups(d) is not None, device)
    if not WARM_UP or key in _WARM or region.size < unit:
        return
    head = region[:min(region.size // unit, max(1, 65536 // unit)) * unit]  # big enough for every kernel
    try:
        blob = _encode(head, 0, plan, d, row_hint, strategy)
        if device:  # the CUDA backend copies a misaligned frame to an aligned one: one decode
            decode(blob, _device.empty_like(head))
        for shift in range(0 if device else 4):  # the codec specializes on whether a section is 4-byte aligned
            moved = np.empty(blob.size + shift, dtype=np.uint8)[shift:]
            moved[:] = blob
            decode(moved, np.empty_like(head))
    except Exception:  # not ours to report: the real compression will fail the same way, and say so
        return
    _WARM.add(key)


def _encode(region, offset: int, plan, d: int, row_hint: int, strategy: str, on_device: bool = False):
    """Compress ``region`` (1-D, elements ``offset..`` of the segment for rank ``d``) into a blob.

    A device region is compressed on the device; the blob is then a host numpy array (the
    frames copied down), or a device array with ``on_device``. The bytes are the same.
    """
    if _device.is_device(region):
        with _device.LOCK:
            return _encode_parts(region, offset, plan, d, row_hint, strategy, on_device)
    return _encode_parts(region, offset, plan, d, row_hint, strategy, False)


def _encode_parts(region, offset: int, plan, d: int, row_hint: int, strategy: str, on_device: bool):
    count = int(region.size)
    device = _device.is_device(region)
    groups = plan.groups(d)
    tables, dim, gid = 0, 0, None
    if groups is None:
        width = plan.dim or row_hint
        shaped = region.reshape(-1, width) if width > 1 and count % width == 0 and count else region
        bound = plan.per_dest[d] if plan.table_bounds is None else plan.table_bounds[d][0]
        frames = [_compress(shaped, plan.mode, float(bound), strategy, True if plan.dim else None)]
    else:
        tables, dim = plan.table_bounds.shape[1], plan.dim
        rows = count // (tables * dim)
        cube = None if device else region.reshape(rows, tables, dim)
        gid = np.empty(tables, dtype="<u4")
        frames = []
        for g, (idx, bound) in enumerate(groups):
            gid[idx] = g
            if device:
                part = _device.gather_columns(region, idx, tables, dim)
            else:
                part = cube[:, idx, :].reshape(rows * idx.size, dim)  # fancy index: a copy of the columns
            frames.append(_compress(part, plan.mode, float(bound), strategy, True))
    sizes = [int(f.size) for f in frames]
    head = [BLOB_MAGIC, offset, count, len(frames), tables, dim] + sizes
    head_bytes = 8 * len(head) + (_pad8(4 * tables) if tables else 0)
    total = head_bytes + sum(_pad8(n) for n in sizes)
    top = np.zeros(head_bytes, dtype=np.uint8)
    top[:8 * len(head)] = np.asarray(head, dtype="<u8").view(np.uint8)
    if tables:
        top[8 * len(head):8 * len(head) + 4 * tables] = gid.view(np.uint8)
    if on_device:
        return _device_blob(top, frames, total, region)
    blob = np.zeros(total, dtype=np.uint8)
    blob[:head_bytes] = top
    pos = head_bytes
    for f, n in zip(frames, sizes):
        blob[pos:pos + n] = _device.to_host(f) if _device.is_device(f) else f
        pos += _pad8(n)
    return blob


def _device_blob(top: np.ndarray, frames, total: int, like):
    """The blob assembled on the device: header uploaded, frames copied device to device,
    padding zeroed (the same bytes as the host blob)."""
    blob = _device.empty(total, np.uint8, like=like)
    _device.copy(blob[:top.size], top)
    pos = top.size
    for f in frames:
        n = int(f.size)
        _device.copy(blob[pos:pos + n], f)
        if _pad8(n) > n:
            _device.copy(blob[pos + n:pos + _pad8(n)], np.zeros(_pad8(n) - n, dtype=np.uint8))
        pos += _pad8(n)
    return blob


encode = _encode  # the public name (tests replace it to simulate failures; warm_up keeps the real one)


def _header(blob, seg_size: int):
    """Parse and check a blob's header (host or device blob: only the header comes to the host)."""
    size = int(blob.size)
    if size < 8 * _FIXED_WORDS or size % 8:
        raise CorruptFrameError(f"segment blob of {size} bytes: shorter than its header or not 8-byte padded")
    if _device.is_device(blob):
        def host(lo, hi):
            return _device.to_host(blob[lo:hi])
    else:
        def host(lo, hi):
            return blob[lo:hi]
    fixed = np.frombuffer(host(0, 8 * _FIXED_WORDS).tobytes(), dtype="<u8")
    magic, offset, count, n, tables, dim = (int(v) for v in fixed)
    if magic != BLOB_MAGIC:
        raise FormatError(f"not an embzip segment blob: magic {magic:#x}, expected {BLOB_MAGIC:#x}")
    if not 0 < n <= MAX_FRAMES or tables > MAX_TABLES or (tables and not dim):
        raise CorruptFrameError(f"segment blob claims {n} frames, {tables} tables of dim {dim}")
    if offset > seg_size or count > seg_size - offset:
        raise CorruptFrameError(f"segment blob covers elements {offset}..{offset + count}, "
                                f"but the receive segment holds {seg_size}")
    head_bytes = 8 * (_FIXED_WORDS + n) + (_pad8(4 * tables) if tables else 0)
    if head_bytes > size:
        raise CorruptFrameError(f"segment blob header needs {head_bytes} bytes, the blob has {size}")
    top = host(0, head_bytes)
    lengths = np.frombuffer(top[8 * _FIXED_WORDS:8 * (_FIXED_WORDS + n)].tobytes(), dtype="<u8")
    if head_bytes + sum(_pad8(int(x)) for x in lengths) != size:
        raise CorruptFrameError(f"segment blob frame lengths {lengths.tolist()} do not add up to its "
                                f"{size - head_bytes} payload bytes")
    gid = None
    if tables:
        at = 8 * (_FIXED_WORDS + n)
        gid = np.frombuffer(top[at:at + 4 * tables].tobytes(), dtype="<u4").astype(np.int64)
        if gid.max() >= n or np.unique(gid).size != n:
            raise CorruptFrameError(f"segment blob group ids must name each of its {n} frames")
        if count % (tables * dim):
            raise CorruptFrameError(f"segment blob count {count} is not rows of {tables} x {dim}")
    return offset, count, [int(x) for x in lengths], head_bytes, tables, dim, gid


def decode(blob, segment):
    """Decode ``blob`` into its region of ``segment`` (1-D, C-contiguous); return (offset, count).

    Either may be on the host or a device (a device segment is decoded on the device, a host
    one on the host); the blob's header is checked before anything is written."""
    if _device.is_device(segment) or _device.is_device(blob):
        with _device.LOCK:
            return _decode(blob, segment)
    return _decode(blob, segment)


def _decode(blob, segment):
    offset, count, lengths, pos, tables, dim, gid = _header(blob, int(segment.size))
    region = segment[offset:offset + count]
    dtype = np.dtype(segment.dtype)
    device = _device.is_device(segment)
    where = "cuda" if device else "cpu"
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
            _api.decompress(frame, out=region[at:at + size].reshape(info.shape), device=where)
            at += size
        if at != count:
            raise CorruptFrameError(f"frames decode to {at} elements, the segment blob says {count}")
        return offset, count
    rows = count // (tables * dim)
    cube = None if device else region.reshape(rows, tables, dim)
    checked = []
    for g, frame in enumerate(frames):
        idx = np.flatnonzero(gid == g)
        info = _api.inspect(frame)
        if info.dtype != dtype or math.prod(info.shape) != rows * idx.size * dim:
            raise CorruptFrameError(f"frame {g} holds {info.dtype} {info.shape}, expected {rows * idx.size * dim} "
                                    f"{dtype} elements ({rows} rows x {idx.size} tables x {dim})")
        checked.append((frame, idx))
    for frame, idx in checked:
        decoded = _api.decompress(frame, device=where)
        if device:
            _device.scatter_columns(decoded, region, idx, tables, dim)
        else:
            cube[:, idx, :] = decoded.reshape(rows, idx.size, dim)
    return offset, count
