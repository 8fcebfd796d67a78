"""The ``embzip`` command.

Each subcommand is a pair, in a module of its own (demo.py, files.py, bench.py):
``add...(subparsers)`` declares its arguments and sets ``func``; ``_run_<name>(args) -> int``
does the work and returns the exit status. Adding a subcommand is adding a pair and one
entry in :data:`SUBCOMMANDS`.

Exit statuses: 0 success, 1 the work failed (e.g. a bound was violated, a frame is corrupt),
2 bad arguments, 130 interrupted. Errors are one line on stderr, never a traceback
(``EMBZIP_DEBUG=1`` re-raises unexpected errors to show one).

Examples
--------
>>> main(["demo", "--rows", "512", "--repeat", "1", "--methods", "embzip-auto"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import EmbzipError
from ._args import PROG, OneLineParser
from . import bench, demo, files
from .demo import headline, verdicts

__all__ = ["main", "build_parser", "verdicts", "headline"]


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("embzip")
    except Exception:  # running from a source tree that was never installed
        import embzip
        return getattr(embzip, "__version__", "unknown")


#: name -> the function that declares it
SUBCOMMANDS = {"demo": demo.add, "compress": files.add_compress, "decompress": files.add_decompress,
               "inspect": files.add_inspect, "bench": bench.add}


def build_parser() -> argparse.ArgumentParser:
    """The ``embzip`` argument parser with every subcommand registered."""
    parser = OneLineParser(prog=PROG, description="Error-bounded lossy compression of "
                                                   "embedding batches.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS.values():
        add(subparsers)
    return parser


def main(argv=None) -> int:
    """Run the ``embzip`` command; returns the exit status (console script and ``-m``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        choices = ", ".join(SUBCOMMANDS)
        print(f"{PROG}: error: missing command (choose from: {choices}; see '{PROG} --help')",
              file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except EmbzipError as exc:  # a bad frame: the data's fault, not the arguments'
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ValueError, TypeError)) else 1
    except Exception as exc:  # EmbzipError and anything unforeseen: one line, not a traceback
        if os.environ.get("EMBZIP_DEBUG"):
            raise
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
