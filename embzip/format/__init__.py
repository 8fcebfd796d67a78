"""Frame format v1: the only package that knows byte layouts (see docs/format.md)."""

from .header import FrameHeader, Section, pack_frame, parse_frame, read_header  # noqa: F401
from .ids import DTypeId, Encoder, ErrorMode, Flags, SectionKind, Strategy  # noqa: F401
