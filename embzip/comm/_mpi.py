"""Lazy access to mpi4py, and the state embzip caches on each communicator.

Why lazy: ``import embzip`` (and even ``import embzip.comm``) must work where mpi4py is not
installed; only calling a collective needs it. Why cache on the communicator (an MPI
attribute): the private duplicate communicator and the cost-model measurements belong to
that communicator's life, are shared by every wrapper of the same handle, and are freed with it.
"""

from __future__ import annotations

import ctypes
import threading
import time

from ..errors import BackendUnavailableError

__all__ = ["load", "state_of", "peek_state", "cached_state", "CommState", "wait", "library_cuda_support"]

_MPI = None
_KEYVAL = None
# (communicator object, its state) of the last cached_state lookup: a training loop passes the
# same object every step, and an identity check is cheaper than MPI's attribute lookup
_RECENT = (None, None)
_CUDA_SUPPORT = None  # what the MPI library said of itself, once asked


def load():
    """The ``mpi4py.MPI`` module, imported on first use."""
    global _MPI
    if _MPI is None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise BackendUnavailableError(
                f"embzip.comm needs mpi4py (pip install 'embzip[mpi]'); importing it failed: {exc}") from None
        _MPI = MPI
    return _MPI


def library_cuda_support() -> bool:
    """Whether the MPI library says it handles CUDA device memory in this run.

    MPICH and Open MPI both export ``int MPIX_Query_cuda_support(void)``: true when the library
    was built with CUDA and its CUDA support is on (MPICH: ``MPIR_CVAR_ENABLE_GPU``; Open MPI
    4.1 answers how it was built, even on a machine without a GPU, unless ``--mca
    opal_cuda_support 0``; it is only asked when device buffers show up, which needs a GPU).
    It is looked up through mpi4py's extension module, so it is the library mpi4py uses. An MPI
    without the query counts as not CUDA-aware. Asked once MPI is initialized; the answer is
    kept (it is fixed for the life of the process).
    """
    global _CUDA_SUPPORT
    if _CUDA_SUPPORT is None:
        MPI = load()
        if not MPI.Is_initialized() or MPI.Is_finalized():
            return False
        try:
            query = ctypes.CDLL(MPI.__file__).MPIX_Query_cuda_support
        except (OSError, AttributeError):
            _CUDA_SUPPORT = False
        else:
            query.argtypes, query.restype = [], ctypes.c_int
            _CUDA_SUPPORT = bool(query())
    return _CUDA_SUPPORT


class CommState:
    """What embzip keeps per communicator (identical on every rank where it matters).

    ``comm`` is a private duplicate: embzip's handshakes, payloads and tags can never match a
    message or collective of the caller's. ``size`` and ``rank`` are the caller's
    communicator's (the same), readable before the duplicate is. ``costs`` only changes from values every rank
    reduced together, so every rank takes the same bypass decision without a vote.
    """

    def __init__(self, comm):
        from ._costs import CostState
        from ._placement import CodecPlacement
        from ._reuse import Memo

        MPI = load()
        # a plain Intracomm: a subclass's Dup (embzip.comm.Comm's) would return the subclass,
        # whose Alltoallv is the compressed one. Idup, not Dup: a first Ialltoallv must return
        # before the other ranks have called it (the duplicate completes in the call's thread)
        dup, self._duplicating = MPI.Comm.Idup(comm)
        self._comm = MPI.Intracomm(dup)
        self._dup_lock = threading.Lock()  # (the call's thread and a free() may both complete it)
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self.costs = CostState()
        self.placement = CodecPlacement()  # where this rank's codec runs for GPU buffers (local)
        self.pending = None  # this rank's measurements of the last call, reduced at the next one
        self.last = None  # CallStats of the last completed call on this rank
        self.inflight = None  # the pipelined call not yet completed (at most one per communicator)
        self.memo = Memo()  # the last successful call's arguments and handshake (see _reuse)
        self.free_pending = False  # the caller freed the communicator while a call was in flight

    @property
    def comm(self):
        """The private duplicate (None once freed); waits for its duplication to complete."""
        if self._duplicating is not None:
            with self._dup_lock:
                if self._duplicating is not None:
                    wait(self._duplicating)
                    self._duplicating = None
        return self._comm

    @comm.setter
    def comm(self, value):
        self._comm = value

    def free(self):
        MPI = load()
        if self._duplicating is not None and not MPI.Is_finalized() and not _locks_in_callbacks(MPI):
            # the caller's communicator is being freed: complete its duplication first (Open
            # MPI segfaulted freeing a communicator with an Idup of it pending; every rank
            # posted its Idup in its first call, so this does not wait for a call to come)
            self.comm  # noqa: B018
        if self.inflight is not None:
            # MPI lets a communicator be freed with an operation pending, which still completes:
            # the pipelined call keeps this state's communicator until its request completes
            # (Request._complete frees it then)
            self.free_pending = True
            return
        if self._comm is not None and not MPI.Is_finalized():
            try:
                self.comm.Free()  # (waits for a duplication still in flight first)
            except Exception:  # freeing is best effort: MPI may be shutting down
                pass
        self._comm, self._duplicating = None, None
        from ._reuse import Memo

        self.memo = Memo()  # drops the caller's buffers now: _RECENT may hold this state a while


