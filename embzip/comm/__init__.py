"""Compressed all-to-all over MPI: a drop-in for mpi4py's ``Alltoallv``.

Change one line::

    comm.Alltoallv(s, r)                                        # before
    embzip.comm.Alltoallv(comm, s, r, rel_error=0.01)           # after

or wrap the communicator once: ``comm = embzip.comm.Comm(MPI.COMM_WORLD, rel_error=0.01)``.
Float32 / float64 segments are compressed with a hard per-element bound; other types pass
through unchanged. Errors on any rank raise on every rank (never a hang), and a cost model
sends raw bytes when compression would not pay on this link. See ``docs/comm.md``.

Importing this module does not import mpi4py; the first call does.
"""

from __future__ import annotations

from . import _express, _interrupts
from ._errors import CommDecodeError, CommError, CommTypeError, CommValueError
from ._layout import TableLayout
from ._stats import CallStats

__all__ = ["Alltoallv", "Ialltoallv", "Comm", "Request", "TableLayout", "CallStats", "last_stats", "forget",
           "CommError", "CommValueError", "CommTypeError", "CommDecodeError"]


def Alltoallv(comm, sendbuf, recvbuf, *, abs_error=None, rel_error=None, strategy="auto", bounds=None,
              bypass="auto") -> CallStats:
    """Compressed ``comm.Alltoallv(sendbuf, recvbuf)``: collective over ``comm``.

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm
        The communicator (every rank calls, as for ``Alltoallv``).
    sendbuf, recvbuf : buffer specification
        Any mpi4py form: ``buf``, ``[buf, TYPE]``, ``[buf, counts]``, ``[buf, (counts, displs)]``,
        ``[buf, counts, TYPE]``, ``[buf, (counts, displs), TYPE]``, ``[buf, counts, displs, TYPE]``;
        counts and displacements in elements, None to infer them as mpi4py does. ``buf`` is a
        contiguous numpy array, bytes-like object, or GPU array (cupy, torch, anything with
        ``__cuda_array_interface__``); ``recvbuf`` must be writable, and share no memory
        with the send segments. ``sendbuf`` may be ``MPI.IN_PLACE`` (or None): ``recvbuf``'s
        contents are sent, then replaced. float32 / float64 data are compressed; any other
        type is sent unchanged.
    abs_error, rel_error : float
        Exactly one (for float data): every received element is within ``abs_error`` of the sent
        one, or within ``rel_error * (max - min)`` where the range is taken over the frame
        the element travelled in: one destination's segment (or, with per-table bounds, the
        tables of that segment sharing a bound). The segment a rank sends itself is copied exactly.
        Bounds belong to the sender: ranks may pass different bounds, or modes, and each
        segment travels under its sender's (frames say which; receivers need not know).
    strategy : {"auto", "fast", "compact"}
        The encoder: bit-packing (fast), rANS (compact), or ``auto``: whichever the measured
        codec speeds, ratios and link bandwidth say finishes first.
    bounds : sequence or TableLayout, optional
        One bound per destination (``None`` or NaN entries take the default), or a
        :class:`TableLayout` describing ``[batch, tables * dim]`` rows, optionally with one
        bound per table.
    bypass : {"auto", True, False}
        ``auto``: send raw when the cost model says compression would not pay (decided
        collectively from measurements); ``True``: always raw; ``False``: always compress.
        Must be the same on every rank.

    Returns
    -------
    CallStats
        This rank's statistics (bytes raw and on the wire, seconds per phase, bypassed or not).

    Raises
    ------
    CommValueError, CommTypeError
        Bad arguments on any rank, mismatched send/receive counts between any two ranks
        (also ``ValueError`` / ``TypeError``); raised on every rank, message naming the rank.
    CommDecodeError
        A received frame failed to decode on some rank; raised on every rank.

    Examples
    --------
    Under ``mpiexec -n 4`` each rank sends 512 rows to every rank; a lone process (mpi4py's
    singleton) works too.

    >>> import numpy as np, embzip.comm
    >>> from mpi4py import MPI
    >>> comm = MPI.COMM_WORLD
    >>> send = np.random.default_rng(comm.rank).normal(size=(comm.size * 512, 50)).astype(np.float32)
    >>> recv = np.empty_like(send)
    >>> stats = embzip.comm.Alltoallv(comm, send, recv, rel_error=0.01)
    >>> stats.mode, stats.raw_bytes == (comm.size - 1) * 512 * 50 * 4
    ('compressed', True)
    """
    held = _interrupts.enter()  # Ctrl-C is raised when the call is done (see _interrupts)
    try:
        # a repeat of an uncompressed call first, with as little Python as possible (see _express)
        stats = _express.try_call(comm, sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass)
        if stats is not None:
            return stats
        from ._collective import alltoallv

        return alltoallv(comm, sendbuf, recvbuf, abs_error=abs_error, rel_error=rel_error, strategy=strategy,
                         bounds=bounds, bypass=bypass, express=False)
    finally:
        _interrupts.leave(held)


