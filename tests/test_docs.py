"""The ```python blocks of docs/guide.md run, in order, in one namespace (later blocks use
earlier names). A block starting with ``# requires: a, b`` is skipped when one of those
modules is missing (the numcodecs, zarr and torch extras are optional)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    return BLOCK.findall(GUIDE.read_text())


def test_guide_has_examples():
    assert len(_blocks()) >= 5


def test_guide_examples_run(capsys):
    namespace = {"__name__": "guide"}
    ran, skipped = 0, []
    for i, code in enumerate(_blocks()):
        first = code.splitlines()[0] if code.strip() else ""
        if first.startswith("# requires:"):
            missing = [m.strip() for m in first.split(":", 1)[1].split(",")
                       if importlib.util.find_spec(m.strip()) is None]
            if missing:
                skipped.append((i, missing))
                continue
        try:
            exec(compile(code, f"{GUIDE.name}[block {i}]", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"docs/guide.md python block {i} failed: {type(exc).__name__}: {exc}\n{code}")
        ran += 1
    assert ran >= 4, f"only {ran} blocks ran (skipped {skipped})"


def test_guide_links_exist():
    for target in re.findall(r"\]\(([^)#:]+\.md)\)", GUIDE.read_text()):
        if target in ("comm.md", "lowprec.md", "cuda.md"):  # written by other engineers
            continue
        assert (GUIDE.parent / target).exists(), target
