"""CI smoke test: the DLRM example trains over 2 MPI ranks with a compressed all-to-all.

    mpiexec -n 2 python examples/dlrm/train.py --iterations 12 --compress forward+backward --policy dual

Asserts: exit 0, the final ``auc=<float> logloss=<float>`` line parses, frames crossed MPI
compressed (0 < sent bytes < raw bytes, forward and backward), and the training loss went down.
Numba compiles the codec in every process (tens of seconds on a loaded 2-core machine): the
test fills numba's on-disk cache from one process first (EMBZIP_NUMBA_CACHE=1, in a private
NUMBA_CACHE_DIR), so the two ranks only read it and never write it concurrently.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "examples", "dlrm", "train.py")

_missing = [m for m in ("mpi4py", "torch", "recbole", "numba") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"DLRM smoke test needs {', '.join(_missing)} "
                                "(pip install mpi4py mpich torch==2.13.0; pip install --no-deps recbole==1.2.1)")


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if _mpiexec() is None:
        pytest.skip("no mpiexec (pip install mpich)")
    e = dict(os.environ)
    e.update(EMBZIP_NUMBA_CACHE="1", NUMBA_CACHE_DIR=str(tmp_path_factory.mktemp("numba_cache")),
             NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + e.get("PYTHONPATH", ""))
    # one process compiles and writes the cache; the ranks below only load it
    warm = subprocess.run([sys.executable, TRAIN, "--warm-only"], env=e, capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stdout + warm.stderr
    return e


def test_dlrm_two_ranks_compressed(env):
    cmd = [_mpiexec(), "-n", "2", sys.executable, TRAIN, "--iterations", "12", "--batch-size", "64",
           "--compress", "forward+backward", "--policy", "dual", "--lr", "0.01", "--log-every", "4",
           "--max-test", "1000", "--eval-batch", "500", "--seed", "0"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=89, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"DLRM smoke run exceeded 89 s:\n{exc.stdout}\n{exc.stderr}")
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"

    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"auc=([-+0-9.eE]+|nan) logloss=([-+0-9.eE]+|nan)", last)
    assert m, f"last line is not 'auc=<float> logloss=<float>': {last!r}"
    auc, logloss = float(m.group(1)), float(m.group(2))
    assert 0.5 < auc <= 1.0 and 0.0 < logloss < 1.0, (auc, logloss)

    stats = dict(re.findall(r"(\w+)=(\S+)", re.search(r"^stats (.*)$", out, re.M).group(1)))
    for d in ("fwd", "bwd"):
        raw, sent = int(stats[f"{d}_raw_bytes"]), int(stats[f"{d}_sent_bytes"])
        assert 0 < sent < raw, f"{d}: sent {sent} bytes of {raw} raw: nothing was compressed"
        assert int(stats[f"{d}_compressed_calls"].split("/")[0]) > 0

    loss = dict(re.findall(r"(train_loss_\w+)=(\S+)", out))
    first, final = float(loss["train_loss_first"]), float(loss["train_loss_last"])
    print(f"train loss first={first} last={final}")
    assert final < first, f"training loss did not go down: {first} -> {final}"
