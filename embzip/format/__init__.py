"""Frame format v1: the only package that knows byte layouts (see docs/format.md)."""

from .header import (  # noqa: F401
    FrameHeader,
    Section,
    allocate_frame,
    finish_frame,
    pack_frame,
    parse_frame,
    read_header,
    section_offsets,
)
from .ids import DTypeId, Encoder, ErrorMode, Flags, SectionKind, Strategy  # noqa: F401
