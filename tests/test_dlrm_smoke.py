"""CI smoke test: the DLRM example trains over 2 MPI ranks with a compressed all-to-all.

    mpiexec -n 2 python examples/dlrm/train.py --iterations 12 --compress forward+backward --policy dual

Asserts: exit 0, the final ``auc=<float> logloss=<float>`` line parses, frames crossed MPI
compressed (0 < sent bytes < raw bytes, forward and backward; every call of the test pass), the
training loss went down, and
the ``result`` line carries the per-iteration loss and time (experiment.py plots them).
``test_experiment_report`` renders experiment.py's tables and plots from made-up runs (no MPI).
Numba compiles the codec in every process (tens of seconds on a loaded 2-core machine): the
test fills numba's on-disk cache from one process first (EMBZIP_NUMBA_CACHE=1, in a private
NUMBA_CACHE_DIR), so the two ranks only read it and never write it concurrently.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import mpirun
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "examples", "dlrm", "train.py")

_missing = [m for m in ("mpi4py", "torch", "recbole", "numba") if importlib.util.find_spec(m) is None]
needs_stack = pytest.mark.skipif(bool(_missing), reason=f"DLRM smoke test needs {', '.join(_missing)} "
                                 "(pip install mpi4py mpich torch==2.13.0; pip install --no-deps recbole==1.2.1)")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if mpirun.find()[0] is None:
        pytest.skip(mpirun.find()[1])
    e = mpirun.environment()
    e.update(EMBZIP_NUMBA_CACHE="1", NUMBA_CACHE_DIR=str(tmp_path_factory.mktemp("numba_cache")),
             NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + e.get("PYTHONPATH", ""))
    # one process compiles and writes the cache; the ranks below only load it
    warm = subprocess.run([sys.executable, TRAIN, "--warm-only"], env=e, capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stdout + warm.stderr
    return e


@needs_stack
def test_dlrm_two_ranks_compressed(env):
    cmd = mpirun.command(2, sys.executable, TRAIN, "--iterations", "12", "--batch-size", "64",
                         "--compress", "forward+backward", "--policy", "dual", "--lr", "0.01", "--log-every", "4",
                         "--max-test", "1000", "--eval-batch", "200", "--seed", "0")
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
    done, calls = map(int, stats["test_compressed_calls"].split("/"))  # 1000 rows in batches of 200,
    assert done == calls == 5 * 2, stats["test_compressed_calls"]       # on each of 2 ranks: all compressed
    # (5 calls: with the cost model on, the 3rd and 4th would be its raw calibration calls)

    loss = dict(re.findall(r"(train_loss_\w+)=(\S+)", out))
    first, final = float(loss["train_loss_first"]), float(loss["train_loss_last"])
    print(f"train loss first={first} last={final}")
    assert final < first, f"training loss did not go down: {first} -> {final}"

    res = json.loads(re.search(r"^result (.*)$", out, re.M).group(1))
    assert len(res["losses"]) == len(res["iter_times"]) == 12
    assert res["compute_s"] >= 0 and all(t > 0 for t in res["iter_times"])
    for d in ("fwd", "bwd"):  # the median call: inside one iteration
        assert 0 < res[f"a2a_{d}_median_s"] < max(res["iter_times"]), res


@pytest.mark.parametrize("argv, text", [
    (["--timing-skip", "-3"], "--timing-skip must be >= 0"),  # (it divided the timings by 7 of 4 iterations)
    (["--max-test", "-1"], "--max-test must be >= 0"), (["--horizon", "0"], "--horizon must be >= 1"),
    (["--rel", "0"], "--rel must be finite and > 0"), (["--lr", "nan"], "--lr must be finite and > 0"),
])
def test_train_refuses_bad_arguments(argv, text, capsys, monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(TRAIN))
    import train

    with pytest.raises(SystemExit) as caught:
        train.parse_args(argv)
    assert caught.value.code == 2 and text in capsys.readouterr().err


@needs_stack
def test_train_refuses_a_global_batch_larger_than_the_training_split(env):
    """It read past the pooled vectors' end in the raw Alltoallv (a segfault) instead."""
    cmd = mpirun.command(2, sys.executable, TRAIN, "--iterations", "2", "--batch-size", "50000", "--compress", "none")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and "larger than the training split" in proc.stdout + proc.stderr, \
        f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def test_experiment_report(tmp_path, monkeypatch):
    """experiment.py's report: one table per link, speedup against the same link, json, two PNGs."""
    monkeypatch.syspath_prepend(os.path.dirname(TRAIN))
    import experiment

    args = experiment.parse_args(["--links", "unshaped", "--seeds", "0", "1", "--out", str(tmp_path)])
    args.links = ["unshaped", "1gbit"]  # parse_args wants root for a shaped link; report does not
    runs = []
    for link, slow in (("unshaped", 1.0), ("1gbit", 3.0)):
        for seed in (0, 1):
            for i, (name, _) in enumerate(experiment.CONFIGS):
                fwd, bwd = 0.02 * slow / (2 if i else 1), 0.02 * slow / (2 if i == 3 else 1)
                r = dict(config=name, link=link, seed=seed, auc=0.78 + 0.001 * seed, logloss=0.56, iterations=8,
                         a2a_fwd_s=fwd, a2a_bwd_s=bwd, compute_s=0.05, iter_s=0.05 + fwd + bwd,
                         fwd_raw=8e6, fwd_sent=8e6 / (4 if i else 1), bwd_raw=8e6, bwd_sent=8e6 / (4 if i == 3 else 1),
                         losses=[0.7 - 0.01 * k for k in range(8)], iter_times=[0.1] * 8)
                if link != "unshaped":
                    r["link_bytes"] = 1e7
                else:  # (results from before the medians have none: the shaped link's here)
                    r.update(a2a_fwd_median_s=fwd / 2 + 0.001 * seed, a2a_bwd_median_s=bwd / 2)
                runs.append(r)
    md = experiment.report(runs, args)
    assert md.count("| uncompressed |") == 2 and "link MB" in md
    shaped = md.split("## 1gbit")[1]
    unshaped = md.split("## 1gbit")[0]
    assert "| 20.0 ± 0.0 (median 10.5) | 20.0 ± 0.0 (median 10.0) |" in unshaped  # uncompressed: seeds' mean
    assert "median" not in shaped
    assert "| 1.00x |" in shaped and f"| {0.17 / 0.11:.2f}x |" in shaped  # fwd+bwd dual: 170 ms -> 110 ms
    data = json.loads((tmp_path / "dlrm.json").read_text())
    assert len(data["runs"]) == 16
    if importlib.util.find_spec("matplotlib") is not None:
        for png in ("dlrm_loss.png", "dlrm_time.png"):
            assert (tmp_path / png).stat().st_size > 1000
