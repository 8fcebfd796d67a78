"""The request an ``Ialltoallv`` returns: ``wait()`` / ``test()`` (and mpi4py's ``Wait()`` /
``Test()``) complete the call's thread and MPI request, then record the call's statistics."""

from __future__ import annotations

import time

from . import _interrupts
from ._collective import finish
from ._stats import CallStats

__all__ = ["Request"]


class Request:
    """Handle of a call started by :func:`embzip.comm.Ialltoallv`.

    ``wait()`` blocks until the receive buffer holds the result and returns the
    :class:`CallStats`; ``test()`` returns ``(done, stats or None)``, as mpi4py's lowercase
    ``test()`` returns ``(flag, what wait() returns)``. A failure (on any rank) is raised
    by ``wait()`` / ``test()`` on every rank. ``Wait()`` / ``Test()`` are mpi4py's spellings,
    so code written for ``comm.Ialltoallv`` keeps working; ``MPI.Request.Waitall`` does not
    take this object (it is not an MPI request): wait for it on its own.
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
        if not self._done:
            if self._work is not None and not self._work.done():
                time.sleep(0)  # hand the GIL to the call's MPI thread: a caller spinning on test() starved it
                return False
            if self._mpi_request is not None and not self._mpi_request.Test():
                return False
            self._complete_holding_interrupts()
        if self._error is not None:
            raise self._error
        return True

    def test(self):
        """``(True, stats)`` when complete, else ``(False, None)``; raises the agreed error.

        The pair is mpi4py's lowercase ``Request.test()`` contract (the flag and what
        ``wait()`` returns), so ``flag, _ = req.test()`` written for mpi4py keeps working.
        """
        return (True, self._stats) if self.Test() else (False, None)
