"""Errors a compressed collective raises, identically on every rank.

Each is a :class:`embzip.CommError` (so ``except embzip.EmbzipError`` catches them), and the
argument errors are also ``ValueError`` / ``TypeError``, so code written for mpi4py's
exceptions keeps working. ``rank`` is the rank that found the problem; the message names it.
"""

from __future__ import annotations

from ..errors import CommError, EmbzipError

__all__ = ["CommError", "CommValueError", "CommTypeError", "CommDecodeError", "LocalError"]


class CommValueError(CommError, ValueError):
    """A rank's arguments are invalid or inconsistent with another rank's (counts, sizes)."""


class CommTypeError(CommError, TypeError):
    """A rank passed an unsupported type (not a buffer, mismatched dtypes, ...)."""


class CommDecodeError(CommError):
    """A received frame failed to decode (corrupt, truncated, or not what was announced)."""


_CLASSES = {"value": CommValueError, "type": CommTypeError, "decode": CommDecodeError, "comm": CommError}


class LocalError:
    """A problem found on this rank, to be agreed on collectively before anyone raises."""

    __slots__ = ("category", "message", "exc")

    def __init__(self, category: str, message: str, exc=None):
        self.category, self.message, self.exc = category, message, exc

    @classmethod
    def from_exception(cls, exc: BaseException, rank: int, during: str = "") -> "LocalError":
        if isinstance(exc, TypeError):
            category = "type"
        elif isinstance(exc, (ValueError, BufferError)):
            category = "value"
        elif isinstance(exc, EmbzipError):
            category = "decode" if during == "decode" else "comm"
        else:
            category = "comm"
        text = str(exc) or type(exc).__name__
        if category == "comm" and not isinstance(exc, EmbzipError):
            text = f"{type(exc).__name__}: {text}"
        where = f" while {during}" if during else ""
        return cls(category, f"rank {rank}{where}: {text}", exc)

    def payload(self):
        return (self.category, self.message)


def build(payload, root: int) -> CommError:
    """The exception every rank raises for the agreed ``payload`` from rank ``root``."""
    category, message = payload
    exc = _CLASSES.get(category, CommError)(message)
    exc.rank = root
    return exc
