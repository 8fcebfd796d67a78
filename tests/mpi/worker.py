"""MPI test worker: ``mpiexec -n K python tests/mpi/worker.py CASE [CASE ...]``.

Every rank runs the named cases in order and prints ``PASS <case> <rank>`` or
``FAIL <case> <rank>: <reason>``; the exit code is 1 if any case failed on this rank.
tests/test_comm.py launches it with 1, 2, 3 and 4 ranks under a timeout (a hang is a failure).
Cases must work at any rank count. They live in worker_forms.py (call forms and results),
worker_costs.py (decisions, the bypass), worker_calls.py (Ialltoallv, the wrapper,
communicators' lifetimes), worker_history.py (calls after a history of changes), worker_errors.py and worker_mismatch.py (what must raise); worker_common.py has what they share.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a source checkout

import worker_calls  # noqa: E402,F401  (same directory; importing a module registers its cases)
import worker_costs  # noqa: E402,F401
import worker_errors  # noqa: E402,F401
import worker_forms  # noqa: E402,F401
import worker_history  # noqa: E402,F401
import worker_mismatch  # noqa: E402,F401
from worker_common import CASES, ME  # noqa: E402


def main(names):
    # ranks share one stdout, where mpiexec may interleave their lines: each rank also writes
    # its results to its own file when EMBZIP_MPI_RESULTS names a directory
    folder = os.environ.get("EMBZIP_MPI_RESULTS")
    sink = open(os.path.join(folder, f"rank{ME}.txt"), "w") if folder else None
    failed = 0
    for name in names:
        start = time.perf_counter()
        try:
            CASES[name]()
            line = f"PASS {name} {ME} {time.perf_counter() - start:.2f}s"
        except Exception:
            failed += 1
            line = f"FAIL {name} {ME}: " + traceback.format_exc().strip().replace("\n", " | ")
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
            sink.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(CASES)))
