"""The request an ``Ialltoallv`` returns: ``wait()`` / ``test()`` (and mpi4py's ``Wait()`` /
``Test()``) complete the call's thread and MPI request, then record the call's statistics."""

from __future__ import annotations

import time

from . import _interrupts, _mpi
from ._collective import finish
from ._stats import CallStats

__all__ = ["Request"]


class Request:
    """Handle of a call started by :func:`embzip.comm.Ialltoallv`.

    ``wait()`` blocks until the receive buffer holds the result and returns the
    :class:`CallStats`; ``test()`` returns ``(done, stats or None)``, as mpi4py's lowercase
    ``test()`` returns ``(flag, what wait() returns)``. A failure (on any rank) is raised
    by ``wait()`` / ``test()`` on every rank. ``Wait()`` / ``Test()`` are mpi4py's spellings,
    so code written for ``comm.Ialltoallv`` keeps working. ``MPI.Request.Waitall`` does not
    take this object (it is not an MPI request); :meth:`Waitall` and :meth:`Testall` (and
    lowercase :meth:`waitall`, :meth:`testall`), as ``mpi4py.util.pkl5.Request`` has them, take
    a list mixing these requests and mpi4py's.
    """

    def __init__(self, state, stats: CallStats, start: float):
        self._state, self._stats, self._start = state, stats, start
        self._work = None
        self._mpi_request = None
        self._on_done = None
        self._error = None
        self._alt = None
        self._done = False

    @property
    def stats(self):
        """The call's :class:`CallStats` once complete (None before)."""
        return self._stats if self._done else None

    def _complete(self):
        if self._done:
            return
        if self._work is not None:
            crash = self._work.exception()  # (waits; run records every failure it expects)
            if crash is not None and self._error is None:
                self._error = crash
        if self._mpi_request is not None:
            start = time.perf_counter()
            self._mpi_request.Wait()
            self._stats.transfer_s += time.perf_counter() - start
            if self._on_done is not None:
                self._on_done()
        self._done = True
        if self._state.inflight is self:
            self._state.inflight = None
        finish(self._state, self._stats, self._start, self._alt, failed=self._error is not None)
        if self._state.free_pending:  # the caller freed the communicator meanwhile (see CommState.free)
            self._state.free()

    def _complete_holding_interrupts(self):
        """:meth:`_complete` with Ctrl-C raised once it is done, as after MPI's Wait (an
        interrupt inside it would skip its bookkeeping: see _interrupts)."""
        held = _interrupts.enter()
        try:
            self._complete()
        finally:
            _interrupts.leave(held)

    def wait_quietly(self):
        """Complete without raising (a later embzip call on the communicator does this)."""
        self._complete()

    def wait(self) -> CallStats:
        """Block until complete; return this rank's stats or raise the agreed error."""
        self._complete_holding_interrupts()
        if self._error is not None:
            raise self._error
        return self._stats

    def Wait(self, status=None):
        """mpi4py's spelling: :meth:`wait`, returning True as ``MPI.Request.Wait`` does (the
        stats are in :attr:`stats`). ``status`` is accepted and left as it is: a collective's
        status says nothing."""
        self.wait()
        return True

    def Test(self, status=None) -> bool:
        """mpi4py's spelling: True when complete (then ``wait()`` returns at once); raises the
        agreed error (``status`` as for :meth:`Wait`)."""
        if not self._ready():
            return False
        if self._error is not None:
            raise self._error
        return True

    def _ready(self) -> bool:
        """Complete the call if it can be without blocking; whether it is complete."""
        if not self._done:
            if self._work is not None and not self._work.done():
                time.sleep(0)  # hand the GIL to the call's MPI thread: a caller spinning on test() starved it
                return False
            if self._mpi_request is not None and not self._mpi_request.Test():
                return False
            self._complete_holding_interrupts()
        return True

    def test(self):
        """``(True, stats)`` when complete, else ``(False, None)``; raises the agreed error.

        The pair is mpi4py's lowercase ``Request.test()`` contract (the flag and what
        ``wait()`` returns), so ``flag, _ = req.test()`` written for mpi4py keeps working.
        """
        return (True, self._stats) if self.Test() else (False, None)

    # ---------------------------------------------------------------- lists of requests

    @classmethod
    def Waitall(cls, requests, statuses=None) -> bool:
        """Complete every request in ``requests``: embzip's and mpi4py's ``MPI.Request``.

        embzip's are completed first (one may need this rank's MPI calls, made from ``wait()``,
        before another rank sends what an MPI request here waits for), then MPI's with
        ``MPI.Request.Waitall``. Every request is complete before anything is raised (a
        Ctrl-C too is held until then, as MPI holds it); then the first failed embzip
        request's error (agreed by all ranks, or what completing it raised on this rank),
        else MPI's exception. ``statuses``: as for ``MPI.Request.Waitall`` (a list, extended
        to ``len(requests)``, or a sequence that long; the entries of embzip requests are left
        as they are). Returns True. ``mpi4py.util.pkl5``'s requests are not MPI requests:
        wait for them with pkl5's own ``waitall``.

        Examples
        --------
        >>> import numpy as np, embzip.comm
        >>> from mpi4py import MPI
        >>> x, y = np.arange(4.0), np.zeros(4)
        >>> req = embzip.comm.Ialltoallv(MPI.COMM_SELF, x, y, abs_error=0.01)
        >>> embzip.comm.Request.Waitall([req, MPI.COMM_SELF.Ibarrier()])
        True
        >>> bool(np.abs(y - x).max() <= 0.01), req.stats.mode
        (True, 'compressed')
        """
        return _all(requests, statuses, block=True)[0]

    @classmethod
    def Testall(cls, requests, statuses=None) -> bool:
        """True when every request in ``requests`` (embzip's and mpi4py's) is complete, then
        raising as :meth:`Waitall` does; False (nothing raised) while one is not.

        embzip's requests that are done are completed; MPI's are completed only together (all
        or none, by ``MPI.Request.Testall``), once embzip's all are. An embzip request whose
        completion fails on this rank (an MPI error) raises at once.
        """
        return _all(requests, statuses, block=False)[0]

    @classmethod
    def waitall(cls, requests, statuses=None) -> list:
        """:meth:`Waitall`, returning what each request's ``wait()`` returns: an embzip
        request's :class:`CallStats`; for mpi4py's, what ``MPI.Request.waitall`` returns (the
        received object of a lowercase ``irecv``, else None)."""
        return _all(requests, statuses, block=True, objects=True)[1]

    @classmethod
    def testall(cls, requests, statuses=None):
        """``(True, waitall's list)`` when all are complete (see :meth:`Testall`), else
        ``(False, None)``."""
        return _all(requests, statuses, block=False, objects=True)


