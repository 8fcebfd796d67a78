"""Parse mpi4py's Alltoallv buffer specifications, the same way mpi4py does.

Accepted forms (counts and displacements in elements of the datatype, as in mpi4py)::

    buf                                 counts inferred (as mpi4py: an equal split, the first
                                        total % size ranks one more), displacements contiguous
    [buf, TYPE]                         same, explicit datatype
    [buf, counts]                       contiguous displacements
    [buf, (counts, displs)]
    [buf, counts, TYPE]                 third item must be a datatype (or None), as in mpi4py
    [buf, (counts, displs), TYPE]
    [buf, counts, displs, TYPE]

``counts`` / ``displs`` may be None (inferred), one integer (every rank the same count; a
displacement stride), or one integer per rank. ``TYPE`` is an ``MPI.Datatype``, a typecode
string (``"f"``, ``"d"``...) or None (taken from the buffer). Unlike MPI, every segment is
checked to lie inside the buffer, receive segments of contiguous elements not to overlap (MPI
forbids it without checking), and a derived datatype to be usable (committed).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import numpy as np

from . import _device, _overlap

__all__ = ["Spec", "parse", "is_in_place", "in_place_send", "FLOAT_KINDS", "kind_name"]

#: Element dtypes the collective compresses, and their wire codes (0: passed through unchanged).
FLOAT_KINDS = {np.dtype(np.float32): 1, np.dtype(np.float64): 2}
_KIND_NAMES = {0: "non-float (passed through)", 1: "float32", 2: "float64"}
#: Largest element (bytes) of a derived datatype that _check_committed tries on COMM_SELF.
_CHECK_BYTES = 1 << 24
#: Bound on count and displacement bytes: keeps the segment-end arithmetic within int64.
_MAX_ELEMENTS = 1 << 60
# Buffer dtypes that carry untyped bytes: with a float datatype they are read as floats.
_BYTE_KINDS = (np.dtype(np.uint8), np.dtype(np.int8), np.dtype("S1"), np.dtype("V1"))


def kind_name(kind: int) -> str:
    return _KIND_NAMES.get(int(kind), f"kind {kind}")


@dataclasses.dataclass
class Spec:
    """One side of the exchange, normalized."""

    buf: object  # the caller's buffer object (what MPI gets on the raw path)
    flat: object  # 1-D numpy (or cupy) array of `dtype` elements, or None (not viewable)
    dtype: object  # numpy dtype of one element of the datatype, or None (derived/unknown)
    datatype: object  # MPI.Datatype
    counts: np.ndarray  # int64 [size]
    displs: np.ndarray  # int64 [size]
    extent: int  # bytes between consecutive elements
    elem_size: int  # bytes of data in one element (MPI type size)
    device: bool  # the buffer lives on a GPU
    row: int  # row width of an N-d C-contiguous buffer, 0 when unknown
    kind: int = 0  # FLOAT_KINDS code when this side is compressible, else 0
    true_lb: int = 0  # the datatype's true lower bound and extent (bytes): where its data lie
    true_extent: int = 0
    rows_across: int = 0  # length of the axis before the row's (an N-d buffer, N >= 3), else 0

    def mpi_message(self):
        """This spec in mpi4py's explicit form (datatypes, counts, displacements)."""
        return [self.buf, (self.counts, self.displs), self.datatype]

    @functools.cached_property
    def tiles_flat(self) -> bool:
        """Whether the segments cover ``flat`` exactly, without gaps or overlaps: then a receive
        overwrites every element, and a staging copy need not keep the buffer's old contents."""
        if self.flat is None or self.dtype is None or self.extent != self.elem_size \
                or self.extent != self.flat.dtype.itemsize:
            return False
        used = self.counts > 0
        order = np.argsort(self.displs[used], kind="stable")
        counts, displs = self.counts[used][order], self.displs[used][order]
        ends = np.cumsum(counts)
        return bool(ends[-1] == self.flat.size and displs[0] == 0 and np.array_equal(displs[1:], ends[:-1])) \
            if counts.size else self.flat.size == 0


def _is_datatype(x, MPI) -> bool:
    return isinstance(x, (MPI.Datatype, str))


