"""MPI's C entry points for the express lane: its three MPI calls from one compiled function.

Why: a bypassed call must cost what a plain ``Alltoallv`` costs. Measured on 2 ranks / 2 cores
with a 10.6 MB shared-memory exchange (plain ~1.6 ms), the lane's Python around MPI cost
~70-90 us per call even after it was cut to one compiled bookkeeping step: ~11-17 us for
mpi4py's ``Iallgather`` (buffer parsing, a Request object), ~8-10 us completing it, ~17-24 us
dispatching the bookkeeping, each paid with caches cold after megabytes of payload. Called
through MPI's C API from compiled code, the gather, the payload and the wait cost one
dispatch. A sequenced lane (see ``_express``) makes the same calls in the other order: the
gather and its wait, then the payload only when the gathered table is the agreed one.

The functions are the ones mpi4py itself calls: looked up (``dlsym``) through mpi4py's
extension module, whose dependencies include the MPI library it was built for. Handles come
from mpi4py objects (``.handle``), their width from ``MPI._sizeof``. The payload goes through
``MPI_Alltoallv_c`` (MPI-4 large counts: MPICH) or, where the library lacks it (Open MPI 5.0),
``MPI_Alltoallv`` with C ``int`` counts for calls whose counts and displacements fit
(``EMBZIP_NATIVE_MPI=int`` picks that one anywhere: the tests run both on MPICH). When
anything needed is missing (a symbol, a handle wider than 8 bytes, ``MPI_Aint`` /
``MPI_Count`` not 8 bytes, counts too large for ``int``), :func:`exchange` returns None and
the lane calls MPI through mpi4py.

Errors: the communicator's error handler decides, as for mpi4py's calls (mpi4py installs
``MPI_ERRORS_RETURN``, which duplicates inherit): error codes are returned, turned into
``MPI.Exception`` by the caller, and handled as a failed mpi4py call would be.
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np

from .._jit import kernel
from . import _mpi
from . import _cost_kernels as K

__all__ = ["exchange", "Plan", "FAILED", "NOT_RAW"]

#: What the compiled exchange returns instead of the bookkeeping's result when MPI failed.
FAILED = -3.0
#: ... and when the cost model decided to compress this call (nothing was sent).
NOT_RAW = -4.0
_RAW = 2
# plan slots (int64): the gather's count and datatype, the communicator, per side the address
# (the send side's: MPI_IN_PLACE's for a lane in place) and datatype, the size, the row length,
# the decision's bypass and strategy codes (bypass -1: a pass-through call), the codes of the
# three calls, then the request, the status, the order (0: the payload while the gather is in
# flight; 1: after it, only when the table is the agreed one), whether the transfer is a
# bandwidth sample, and the four count / displacement vectors (MPI_Count / MPI_Aint, both 8
# bytes here; or C ints, packed)
_GATHER_COUNT, _DOUBLE, _COMM, _SEND, _SEND_TYPE, _RECV, _RECV_TYPE, _SIZE, _LENGTH, _BYPASS, _STRATEGY = range(11)
_CODES = 11  # three slots: Iallgather, Alltoallv_c, Wait
_REQUEST = 14
_STATUS = 15  # MPI_Status: at most _STATUS_SLOTS * 8 bytes (checked)
_STATUS_SLOTS = 8
_SEQUENCED = _STATUS + _STATUS_SLOTS
_SAMPLE = _SEQUENCED + 1
_VECTORS = _SAMPLE + 1

# per payload call wanted ("large" or "int"): (compiled exchange, handle converter, bytes per
# count) once resolved; False: unavailable
_entries = {}


def _functions(MPI, large: bool = True):
    """The ctypes functions, or None when this MPI does not offer what the lane needs."""
    try:  # (private helpers of mpi4py: an mpi4py without them has no native lane)
        widths = {MPI._sizeof(cls) for cls in (MPI.Comm, MPI.Datatype, MPI.Request)}
        status, aint, count = MPI._sizeof(MPI.Status), MPI.AINT.Get_size(), MPI.COUNT.Get_size()
    except (AttributeError, TypeError, MPI.Exception):
        return None
    if len(widths) != 1 or widths.pop() not in (4, 8) or status > 8 * _STATUS_SLOTS or aint != 8 or count != 8 \
            or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    width = MPI._sizeof(MPI.Comm)
    handle = ctypes.c_int32 if width == 4 else ctypes.c_int64
    # pointers as 64-bit integers: the same registers and stack slots in the C calling
    # convention of every 64-bit target numba supports, and numba passes integers directly
    pointer, c_int = ctypes.c_int64, ctypes.c_int
    try:
        lib = ctypes.CDLL(MPI.__file__)
        gather, wait, wtime = lib.MPI_Iallgather, lib.MPI_Wait, lib.MPI_Wtime
    except (OSError, AttributeError):
        return None
    payload = getattr(lib, "MPI_Alltoallv_c", None) if large else None  # MPI-4 large counts (MPICH)
    count_bytes = 8
    if payload is None:  # Open MPI 5.0 has only the int one
        payload, count_bytes = getattr(lib, "MPI_Alltoallv", None), 4
        if payload is None:
            return None
    gather.argtypes = [pointer, c_int, handle, pointer, c_int, handle, handle, pointer]
    payload.argtypes = [pointer, pointer, pointer, handle, pointer, pointer, pointer, handle, handle]
    wait.argtypes = [pointer, pointer]
    for function in (gather, payload, wait):
        function.restype = ctypes.c_int
    wtime.argtypes, wtime.restype = [], ctypes.c_double
    return (gather, payload, wait, wtime), functools.partial(signed_handle, bits=8 * width), count_bytes


def signed_handle(value: int, bits: int) -> int:
    """A handle as the signed integer of its width, C's view of it (mpi4py's ``.handle`` gives
    MPICH's int handles sign-extended and then read as unsigned: 0xffffffff84000000)."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _compile(functions, steps, count_bytes: int):
    gather, payload, wait, wtime = functions
    agreed, conclude = steps
    vector_bytes = count_bytes  # (a constant of the compiled function: bytes per count / displacement)

    @kernel(cache=False)  # (calls through addresses of this process: never cached on disk)
    def run(buf, plan, costs):
        """The decision (``costs``: the cost state's vector; none for a pass-through call),
        then Iallgather (this rank's row into the table, both in ``buf``) and the blocking
        payload Alltoallv: while the gather is in flight, then Wait (a fused lane); or, for
        a sequenced lane, Wait first and the payload only when the table is the agreed one
        (``agreed``). Then ``conclude``, and the decision's schedule update once the table is
        the agreed one. Returns (what ``conclude`` returns, -2.0 when a sequenced lane's table
        was not the agreed one (nothing sent), FAILED with the codes in the plan, or NOT_RAW
        when the decision is to compress; seconds of the payload (a fused lane: with the
        gather); seconds until the gather completed; then what CallStats shows of the
        decision: the reason code and the model's six values, see ``_cost_kernels``): as one
        tuple of floats, which costs less to build here than to read from the vector in
        Python."""
        out, bypass = K.OUT, plan[_BYPASS]
        if bypass >= 0 and K.decide_into(costs, bypass, plan[_STRATEGY]) != _RAW:
            return NOT_RAW, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
        base, data = plan.ctypes.data, buf.ctypes.data
        size, length = plan[_SIZE], plan[_LENGTH]
        request, status, vectors = base + 8 * _REQUEST, base + 8 * _STATUS, base + 8 * _VECTORS
        step = vector_bytes * size
        plan[_REQUEST] = 0
        start = wtime()
        code = gather(data + 8 * size * length, plan[_GATHER_COUNT], plan[_DOUBLE], data, plan[_GATHER_COUNT],
                      plan[_DOUBLE], plan[_COMM], request)
        plan[_CODES] = code
        plan[_CODES + 1] = 0
        plan[_CODES + 2] = 0
        sample, seconds, gathered = FAILED, 0.0, 0.0
        if code == 0 and plan[_SEQUENCED] == 0:  # (as the mpi4py lane: no payload when the gather could not be posted)
            plan[_CODES + 1] = payload(plan[_SEND], vectors, vectors + step, plan[_SEND_TYPE], plan[_RECV],
                                       vectors + 2 * step, vectors + 3 * step, plan[_RECV_TYPE], plan[_COMM])
            plan[_CODES + 2] = wait(request, status)
            seconds = gathered = wtime() - start
        elif code == 0:
            plan[_CODES + 2] = wait(request, status)
            gathered = wtime() - start
            if plan[_CODES + 2] == 0:
                if not agreed(buf, size, length):
                    sample = -2.0  # (nothing sent: the caller's verdict decides, and sends)
                else:
                    begun = wtime()
                    plan[_CODES + 1] = payload(plan[_SEND], vectors, vectors + step, plan[_SEND_TYPE], plan[_RECV],
                                               vectors + 2 * step, vectors + 3 * step, plan[_RECV_TYPE], plan[_COMM])
                    seconds = wtime() - begun
        if plan[_CODES] == 0 and plan[_CODES + 1] == 0 and plan[_CODES + 2] == 0 and sample == FAILED:
            sample = conclude(buf, size, length, seconds, costs, plan[_SAMPLE] != 0)
            if bypass >= 0 and sample != -2.0:  # (-2: the caller's verdict decides, then commits)
                K.commit_next(costs)
        model = out + K.OUT_MODEL
        return (sample, seconds, gathered, costs[out + K.OUT_REASON], costs[model], costs[model + 1], costs[model + 2],
                costs[model + 3], costs[model + 4], costs[model + 5])

    return run


