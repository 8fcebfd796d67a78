"""Ctrl-C during a call: held until the call completes, as MPI's own blocking calls hold it.

Why: embzip waits for MPI in Python loops (so that its threads and MPI progress go on). A
``KeyboardInterrupt`` raised there lands in the middle of the call's protocol, and leaves
this rank's private communicator part-way through a collective that the other ranks
complete: its next call fails or hangs. mpi4py's blocking calls wait inside MPI, where Python
runs no signal handler, so there the interrupt is raised once MPI returns.

So while the main thread is inside an embzip call, the first SIGINT is recorded, not raised;
the call raises ``KeyboardInterrupt`` when it is done, its results delivered. A second
SIGINT within the same call raises at once: the way out of a call that cannot complete (a
rank died), at the cost of that communicator, as before.

How: when a call starts and SIGINT has Python's default handler, it is replaced by
:func:`_handler`, which does what the default does (raise ``KeyboardInterrupt``) outside
embzip calls, and stays (putting the default back around every call would cost ~9 us a call,
measured: more than the express lane's whole Python budget; the check costs ~0.03 us). A
handler the program installed itself is left alone: it decides what SIGINT does. So is
asyncio's: ``asyncio.run`` installs its own only over Python's default, so an asyncio
program that called embzip before ``asyncio.run`` gets Ctrl-C as a plain KeyboardInterrupt
(as before Python 3.11), not as the cancellation of its main task.

The counters survive an escape: the second SIGINT resets them before raising (Python may run
the handler at the start of :func:`leave`, before its own bookkeeping), and each ``leave``
puts the depth back to what its ``enter`` found.
"""

from __future__ import annotations

import signal
import threading

try:  # the C module's getsignal: signal.getsignal maps its answer to an enum, 3.5 us a call (measured)
    from _signal import getsignal as _getsignal
except ImportError:  # (an interpreter without it)
    _getsignal = signal.getsignal

__all__ = ["enter", "leave"]

_SIGINT = int(signal.SIGINT)

_MAIN = threading.main_thread().ident
# [embzip calls the main thread is in (nested: the Comm wrapper, a wait inside a call), SIGINTs held]
_state = [0, 0]


def _handler(signum, frame):
    if _state[0] and not _state[1]:  # the first one inside a call: raised when the call is done
        _state[1] = 1
        return
    _state[0] = _state[1] = 0  # outside a call, as Python's default handler; inside, the second: now
    raise KeyboardInterrupt


def enter():
    """Start holding SIGINT for a call. Returns the token to give :func:`leave`: the depth
    found (None outside the main thread, which runs no signal handler)."""
    if threading.get_ident() != _MAIN:
        return None
    if _getsignal(_SIGINT) is signal.default_int_handler:  # (again after a reset to the default)
        try:
            signal.signal(signal.SIGINT, _handler)
        except (ValueError, OSError):  # (no signals here: an embedded interpreter, say)
            pass
    depth = _state[0]
    _state[0] = depth + 1
    return depth


def leave(token) -> None:
    """End a call started with :func:`enter` (in a ``finally``): raise the held interrupt, if
    any, once the outermost call is done."""
    if token is None:
        return
    _state[0] = token
    if token == 0 and _state[1]:
        _state[1] = 0
        raise KeyboardInterrupt