def _unpack(msg, name: str, MPI):
    """(buf, counts, displs, type) from any mpi4py form."""
    if not isinstance(msg, (list, tuple)):
        return msg, None, None, None
    n = len(msg)
    if n == 2:
        buf, second = msg
        if _is_datatype(second, MPI):
            return buf, None, None, second
        if isinstance(second, tuple):
            return (buf, *_pair(second, name), None)
        return buf, second, None, None
    if n == 3:
        buf, second, dtype = msg
        if dtype is not None and not _is_datatype(dtype, MPI):
            raise TypeError(f"{name}: the third item of [buf, counts, TYPE] must be an MPI datatype, a "
                            f"typecode or None, found {type(dtype).__name__}; to give displacements use "
                            f"[buf, counts, displs, TYPE] or [buf, (counts, displs), TYPE]")
        if isinstance(second, tuple):
            return (buf, *_pair(second, name), dtype)
        return buf, second, None, dtype
    if n == 4:
        return tuple(msg)
    raise TypeError(f"{name} must be a buffer (numpy array, bytes-like or GPU array) or a [buf, ...] "
                    f"specification of 2 to 4 items, found a {type(msg).__name__} of {n} items")


def _pair(pair, name: str):
    if len(pair) != 2:
        raise ValueError(f"{name}: (counts, displs) must hold 2 items, found {len(pair)}")
    return pair[0], pair[1]


def _has_buffer(obj) -> bool:
    try:
        memoryview(obj).release()
    except TypeError:
        return False
    return True


def _host_array(buf, writable: bool, name: str) -> np.ndarray:
    if isinstance(buf, np.ndarray):
        arr = buf
        if arr.dtype.hasobject:
            raise TypeError(f"{name} has dtype {arr.dtype}: object arrays cannot be sent as a buffer")
    elif not _has_buffer(buf) and hasattr(buf, "__dlpack__"):  # a CPU torch tensor, say: mpi4py takes DLPack too
        try:
            arr = np.from_dlpack(buf)
        except (TypeError, ValueError, BufferError, RuntimeError) as exc:
            raise TypeError(f"{name}: numpy cannot read this {type(buf).__name__} through DLPack ({exc})") from None
    else:
        try:
            view = memoryview(buf)
        except TypeError:
            raise TypeError(f"{name} must be a buffer (numpy array, bytes-like, DLPack or GPU array), "
                            f"found {type(buf).__name__}") from None
        if not view.contiguous:
            raise ValueError(f"{name} is a non-contiguous buffer; pass a contiguous one")
        try:
            arr = np.asarray(view)
        except (TypeError, ValueError, NotImplementedError):
            arr = np.frombuffer(view.cast("B"), dtype=np.uint8)
    if type(arr) is not np.ndarray:  # np.matrix stays 2-D when reshaped, a masked array...: its plain memory
        arr = arr.view(np.ndarray)
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        raise ValueError(f"{name} is a non-contiguous array (shape {arr.shape}, strides {arr.strides}); "
                         f"MPI needs a contiguous buffer: pass np.ascontiguousarray(...)")
    if writable and not arr.flags.writeable:
        raise ValueError(f"{name} is read-only; the receive buffer must be writable")
    return arr


def _datatype(dtype_arg, own_dtype, name: str, MPI):
    if dtype_arg is None:
        if own_dtype.isnative:  # the predefined type mpi4py itself would pick (MPI.FLOAT for float32)
            try:
                return MPI.Datatype.fromcode(own_dtype.char)
            except (KeyError, ValueError):
                pass
        from mpi4py.util import dtlib

        try:
            built = dtlib.from_numpy_dtype(own_dtype)
        except (TypeError, ValueError, KeyError) as exc:
            raise TypeError(f"{name}: no MPI datatype matches the buffer's dtype {own_dtype}; pass one ({exc})") from None
        if built.is_predefined:
            return built
        base, combiner, _ = built.decode()
        built.Free()  # (a new handle that embzip would never free)
        if combiner == "DUP" and base.is_predefined:
            return base
        raise TypeError(f"{name}: no predefined MPI datatype matches the buffer's dtype {own_dtype}; pass a committed "
                        f"datatype as TYPE (mpi4py.util.dtlib.from_numpy_dtype(dtype), then .Commit())")
    if isinstance(dtype_arg, str):
        try:
            return MPI.Datatype.fromcode(dtype_arg)
        except (KeyError, ValueError):
            raise TypeError(f"{name}: {dtype_arg!r} is not an MPI typecode") from None
    if dtype_arg == MPI.DATATYPE_NULL:
        raise TypeError(f"{name}: the datatype is MPI.DATATYPE_NULL")
    return dtype_arg


