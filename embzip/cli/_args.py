"""What every subcommand shares: the one-line-error parser, argument types, input loading."""

from __future__ import annotations

import argparse

__all__ = ["PROG", "OneLineParser", "positive_int", "non_negative_int", "positive_float", "method_list", "method_keys", "load_npy"]

PROG = "embzip"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line on stderr (no usage dump) and exit 2."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (``--max-bytes 0`` admits only empty arrays, as ``max_bytes=0`` does)."""
    return _integer(text, 0, "a non-negative integer")


def _integer(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def method_list(text: str) -> list:
    from .. import compare
    keys = [k.strip() for k in text.split(",") if k.strip()]
    try:
        compare.select_methods(keys)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not keys:
        raise argparse.ArgumentTypeError("expected a comma-separated list of methods")
    return keys


def method_keys():
    from .. import compare
    return [m.key for m in compare.METHODS]


def load_npy(path: str):
    import numpy as np
    # allow_pickle=False: a .npy from elsewhere must not run code when loaded
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:  # numpy's message does not name the file
        raise ValueError(f"{path}: not a .npy array file ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, np.ndarray):  # an .npz archive loads as a mapping
        raise ValueError(f"{path}: expected a .npy array file, found an .npz archive")
    return data
