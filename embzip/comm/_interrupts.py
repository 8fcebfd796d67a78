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

How: on the first call, if SIGINT has Python's default handler, it is replaced by
:func:`_handler`, which does what the default does (raise ``KeyboardInterrupt``) outside
embzip calls. Swapping handlers around every call would cost ~9 us a call (measured), more
than the express lane's whole Python budget. A handler the program installed itself is left
alone: it decides what SIGINT does.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["enter", "leave"]

_MAIN = threading.main_thread().ident
# [embzip calls the main thread is in (nested: the Comm wrapper, a wait inside a call), SIGINTs held]
_state = [0, 0]
_installed = False


def _handler(signum, frame):
    if _state[0] and not _state[1]:  # the first one inside a call: raised when the call is done
        _state[1] = 1
        return
    _state[1] = 0  # outside a call, as Python's default handler; inside, the second: now
    raise KeyboardInterrupt


def _install() -> None:
    global _installed
    _installed = True
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _handler)
    except (ValueError, OSError):  # (no signals here: an embedded interpreter, say)
        pass


def enter() -> bool:
    """Start holding SIGINT for a call; returns whether this thread holds it (the main thread)."""
    if threading.get_ident() != _MAIN:
        return False
    if not _installed:
        _install()
    _state[0] += 1
    return True


def leave(entered: bool) -> None:
    """End a call started with :func:`enter` (in a ``finally``): raise the held interrupt, if
    any, once the outermost call is done."""
    if not entered:
        return
    _state[0] -= 1
    if _state[0] == 0 and _state[1]:
        _state[1] = 0
        raise KeyboardInterrupt