def _locks_in_callbacks(MPI) -> bool:
    """Whether MPI runs attribute callbacks holding its own lock: MPICH and the MPIs built on
    it do, so a callback that waits for another thread's MPI call deadlocks (measured: a
    communicator freed while a late rank's Idup of it was pending hung). MPICH also completes
    such an Idup correctly after the free, so there the callback need not wait."""
    return MPI.Get_library_version().startswith("MPICH")


def _delete(comm, keyval, state):  # MPI attribute delete callback: the user's comm is being freed
    state.free()


def state_of(comm) -> CommState:
    """The cached :class:`CommState` of ``comm``, created (collectively: Dup) on first use."""
    MPI = load()
    global _KEYVAL
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py communicator, found {type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL")
    if comm.Is_inter():
        raise TypeError("embzip.comm supports intracommunicators only, found an intercommunicator")
    if _KEYVAL is None:
        _KEYVAL = MPI.Comm.Create_keyval(delete_fn=_delete)
    state = comm.Get_attr(_KEYVAL)
    if state is None:
        state = CommState(comm)
        comm.Set_attr(_KEYVAL, state)
    return state


def cached_state(comm):
    """The cached state of ``comm``, or None, with the least work: for the express lane.

    The last answer is remembered with the communicator object; it stands while that state is
    not freed (freeing ``comm`` runs the attribute's delete callback, which frees the state).
    """
    global _RECENT
    recent, state = _RECENT
    if state is not None and comm is recent and state.comm is not None:  # (None before any call: comm=None too)
        return state
    if _KEYVAL is None or not isinstance(comm, _MPI.Comm):
        return None
    try:
        state = comm.Get_attr(_KEYVAL)
    except Exception:  # COMM_NULL and the like: the full path reports it
        return None
    if state is not None:
        _RECENT = (comm, state)
    return state


def peek_state(comm):
    """The cached state of ``comm``, or None; never collective (creates nothing)."""
    MPI = load()
    if _KEYVAL is None or not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL:
        return None
    return comm.Get_attr(_KEYVAL)


#: Seconds a rank busy-polls a request before it starts sleeping between tests.
SPIN_S = 2e-4
_MAX_NAP_S = 1e-4


def wait(request) -> None:
    """Complete an MPI request without holding a core for long.

    MPI's blocking calls busy-poll. When ranks share cores (or the host is busy), a rank that
    finished compressing and waits in a collective would take CPU from ranks still
    compressing; after a short spin this one naps (<= 0.1 ms) between tests instead.
    """
    deadline = time.perf_counter() + SPIN_S
    while not request.Test():
        if time.perf_counter() > deadline:
            break
    else:
        return
    nap = 1e-5
    while not request.Test():
        time.sleep(nap)
        nap = min(2 * nap, _MAX_NAP_S)
