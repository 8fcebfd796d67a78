"""Reuse the last call's validated arguments when a call repeats them.

Why: a training loop calls the all-to-all with the same buffers, counts and bounds every step,
and parsing and validating them costs ~0.1-0.2 ms of Python per call, several times that
with the cold caches a training step leaves, while a bypassed call must cost what a plain
``Alltoallv`` costs. So each communicator remembers the last successful call's
arguments (by identity for buffers, which the cache keeps alive so an identity cannot be
reused by another object, and by value for everything mutable: counts, displacements,
bounds, the writeable flag, a buffer's data pointer and strides) with the :class:`~._protocol.Job` they produced.

Only numpy buffers and plain values are remembered; anything else (GPU arrays, bytes-like
objects, unusual types) makes a call skip the cache and validate in full, as before. An
in-place call (``MPI.IN_PLACE`` or None as sendbuf) is keyed on its receive buffer; its Job
keeps the memory of the send side's copy (see ``_spec.in_place_send``), written again by
each call that needs the copy.
"""

from __future__ import annotations

import copy
import numbers

import numpy as np

from . import _mpi

__all__ = ["address", "addresses", "key_of", "loosen", "Memo"]

_MAX_VECTOR = 4096  # counts longer than this are not worth hashing


# ndarray's own __array_interface__: a subclass may override the attribute (and say another
# address than the one MPI is given), the descriptor reads the array's real one
_INTERFACE = np.ndarray.__dict__["__array_interface__"].__get__


def address(arr: np.ndarray) -> int:
    """Where ``arr``'s first element is, as ndarray itself says (``__array_interface__``), read
    by ``MPI.Get_address`` for a contiguous plain ndarray (0.4 us, ~18 with cold caches,
    against 2.1 and ~43 for the interface, measured; the express lane reads two each call).
    Only a plain one: a subclass could say another address through the protocols MPI reads.
    Never raises for an ndarray: the lane calls it before any MPI call, where one rank's
    exception would leave the others waiting."""
    if type(arr) is np.ndarray:
        try:
            return _mpi.load().Get_address(arr)
        except Exception:  # (BufferError: not contiguous; the interface says where it starts)
            pass
    return _INTERFACE(arr)["data"][0]


class _Skip(Exception):
    """This argument is not cacheable: validate the call in full."""


_INT = frozenset((int,))


def _vector(value):
    kind = type(value)
    if kind is list or kind is tuple:  # (the usual, first: an ABC isinstance costs ~0.3 us)
        if len(value) <= _MAX_VECTOR and _INT.issuperset(map(type, value)):
            return ("l", *value)
    elif value is None or kind is int:
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        # as an int: a numpy integer compared with another key's tuple here broadcasts, and
        # its truth raised ValueError in the memo's lookup, on one rank (found by review)
        return int(value)
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.size > _MAX_VECTOR or value.dtype.kind not in "iu":
            raise _Skip
        return ("v", value.dtype.str, value.tobytes())
    if isinstance(value, (list, tuple)) and len(value) <= _MAX_VECTOR:
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
            raise _Skip
        return ("l", *[int(v) for v in value])
    raise _Skip


def _buffer(value, keep: list, pins: list):
    if not isinstance(value, np.ndarray) or value.dtype.hasobject:
        raise _Skip
    keep.append(value)  # alive while cached: its id cannot be taken by another array
    # which array, and where its memory is (one array object can move, by resize(refcheck=False)
    # or new strides): the key's pins, see key_of
    pins += (id(value), address(value))
    # the dtype itself (its str is not all of it: a one-byte struct and V1 are both "|V1", and
    # parse reads only V1 as bytes) and its char (int64 "l" and "q" are equal but get other MPI types)
    return ("a", type(value), value.flags.writeable, value.dtype, value.dtype.char, value.shape, value.strides)