def Ialltoallv(comm, sendbuf, recvbuf, *, abs_error=None, rel_error=None, strategy="auto", bounds=None,
               bypass="auto", chunk_bytes=512 * 1024):
    """Pipelined, nonblocking :func:`Alltoallv`: returns a :class:`Request`; call ``wait()``.

    Returns at once, as MPI's ``Ialltoallv``: a background thread runs the handshake (the same
    agreement as :func:`Alltoallv`; an error agreed there is raised by ``wait()``), then each
    destination's segment is cut into chunks of about ``chunk_bytes`` raw bytes on row
    boundaries; background threads compress chunk k+1 while chunk k is in flight and decode
    chunks as they arrive. The buffers must not be touched until ``wait()`` returns. At most
    one pipelined call is in flight per communicator: any later embzip call on it first
    completes the earlier one. A bypassed or non-float call is MPI's own ``Ialltoallv``.

    Parameters
    ----------
    comm, sendbuf, recvbuf, abs_error, rel_error, strategy, bounds, bypass
        As for :func:`Alltoallv`.
    chunk_bytes : int
        Raw bytes per chunk (per destination); must be the same on every rank.

    Returns
    -------
    Request
        ``wait()`` returns this rank's :class:`CallStats` (or raises the agreed error on
        every rank); ``test()`` polls.

    Examples
    --------
    >>> req = embzip.comm.Ialltoallv(comm, send, recv, rel_error=0.01)  # doctest: +SKIP
    >>> other_work()                                                     # doctest: +SKIP
    >>> stats = req.wait()                                               # doctest: +SKIP
    """
    from ._pipeline import ialltoallv

    return ialltoallv(comm, sendbuf, recvbuf, abs_error=abs_error, rel_error=rel_error, strategy=strategy,
                      bounds=bounds, bypass=bypass, chunk_bytes=chunk_bytes)


def last_stats(comm):
    """The :class:`CallStats` of the last completed embzip call on ``comm`` (this rank), or None.

    Examples
    --------
    >>> embzip.comm.last_stats(comm).bypassed  # doctest: +SKIP
    False
    """
    from ._mpi import peek_state

    state = peek_state(comm)
    return None if state is None else state.last


def forget(comm) -> None:
    """Let go of the buffers embzip keeps alive from the last call on ``comm`` (this rank).

    To make a training loop's repeated calls cheap, each communicator remembers the last
    call's arguments, buffers included, until a call with other arguments or until the
    communicator is freed: deleting them does not free their memory before that. ``forget``
    drops them now; the next call validates its arguments in full. Local, not collective.

    Examples
    --------
    >>> embzip.comm.Alltoallv(comm, big_send, big_recv, rel_error=0.01)  # doctest: +SKIP
    >>> del big_send, big_recv  # doctest: +SKIP
    >>> embzip.comm.forget(comm)  # doctest: +SKIP
    """
    from ._mpi import peek_state
    from ._reuse import Memo

    state = peek_state(comm)
    if state is not None:
        state.memo = Memo()


def __getattr__(name):
    # Comm subclasses mpi4py's Intracomm and Request wraps MPI requests: both are built on first
    # access so that importing this module never imports mpi4py.
    if name == "Comm":
        from ._wrapper import comm_class

        return comm_class()
    if name == "Request":
        from ._request import Request

        return Request
    raise AttributeError(f"module 'embzip.comm' has no attribute {name!r}")
