"""embzip.comm over real MPI: pytest launches ``mpiexec -n K python tests/mpi/worker.py CASES``.

One launch per rank count (1, 2, 3, 4) runs every case (many checks per launch: each launch
costs process start-up and numba compilation on every rank); each launch runs under a
timeout, so a deadlock is a failure, not a hung CI. Each case is reported as its own test.
Skipped, with the reason, when mpi4py or mpiexec is missing (``pip install 'embzip[mpi]'``).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import mpirun
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "mpi" / "worker.py"
RANKS = (1, 2, 3, 4)
CASES = ["spec_parsing", "spec_forms", "unremembered_calls", "passthrough", "bounds_rel_and_tables", "bypass_and_stats", "express_lane", "express_lane_fresh_buffers", "express_lane_decisions", "lane_history_matches_fresh", "streamed_exchange", "skew_is_not_bandwidth", "auto_strategy", "pipelined",
         "ialltoallv_returns_before_the_others_start", "waitall_mixes_requests", "in_place", "in_place_raw", "comm_wrapper", "forget_releases_buffers", "subclasses_and_freed_comm", "interrupt_is_held", "error_mismatched_counts", "error_recv_buffers", "error_types", "error_aliased_buffers", "error_arguments",
         "error_decode_and_compress", "error_fused_raw_path", "error_mismatch_with_an_empty_segment",
         "error_mismatch_after_a_sequenced_lane", "error_own_segment_mismatch",
         "error_after_a_repeated_call", "error_inside_the_native_lane", "payload_failure_after_an_agreed_lane_table", "error_streamed_exchange"]
# Every rank compiles the numba kernels it uses (several seconds of CPU per kernel family), so
# the launches with the most ranks skip the most expensive extras: the rANS coder (compiled by
# strategy="auto") and float64 run with 2 ranks, float32 everywhere (with 1 rank nothing is
# compressed: a rank's own segment is copied).
SKIP = {1: {"auto_strategy"}, 3: {"auto_strategy"}, 4: {"auto_strategy"}}
DTYPES = {2: "float32,float64"}
PAIRWISE = {3}  # launches that use the Alltoall + Allreduce handshake (embzip uses it above 64 ranks)
TIMEOUT_S = int(os.environ.get("EMBZIP_MPI_TEST_TIMEOUT", "150"))


MPIEXEC, WHY = mpirun.find()
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason=WHY or "no MPI")
_RESULTS = {}


def launch(ranks: int, tmp_root: Path):
    """Run the worker once per rank count (cached): (returncode, output, per-rank result lines)."""
    if ranks in _RESULTS:
        return _RESULTS[ranks]
    cases = [c for c in CASES if c not in SKIP.get(ranks, ())]
    folder = tmp_root / f"ranks{ranks}"
    folder.mkdir(parents=True, exist_ok=True)
    env = mpirun.environment(NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1", EMBZIP_MPI_RESULTS=str(folder),
                             EMBZIP_COMM_WARMUP="0",  # the warm-up compiles kernels the cases never use
                             EMBZIP_TEST_DTYPES=DTYPES.get(ranks, "float32"),
                             EMBZIP_TEST_PAIRWISE=str(int(ranks in PAIRWISE)))
    code, out = mpirun.run(mpirun.command(ranks, sys.executable, str(WORKER), *cases), env, TIMEOUT_S, cwd=ROOT)
    lines = "".join(p.read_text() for p in sorted(folder.glob("rank*.txt")))
    _RESULTS[ranks] = (code, out, lines)
    return _RESULTS[ranks]


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mpi")


@pytest.mark.parametrize("ranks", RANKS)
def test_launch_exits_cleanly(ranks, results_dir):
    code, out, _ = launch(ranks, results_dir)
    assert code == 0, f"mpiexec -n {ranks} exited with {code}:\n{out[-4000:]}"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("ranks", RANKS)
def test_case(ranks, case, results_dir):
    if case in SKIP.get(ranks, ()):
        pytest.skip(f"{case} runs with 2 ranks only (it compiles the rANS coder on every rank)")
    code, out, lines = launch(ranks, results_dir)
    passed = {int(r) for r in re.findall(rf"^PASS {case} (\d+) ", lines, flags=re.M)}
    failures = [line for line in lines.splitlines() if line.startswith(f"FAIL {case} ")]
    assert not failures, "\n".join(f.replace(" | ", "\n    ") for f in failures)
    assert passed == set(range(ranks)), f"{case}: passed on ranks {sorted(passed)} of {ranks}:\n{out[-3000:]}"


@pytest.mark.parametrize("ranks", (1, 2))
def test_ialltoallv_below_thread_multiple(ranks):
    """MPI_THREAD_SERIALIZED: Ialltoallv runs inside the call; errors still come from wait()."""
    env = mpirun.environment(NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1", EMBZIP_COMM_WARMUP="0")
    code, out = mpirun.run(mpirun.command(ranks, sys.executable, str(ROOT / "tests" / "mpi" / "worker_serialized.py")),
                           env, TIMEOUT_S, cwd=ROOT)
    assert code == 0 and out.count("SERIALIZED-OK") == ranks, out[-4000:]
