"""The embzip error tree.

Caller mistakes (bad arguments) raise the built-in ``ValueError`` / ``TypeError``.
Problems with the data or the environment raise a subclass of :class:`EmbzipError`,
so ``except embzip.EmbzipError`` catches every frame that cannot be decoded.
"""

from __future__ import annotations

__all__ = [
    "EmbzipError",
    "FormatError",
    "CorruptFrameError",
    "TruncatedFrameError",
    "UnsupportedVersionError",
    "FrameTooLargeError",
    "OutMismatchError",
    "BackendUnavailableError",
    "CommError",
]


class EmbzipError(Exception):
    """Base class of every error embzip raises about data or environment."""


class FormatError(EmbzipError):
    """The bytes are not an embzip frame, or a field holds an impossible value."""


class CorruptFrameError(FormatError):
    """A checksum does not match, or a section's content contradicts the header."""


class TruncatedFrameError(FormatError):
    """The frame is shorter than its header says it is."""


class UnsupportedVersionError(FormatError):
    """The frame was written by a newer major version of the format."""


class FrameTooLargeError(EmbzipError):
    """A valid frame declares more than may be decoded here: more bytes than the caller's
    ``max_bytes``, or than can be allocated (a few bytes of frame may declare 2**48 values)."""


class OutMismatchError(EmbzipError, ValueError):
    """A frame decodes to another shape, dtype or size than the ``out`` it was given. Either
    may be at fault (a corrupt or forged frame, or the wrong ``out``), so both ``except
    EmbzipError`` and ``except ValueError`` catch it; nothing was decoded or allocated."""


class BackendUnavailableError(EmbzipError):
    """A backend (CUDA, MPI) was asked for but cannot be used here."""


class CommError(EmbzipError):
    """A compressed collective failed; raised on every rank, never a deadlock."""