def _part(value, keep: list):
    """Key of a specification item after the buffer: counts, displacements or datatype."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, tuple):  # (counts, displs)
        return ("p", *map(_vector, value))
    if isinstance(value, (np.ndarray, list)):  # counts (first: hasattr of a missing name costs ~0.5 us)
        return _vector(value)
    if hasattr(value, "py2f"):  # an MPI.Datatype (not hashable itself)
        keep.append(value)
        return ("t", id(value), value.py2f())
    return _vector(value)


def _spec(msg, keep: list, pins: list):
    if isinstance(msg, np.ndarray):
        return _buffer(msg, keep, pins)
    if isinstance(msg, (list, tuple)) and 2 <= len(msg) <= 4:
        return ("s", type(msg) is tuple, _buffer(msg[0], keep, pins), *[_part(v, keep) for v in msg[1:]])
    raise _Skip


def _bounds(bounds, keep: list, pins: list):
    if bounds is None:
        return None
    if isinstance(bounds, (int, float)):
        return ("n", bounds, type(bounds))  # (True == 1: the type tells them apart)
    if hasattr(bounds, "dim") and hasattr(bounds, "bounds"):  # a TableLayout (frozen; its array is not)
        keep.append(bounds)
        pins.append(id(bounds))
        inner = bounds.bounds
        return ("layout", type(bounds), bounds.dim,  # (a look-alike is not a TableLayout)
                None if inner is None else (inner.shape, inner.tobytes()))
    if isinstance(bounds, np.ndarray):
        return ("b", bounds.dtype.str, bounds.shape, bounds.tobytes())
    if isinstance(bounds, (list, tuple)) and all(v is None or isinstance(v, (int, float)) for v in bounds):
        return ("b", *[(v, type(v)) for v in bounds])
    raise _Skip


def key_of(sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass, chunk_bytes, in_place=False):
    """(key, objects to keep alive) for these arguments, or (None, None) when not cacheable.
    ``in_place``: ``sendbuf`` is one of MPI's in-place forms (recvbuf alone says what is sent).

    The key is (loose, pins): ``loose`` says what the arguments are (see :func:`loosen`), the
    pins which objects they are: each buffer's id and address (the send buffer's first, when
    there is one), then a TableLayout's id. Two keys apart so that the express lane, moving
    onto a training loop's new arrays each step, compares the loose part without building it
    again (it did: a fifth of the lane's Python in that loop's form)."""
    keep, pins = [], []
    try:
        for scalar in (abs_error, rel_error, strategy, bypass, chunk_bytes):
            if scalar is not None and not isinstance(scalar, (bool, int, float, str)):
                raise _Skip
        # scalars with their types: True == 1, and the full path refuses a bool bound
        loose = (("in place",) if in_place else _spec(sendbuf, keep, pins), _spec(recvbuf, keep, pins), abs_error,
                 type(abs_error), rel_error, type(rel_error), strategy, _bounds(bounds, keep, pins), bypass,
                 type(bypass), chunk_bytes, type(chunk_bytes))
        key = (loose, tuple(pins))
        hash(key)
    except Exception:  # (_Skip, unhashable, or an object that breaks when looked at: parse reports it, agreed)
        return None, None
    return key, keep


def loosen(key):
    """``key`` with its buffers and TableLayout by what they are, not which objects: a buffer's
    type, writeable flag, dtype, shape and strides (not its identity nor its address), a
    layout's dim and bounds. Two calls with equal loose keys differ only in which arrays of one
    layout they pass (a training loop's fresh arrays of every step): see ``_spec.rebind``."""
    return key[0]


def addresses(key):
    """(send, receive) buffers' addresses in ``key``, of a call that is not in place."""
    return key[1][1], key[1][3]


class Memo:
    """The last successful call's argument key and Job, and the handshake it agreed to."""

    __slots__ = ("key", "keep", "job", "agreed", "row_key", "row", "lane", "sequenced")

    def __init__(self):
        self.key, self.keep, self.job, self.agreed = None, None, None, None
        # the last agreed table showed an empty segment on some rank: no rank fuses (see
        # _collective.fuses), so that none spins in its payload while others wait for the verdict
        self.sequenced = False
        self.lane = None  # the express lane of this key's uncompressed repeats (see _express)
        self.row_key, self.row = None, None  # the handshake row of an uncompressed repeat

    def lookup(self, key):
        """A copy of the remembered Job (a call may still set its error) when ``key`` matches."""
        return copy.copy(self.job) if key is not None and key == self.key else None

    def store(self, key, keep, job):
        # a copy: the call goes on with ``job``, and a failure it meets sets job.error, which
        # every later call with these arguments would raise again (it did)
        self.key, self.keep, self.job = key, keep, copy.copy(job)
        self.lane = None  # its objects are kept alive by the old key only
        self.row_key = self.row = None  # keyed on the old Job's objects: never reuse it for a new one