def _check_committed(datatype, name: str, MPI) -> None:
    """Raise TypeError if MPI refuses ``datatype`` (a derived datatype not committed, say).

    Why: MPI finds out only when a call uses the datatype, and only on the rank that passed it;
    inside the exchange the other ranks would then wait for that rank forever. An exchange of
    one element with itself (``COMM_SELF``) finds it first, and the handshake makes every rank
    raise. Predefined datatypes need no check; derived ones whose element spans more than
    ``_CHECK_BYTES`` are not checked (the scratch would be that large).
    """
    if datatype.is_predefined:
        return
    true_lb, true_extent = datatype.Get_true_extent()
    if not 0 <= true_extent <= _CHECK_BYTES or abs(true_lb) > _CHECK_BYTES:
        return
    offset = max(-true_lb, 0)  # MPI reads [pointer + true_lb, pointer + true_lb + true_extent)
    size = offset + max(true_lb, 0) + true_extent
    send, recv = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
    try:
        MPI.COMM_SELF.Sendrecv([send[offset:], 1, datatype], 0, 0, [recv[offset:], 1, datatype], 0, 0)
    except MPI.Exception as exc:
        reason = MPI.Get_error_string(exc.Get_error_class())
        raise TypeError(f"{name}: MPI refuses the datatype ({reason}); a derived datatype must be committed "
                        f"(datatype.Commit()) before use") from None


def _element_dtype(datatype):
    """The numpy dtype of one element of a predefined datatype, else None (derived types)."""
    try:
        return np.dtype(datatype.tocode())
    except (KeyError, ValueError, TypeError):
        return None


def _vector(value, size: int, what: str, name: str):
    """None, or an int64 vector of ``size`` entries from an int or a sequence."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: {what} must be integers, found a bool")
    if isinstance(value, numbers.Integral):
        return np.full(size, int(value), dtype=np.int64)
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        if arr.size == 0 and size == 0:
            return np.zeros(0, dtype=np.int64)
        raise TypeError(f"{name}: {what} must be integers, found dtype {arr.dtype}")
    if arr.ndim == 0:
        return np.full(size, int(arr), dtype=np.int64)
    if arr.shape != (size,):
        raise ValueError(f"{name}: {what} must have one entry per rank ({size}), found shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > _MAX_ELEMENTS:  # (astype would wrap it negative)
        d = int(np.argmax(arr))
        raise ValueError(f"{name}: {what}[{d}] is {int(arr[d])}: beyond any buffer")
    return arr.astype(np.int64)


def _is_integer(value) -> bool:
    """An integer as mpi4py reads one (an int, a numpy integer, a 0-d integer array), not a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "iu"
    return isinstance(value, numbers.Integral)