class Plan:
    """A lane's compiled exchange and its int64 argument vector."""

    __slots__ = ("run", "plan")

    def codes(self):
        """The nonzero MPI error codes of the last run: Iallgather, Alltoallv, Wait (a
        sequenced lane waits before its payload; only one of the last two can fail)."""
        return [int(c) for c in self.plan[_CODES:_CODES + 3] if c != 0]

    def rebind(self, send: int, recv: int) -> None:
        """Run on other host arrays of the buffers' layout, at these addresses (not in place)."""
        self.plan[_SEND], self.plan[_RECV] = send, recv

    def failed_in_payload(self) -> bool:
        """Whether the last run's payload call failed after the gather and its wait succeeded."""
        return bool(self.plan[_CODES] == 0 and self.plan[_CODES + 2] == 0 and self.plan[_CODES + 1] != 0)


def exchange(pcomm, send, recv, length: int, steps, bypass: int, strategy: int, *, in_place: bool = False,
             sequenced: bool = False, sample: bool = True):
    """A :class:`Plan` for the lane's exchange on ``pcomm`` (rows of ``length`` doubles; ``send``
    / ``recv`` the job's Specs, their buffers numpy arrays; ``steps`` the lane's compiled
    ``(agreed, conclude)``; ``bypass`` / ``strategy`` the codes the decision takes, bypass -1
    for a pass-through call; ``in_place``: send with ``MPI_IN_PLACE``; ``sequenced``: the
    payload after the gather, see ``run``; ``sample``: the transfer is a bandwidth sample), or
    None (use mpi4py).

    The buffers' addresses are taken now: the lane runs only on the same array objects (kept
    alive by the memo) with the same shapes, and an array's data moves only when its size does.
    """
    setting = os.environ.get("EMBZIP_NATIVE_MPI", "1")  # 0: off; int: the int payload call (tests)
    if setting == "0":
        return None
    MPI = _mpi.load()
    wanted = "int" if setting == "int" else "large"
    if wanted not in _entries:
        found = _functions(MPI, large=wanted == "large")
        _entries[wanted] = False if found is None else (_compile(found[0], steps, found[2]), found[1], found[2])
    entry = _entries[wanted]
    if entry is False or not (isinstance(send.buf, np.ndarray) and isinstance(recv.buf, np.ndarray)):
        return None
    run, convert, count_bytes = entry
    size = pcomm.Get_size()
    vectors = np.concatenate([send.counts, send.displs, recv.counts, recv.displs]).astype(np.int64, copy=False)
    if count_bytes == 4:  # C ints: a call whose counts or displacements do not fit goes through mpi4py
        if vectors.size and (vectors.max() > np.iinfo(np.int32).max or vectors.min() < 0):
            return None
        vectors = vectors.astype(np.int32)
    plan = np.zeros(_VECTORS + 4 * size, np.int64)
    # (MPI_IN_PLACE's address as mpi4py passes it: MPICH's (void *) -1, Open MPI's (void *) 1)
    source = MPI.Get_address(MPI.IN_PLACE) if in_place else send.buf.ctypes.data
    plan[:_CODES] = [length, convert(MPI.DOUBLE.handle), convert(pcomm.handle), source,
                     convert(send.datatype.handle), recv.buf.ctypes.data, convert(recv.datatype.handle), size, length,
                     bypass, strategy]
    plan[_SEQUENCED], plan[_SAMPLE] = sequenced, sample
    plan[_VECTORS:].view(np.uint8)[:vectors.nbytes] = vectors.view(np.uint8)
    result = Plan()
    result.run, result.plan = run, plan
    return result
