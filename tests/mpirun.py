"""Launching MPI jobs from the tests: which mpiexec, how to call it, and a run that cannot hang.

The venv's ``mpiexec`` (MPICH from PyPI, ``pip install 'embzip[mpi]'``) comes first, then the
one on PATH. ``EMBZIP_MPIEXEC=/path/to/mpiexec`` picks another MPI for a whole test run (the
Python side must load that MPI's library too: for mpi4py's wheels, ``MPI4PY_MPIABI`` /
``MPI4PY_LIBMPI``). Open MPI's launcher needs more words than MPICH's: permission to run as
root (containers) and ``--oversubscribe`` (4 ranks on 2 cores); they are added when the
launcher says it is Open MPI.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["find", "command", "environment", "run"]


@functools.cache
def find() -> tuple[str | None, str]:
    """(path of mpiexec, "") or (None, why not): mpi4py and a launcher are both needed."""
    if importlib.util.find_spec("mpi4py") is None:
        return None, "mpi4py is not installed (pip install 'embzip[mpi]')"
    chosen = os.environ.get("EMBZIP_MPIEXEC")
    if chosen:
        return (chosen, "") if Path(chosen).exists() else (None, f"EMBZIP_MPIEXEC={chosen} does not exist")
    local = Path(sys.executable).parent / "mpiexec"  # the venv's MPICH from PyPI comes first
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        return None, "no mpiexec found (pip install mpich, or put one on PATH)"
    return found, ""


@functools.cache
def _is_open_mpi(mpiexec: str) -> bool:
    try:
        said = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "Open MPI" in said.stdout + said.stderr or "OpenRTE" in said.stdout + said.stderr


def command(ranks: int, *program: str) -> list[str]:
    """``mpiexec -n RANKS PROGRAM...`` for the launcher :func:`find` chose."""
    mpiexec = find()[0]
    extra = ["--oversubscribe"] if _is_open_mpi(mpiexec) else []
    return [mpiexec, *extra, "-n", str(ranks), *program]


def environment(**settings: str) -> dict:
    """This process's environment plus ``settings`` (and Open MPI's root permission)."""
    env = dict(os.environ, **settings)
    if find()[0] is not None and _is_open_mpi(find()[0]):
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def run(cmd: list[str], env: dict, timeout_s: float, cwd=None) -> tuple[int | str, str]:
    """Run ``cmd`` in a session of its own; (exit code, output), or ("timeout", output) after
    killing the launcher and every rank (a hang is a failure, never a hung test run)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session we started: mpiexec and every rank
        out, _ = proc.communicate()
        return "timeout", f"TIMEOUT after {timeout_s} s (a hang?)\n{out}"
    return proc.returncode, out
