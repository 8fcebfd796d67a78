"""``embzip.comm.Comm``: an mpi4py communicator whose ``Alltoallv`` compresses.

In the spirit of ``mpi4py.util.pkl5.Comm``: a subclass of ``MPI.Intracomm`` sharing the
wrapped handle, so every other method (Barrier, Allreduce, Send, ...) is mpi4py's own and
the object goes wherever a communicator is accepted. The class is built on first access
(``embzip.comm.Comm``) because defining it needs mpi4py, and importing embzip must not.
"""

from __future__ import annotations

from ._mpi import load

__all__ = ["comm_class"]

_CLASS = None
_DERIVING = ("Dup", "Clone", "Split", "Split_type", "Create", "Create_group")


def _make():
    MPI = load()
    from ._collective import alltoallv
    from ._mpi import peek_state
    from ._pipeline import ialltoallv

    class Comm(MPI.Intracomm):
        """A communicator whose ``Alltoallv`` / ``Ialltoallv`` are embzip's compressed ones.

        Parameters
        ----------
        comm : mpi4py.MPI.Intracomm
            The communicator to wrap (its handle is shared, not duplicated).
        abs_error, rel_error, strategy, bounds, bypass
            Defaults for every ``Alltoallv`` / ``Ialltoallv`` call (see
            :func:`embzip.comm.Alltoallv`); a call may override any of them by keyword.
            Communicators derived with ``Dup``, ``Split``, ``Create``... keep the defaults.

        Examples
        --------
        >>> import numpy as np
        >>> from mpi4py import MPI
        >>> import embzip.comm
        >>> comm = embzip.comm.Comm(MPI.COMM_WORLD.Dup(), rel_error=0.01)
        >>> send = np.linspace(-1, 1, comm.size * 1000, dtype=np.float32)
        >>> recv = np.empty_like(send)
        >>> comm.Alltoallv(send, recv).mode       # compressed
        'compressed'
        >>> comm.allreduce(1)                     # plain mpi4py
        1
        >>> comm.Free()                           # (a Dup: COMM_WORLD itself cannot be freed)
        """

        def __new__(cls, comm=None, **defaults):
            self = MPI.Intracomm.__new__(cls, comm)
            self._embzip = {}
            self.configure(**defaults)
            return self

        def configure(self, *, abs_error=None, rel_error=None, strategy="auto", bounds=None, bypass="auto"):
            """Replace the default compression arguments of this communicator's calls."""
            self._embzip = dict(abs_error=abs_error, rel_error=rel_error, strategy=strategy, bounds=bounds,
                                bypass=bypass)
            return self

        def _args(self, overrides):
            args = dict(getattr(self, "_embzip", None) or {})
            if "abs_error" in overrides or "rel_error" in overrides:  # a call's bound replaces the default's mode
                args.pop("abs_error", None)
                args.pop("rel_error", None)
            args.update(overrides)
            return args

        def Alltoallv(self, sendbuf, recvbuf, **overrides):
            """Compressed Alltoallv (see :func:`embzip.comm.Alltoallv`); returns CallStats."""
            return alltoallv(self, sendbuf, recvbuf, **self._args(overrides))

        def Ialltoallv(self, sendbuf, recvbuf, **overrides):
            """Pipelined compressed Alltoallv (see :func:`embzip.comm.Ialltoallv`); returns a Request."""
            return ialltoallv(self, sendbuf, recvbuf, **self._args(overrides))

        @property
        def stats(self):
            """CallStats of the last completed embzip call on this communicator (this rank)."""
            state = peek_state(self)
            return None if state is None else state.last

    def _deriving(name):
        base = getattr(MPI.Intracomm, name)

        def method(self, *args, **kwargs):
            result = base(self, *args, **kwargs)
            defaults = dict(getattr(self, "_embzip", None) or {})
            if isinstance(result, Comm):  # (mpi4py's Dup and Clone keep the class)
                result._embzip = defaults
            elif isinstance(result, MPI.Intracomm) and result != MPI.COMM_NULL:
                result = Comm(result, **defaults)  # (Split, Create... return a plain Intracomm)
            return result

        method.__name__, method.__doc__ = name, base.__doc__
        return method

    for name in _DERIVING:
        if hasattr(MPI.Intracomm, name):
            setattr(Comm, name, _deriving(name))
    Comm.__module__ = "embzip.comm"
    return Comm


def comm_class():
    """The Comm class (built once)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _make()
    return _CLASS