def _all(requests, statuses, *, block: bool, objects: bool = False):
    """Waitall / Testall (``block``), and with ``objects`` the list of what each request's
    wait() returns: (whether all are complete, that list or None)."""
    requests = list(requests)
    ours, theirs, their_statuses = _split(requests, statuses)
    held = _interrupts.enter()  # one hold for the list: a Ctrl-C is raised once all are complete
    try:
        return _complete_all(requests, ours, theirs, their_statuses, block, objects)
    finally:
        _interrupts.leave(held)


def _complete_all(requests, ours, theirs, their_statuses, block: bool, objects: bool):
    failures = {}  # embzip request -> what completing it raised on this rank (an MPI error, say)
    if block:
        for request in ours:
            try:
                request._complete()
            except Exception as exc:  # (kept: the others are completed before anything is raised)
                failures.setdefault(id(request), exc)
    elif not all([request._ready() for request in ours]):  # (a list: poll every one)
        return False, None
    done, got, failure = True, [], None
    if theirs:
        MPI = _mpi.load()
        try:
            if objects:
                done, got = (True, MPI.Request.waitall(theirs, their_statuses)) if block else \
                    MPI.Request.testall(theirs, their_statuses)
            else:
                done = MPI.Request.Waitall(theirs, their_statuses) if block else \
                    MPI.Request.Testall(theirs, their_statuses)
        except Exception as exc:  # (raised below, after embzip's agreed error if there is one)
            failure = exc
    if failure is None and not done:  # (Testall: nothing is raised until all are complete)
        return False, None
    for request in ours:  # in list order: every rank raises the same agreed error
        error = failures.get(id(request), request._error)
        if error is not None:
            raise error
    if failure is not None:
        raise failure
    if not objects:
        return True, None
    theirs_got = iter(got)
    return True, [request._stats if isinstance(request, Request) else next(theirs_got) for request in requests]


def _split(requests, statuses):
    """(embzip's requests, mpi4py's, the statuses for mpi4py's): refused before anything waits."""
    MPI = None
    ours, theirs, their_statuses = [], [], None
    for k, request in enumerate(requests):
        if isinstance(request, Request):
            ours.append(request)
            continue
        MPI = MPI or _mpi.load()
        if not isinstance(request, MPI.Request):
            raise TypeError(f"requests[{k}] is a {type(request).__module__}.{type(request).__qualname__}, neither "
                            f"an embzip.comm.Request nor an MPI.Request (wait for mpi4py.util.pkl5's requests "
                            f"with their own waitall)")
        theirs.append(request)
    if statuses is not None:
        MPI = MPI or _mpi.load()
        if len(statuses) < len(requests):  # (mpi4py extends a list; a tuple must be long enough)
            if not isinstance(statuses, list):
                raise TypeError(f"statuses must be a list (extended to len(requests)) or hold one status per "
                                f"request, found a {type(statuses).__name__} of {len(statuses)} for "
                                f"{len(requests)} requests")
            statuses.extend(MPI.Status() for _ in range(len(statuses), len(requests)))
        their_statuses = [statuses[k] for k, request in enumerate(requests) if not isinstance(request, Request)]
    return ours, theirs, their_statuses