def parse(msg, size: int, writable: bool, name: str, MPI) -> Spec:
    """Normalize one buffer specification (raises TypeError / ValueError naming the problem)."""
    buf, counts, displs, dtype_arg = _unpack(msg, name, MPI)
    bottom = buf is None or buf is MPI.BOTTOM
    if bottom:  # no buffer: fine for a rank that sends or receives nothing (checked below)
        if dtype_arg is None:  # (and without a type, what it does not receive has no kind to agree on)
            raise TypeError(f"{name} is {'None' if buf is None else 'MPI.BOTTOM'} with no datatype: pass a buffer, "
                            f"or [None, 0, TYPE] on a rank that sends or receives nothing")
        buf = np.empty(0, np.uint8)
    device = _device.is_device(buf)
    if device:
        flat, own_dtype = _device.device_flat(buf, writable, name)
        nbytes, row, across = int(flat.size) * own_dtype.itemsize, 0, 0
    else:
        arr = _host_array(buf, writable, name)
        own_dtype = arr.dtype
        flat = _flat(arr)
        nbytes = arr.nbytes
        row = arr.shape[-1] if arr.ndim >= 2 and arr.flags.c_contiguous else 0
        across = arr.shape[-2] if row and arr.ndim >= 3 else 0
    datatype = _datatype(dtype_arg, own_dtype, name, MPI)
    _check_committed(datatype, name, MPI)
    elem = _element_dtype(datatype)
    _, extent = datatype.Get_extent()
    true_lb, true_extent = datatype.Get_true_extent()
    elem_size = datatype.Get_size()
    counts = _vector(counts, size, "counts", name)
    if counts is None:
        if extent <= 0 or nbytes % extent:
            raise ValueError(f"{name}: cannot infer counts: the buffer holds {nbytes} bytes, not a whole number "
                             f"of {extent}-byte elements; pass counts")
        total = nbytes // extent  # split as mpi4py does: the first total % size ranks get one more
        counts = np.full(size, total // max(size, 1), dtype=np.int64) + (np.arange(size) < total % max(size, 1))
    if _is_integer(displs):
        displs = np.arange(size, dtype=np.int64) * int(displs)  # mpi4py: an int is a stride
    else:
        displs = _vector(displs, size, "displs", name)
    huge = np.flatnonzero(counts > _MAX_ELEMENTS // max(size, 1))
    if huge.size:  # (their sum, the inferred displacements, would overflow int64)
        d = int(huge[0])
        raise ValueError(f"{name}: the segment for rank {d} (counts {counts[d]}) ends beyond the buffer's "
                         f"{nbytes} bytes")
    if displs is None:
        displs = np.zeros(size, dtype=np.int64)
        np.cumsum(counts[:-1], out=displs[1:])
    if bottom and counts.any():
        raise TypeError(f"{name}: a buffer of None or MPI.BOTTOM (absolute addresses) with counts "
                        f"{counts.tolist()}: embzip.comm needs the buffer itself (None or MPI.BOTTOM only with "
                        f"all counts 0)")
    for what, vec in (("counts", counts), ("displs", displs)):
        bad = np.flatnonzero(vec < 0)
        if bad.size:
            raise ValueError(f"{name}: {what}[{bad[0]}] is {vec[bad[0]]}, must be >= 0")
    used = counts > 0
    if used.any():
        if extent <= 0:
            raise ValueError(f"{name}: the datatype's extent is {extent} bytes; embzip.comm needs a positive "
                             f"extent to place segments")
        # counts or displacements beyond any buffer would overflow the int64 arithmetic below
        # (a wrapped, negative end would pass): such a segment cannot fit, say so now
        huge = np.flatnonzero(used & ((counts > _MAX_ELEMENTS // extent) | (displs > _MAX_ELEMENTS // extent)))
        if huge.size:
            d = int(huge[0])
            raise ValueError(f"{name}: the segment for rank {d} (displs {displs[d]}, counts {counts[d]}) ends "
                             f"beyond the buffer's {nbytes} bytes")
        ends = (displs[used] + counts[used] - 1) * extent + true_lb + true_extent
        worst = int(np.argmax(ends))
        if ends[worst] > nbytes:
            d = int(np.flatnonzero(used)[worst])
            raise ValueError(f"{name}: the segment for rank {d} (displs {displs[d]}, counts {counts[d]}) ends at "
                             f"byte {int(ends[worst])}, beyond the buffer's {nbytes} bytes")
        starts = displs[used] * extent + true_lb  # (a datatype with a negative lower bound reaches back)
        first = int(np.argmin(starts))
        if starts[first] < 0:
            d = int(np.flatnonzero(used)[first])
            raise ValueError(f"{name}: the segment for rank {d} (displs {displs[d]}, counts {counts[d]}) starts at "
                             f"byte {int(starts[first])}, before the buffer (the datatype's lower bound is {true_lb})")
        if writable and extent == elem_size == true_extent and true_lb == 0:
            _overlap.check_receive_disjoint(counts, displs, name)
    kind = 0
    if elem is not None and elem in FLOAT_KINDS and (own_dtype == elem or own_dtype in _BYTE_KINDS):
        kind = FLOAT_KINDS[elem]
        if own_dtype != elem:  # untyped bytes declared as floats: read them as floats
            flat, row, across = _as_elements(flat, elem), 0, 0
    return Spec(buf=buf, flat=flat, dtype=elem, datatype=datatype, counts=counts, displs=displs,
                extent=int(extent), elem_size=int(elem_size), device=device, row=int(row), kind=kind,
                true_lb=int(true_lb), true_extent=int(true_extent), rows_across=int(across))


def _flat(arr: np.ndarray) -> np.ndarray:
    """The elements of a contiguous host array in memory order, as a 1-D view."""
    return arr.reshape(-1) if arr.flags.c_contiguous else arr.ravel(order="K")


def _as_elements(flat: np.ndarray, elem) -> np.ndarray:
    """Untyped bytes (``_BYTE_KINDS``) read as elements of ``elem``: the whole ones."""
    return flat[:flat.nbytes - flat.nbytes % elem.itemsize].view(elem)


def rebind(spec: Spec, buf) -> Spec:
    """``spec`` for another host array of the same type, dtype, shape, strides and writeable
    flag as its own (what :func:`parse` read of the buffer): the same Spec but for the buffer
    itself, without parsing and validating it again. A relation between two buffers (sharing
    memory) is the caller's to check."""
    arr = buf if type(buf) is np.ndarray else buf.view(np.ndarray)
    flat = _flat(arr)
    if flat.dtype != spec.flat.dtype:
        flat = _as_elements(flat, spec.flat.dtype)
    new = shallow_copy(spec)  # (its cached tiles_flat too: a property of the layout, not the memory)
    new.buf, new.flat = buf, flat
    return new


def shallow_copy(obj):
    """``copy.copy`` of a plain dataclass instance (its ``__dict__``, cached properties too), in
    a fifth of the time: the express lane's rebind takes three each call of a training loop."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    return new


def is_in_place(msg, MPI) -> bool:
    """Whether ``msg`` is one of mpi4py's in-place send buffers: None, ``MPI.IN_PLACE``, or a
    ``[MPI.IN_PLACE, ...]`` specification (whose other items MPI ignores)."""
    if msg is None or msg is MPI.IN_PLACE:
        return True
    return isinstance(msg, (list, tuple)) and len(msg) > 0 and msg[0] is MPI.IN_PLACE


def in_place_send(recv: Spec, size: int, MPI):
    """The send side of an in-place call: ``recv``'s buffer as MPI sends it from
    ``MPI_IN_PLACE`` (``recv``'s counts, displacements and datatype), in a buffer of its own.

    Returns (Spec, fill): for a GPU buffer the copy is taken now and ``fill`` is None; for a host
    buffer the Spec's buffer is allocated but not yet written, and ``fill()`` copies the receive
    buffer into it. Why deferred: a raw call whose ranks all pass ``MPI_IN_PLACE`` hands the
    buffer to MPI's own in-place ``Alltoallv`` and never needs the copy (measured, 2 ranks, 10.6
    MB: 0.85 ms for MPICH's in-place call, 4.4 ms with the copy). The compressed calls do: the
    streamed and pipelined ones decode received segments into the buffer while they still
    encode segments to send from it. The allocation is made here, before the handshake, so
    that a refused allocation is this rank's error, agreed on; under Linux's overcommit a
    shortage shows only when the copy writes the memory (as for any copy), after it.
    """
    if recv.device:
        snapshot = _device.empty(recv.flat.size, recv.flat.dtype, like=recv.flat)
        _device.copy(snapshot, recv.flat)
        fill = None
    else:
        source = _host_array(recv.buf, False, "recvbuf")
        snapshot = np.empty_like(source, order="K")  # (contiguous: the receive buffer is)
        fill = functools.partial(np.copyto, snapshot, source)
    send = parse([snapshot, (recv.counts, recv.displs), recv.datatype], size, False, "sendbuf (MPI.IN_PLACE)", MPI)
    return dataclasses.replace(send, row=recv.row, rows_across=recv.rows_across), fill
