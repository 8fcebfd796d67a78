"""Hostile frames: every bad frame raises an ``embzip.EmbzipError`` subclass, never crashes.

For frames of many kinds (raw fallback, bit-packed, rANS single- and multi-chunk, dedup with
both encoders, with outliers, float64, 0-d, empty, constant rANS):

- every truncation ``frame[:k]`` (decompress with verify=True and verify=False, and inspect);
- every single-bit flip of the header, and random bit flips / byte garbage in the payload:
  with ``verify=True`` each must raise an EmbzipError (no silently wrong array); with
  ``verify=False`` a flip may give a wrong array (of the header's shape and dtype) but must
  never crash, hang or raise anything but an EmbzipError;
- payload garbage with *recomputed* CRCs and header fields rewritten with a valid header CRC;
- garbage bytes, empty input, trailing bytes, a bumped major version (UnsupportedVersionError),
  and forged frames whose header CRC is valid but whose section counts, lengths, bit widths,
  outlier positions or row references lie (FormatError / CorruptFrameError).

Every decode of a hostile frame runs in a worker subprocess (tests/hostile_worker.py), so a
segfault or an infinite loop in a numba kernel shows up as a failing test naming the case
instead of killing pytest. The worker arms ``faulthandler`` per case: a case that runs longer
than ``CASE_TIMEOUT`` seconds is reported as a hang. After a crash the worker is restarted
after the offending case, so one bug does not hide the others.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import embzip
from embzip.checksum import crc32c
from hostile_frames import FORGERIES, KINDS, build, build_groups, kind_inputs, make_frames, parse  # (same directory)
from hostile_worker import _describe_mutation

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "hostile_worker.py"
WORKER_TIMEOUT = 900.0  # backstop for one worker run (hangs are caught per case, in the worker)
MAX_RESTARTS = 12


def _run_worker(workdir: Path, spec: dict, case_timeout: float | None = None, cache_dir: Path | None = None) -> dict:
    groups_path = workdir / "groups.pkl"
    with open(groups_path, "wb") as fh:
        pickle.dump(spec, fh)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["NUMBA_CACHE_DIR"] = str(cache_dir or workdir / "numba-cache")  # private: restarts skip the JIT
    env["EMBZIP_NUMBA_CACHE"] = "1"
    # One thread: decoding validated sections touches the same memory with any thread count,
    # and an oversubscribed machine makes numba's thread pool orders of magnitude slower.
    env["NUMBA_NUM_THREADS"] = "1"
    if case_timeout is not None:
        env["EMBZIP_HOSTILE_CASE_TIMEOUT"] = str(case_timeout)
    names = [g[0] for g in spec["groups"]]
    summaries, incidents = {}, {}
    start = (0, 0)
    for attempt in range(MAX_RESTARTS + 1):
        results = workdir / f"results{attempt}.jsonl"
        progress = workdir / f"progress{attempt}.txt"
        cmd = [sys.executable, str(WORKER), str(groups_path), str(results), str(progress),
               str(start[0]), str(start[1])]
        try:
            proc = subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, timeout=WORKER_TIMEOUT)
            rc, stderr, timed_out = proc.returncode, proc.stderr.decode(errors="replace"), False
        except subprocess.TimeoutExpired as exc:
            rc, stderr, timed_out = None, (exc.stderr or b"").decode(errors="replace"), True
        done = False
        if results.exists():
            for line in results.read_text().splitlines():
                record = json.loads(line)
                if record.get("done"):
                    done = True
                    continue
                merged = summaries.setdefault(record["group"], {"cases": 0, "counts": {}, "failures": 0,
                                                                "examples": [], "complete": False})
                if "failure" in record:
                    merged["examples"].append(record["failure"])
                else:
                    part = record["summary"]
                    merged["cases"] = part["cases"]
                    merged["failures"] += part["failures"]
                    merged["complete"] = True
                    for outcome, count in part["counts"].items():
                        merged["counts"][outcome] = merged["counts"].get(outcome, 0) + count
        if done and rc == 0:
            break
        # find the case in flight
        last = None
        if progress.exists():
            for line in progress.read_text().splitlines():
                if line.startswith("C "):
                    _, gi, ci = line.split()
                    last = (int(gi), int(ci))
        if last is None:
            for name in names[start[0]:]:
                incidents.setdefault(name, []).append(
                    f"worker failed before its first case (rc={rc}, timed out={timed_out}):\n{stderr[-3000:]}")
            break
        gi, ci = last
        group = spec["groups"][gi]
        mutation, op, verify = group[3][ci]
        if timed_out or "Timeout (" in stderr:
            what = "HANG (no result within the time limit)"
        elif rc is not None and rc < 0:
            what = f"CRASH (killed by signal {-rc})"
        else:
            what = f"CRASH (worker exited with status {rc})"
        incidents.setdefault(names[gi], []).append(
            f"{what} at case {ci}: {op} verify={verify} mutation={_describe_mutation(mutation)}\n"
            f"worker stderr (tail):\n{stderr[-2500:]}")
        start = (gi, ci + 1) if ci + 1 < len(group[3]) else (gi + 1, 0)
        if start[0] >= len(names) or timed_out:
            break  # after the backstop fired, do not spend that long again
    return {"summaries": summaries, "incidents": incidents, "names": names}


@pytest.fixture(scope="module")
def frames():
    return make_frames()


def _shapes():
    return {name: (tuple(x.shape), np.dtype(x.dtype).str) for name, (x, _, _) in kind_inputs().items()}


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def hostile(frames, hostile_dir):
    spec = {"frames": frames, "shapes": _shapes(), "groups": build_groups(frames)}
    return _run_worker(hostile_dir, spec)


def _assert_group(hostile, name):
    incidents = hostile["incidents"].get(name, [])
    summary = hostile["summaries"].get(name)
    problems = list(incidents)
    if summary is None or not summary["complete"]:
        problems.append("the group did not run to completion (see the incidents of earlier groups)")
    if summary is not None and (summary["failures"] or summary["examples"]):
        lines = [f"{max(summary['failures'], len(summary['examples']))} of {summary['cases']} cases broke the promise "
                 f"(outcomes: {summary['counts']}); first ones:"]
        for ex in summary["examples"]:
            lines.append(f"  case {ex['case']}: {ex['op']}(verify={ex['verify']}) on {ex['mutation']}"
                         f" -> {ex['outcome']}: {ex['detail']}")
        problems.append("\n".join(lines))
    assert not problems, f"{name}:\n" + "\n\n".join(problems)
    assert summary["cases"] > 0 and sum(summary["counts"].values()) >= 1  # not vacuous


kinds = pytest.mark.parametrize("kind", KINDS)


def test_harness_reports_crashes_hangs_and_foreign_errors(hostile, frames, hostile_dir):
    """The subprocess harness itself: a segfault, a hang and a foreign exception inside a
    case each fail their group, and the cases after them still run (so the hostile tests
    can fail). Runs after the main worker, reusing its JIT cache."""
    groups = [("self/before", "bitpack", "error", [(("trunc", k), "decompress", True) for k in range(5)]),
              ("self/crash", "bitpack", "error", [(("none",), "selftest_crash", True), (("trunc", 3), "decompress", True)]),
              ("self/hang", "bitpack", "error", [(("none",), "selftest_hang", True)]),
              ("self/foreign", "bitpack", "error", [(("none",), "selftest_foreign", True)]),
              ("self/after", "bitpack", "error", [(("trunc", k), "inspect", True) for k in range(5)])]
    spec = {"frames": {"bitpack": frames["bitpack"]}, "shapes": _shapes(), "groups": groups}
    workdir = hostile_dir / "selftest"
    workdir.mkdir(exist_ok=True)
    result = _run_worker(workdir, spec, case_timeout=3.0, cache_dir=hostile_dir / "numba-cache")
    summaries, incidents = result["summaries"], result["incidents"]
    assert summaries["self/before"]["failures"] == 0 and "self/before" not in incidents
    assert any("CRASH (killed by signal 11)" in i for i in incidents["self/crash"]), incidents
    assert sum(summaries["self/crash"]["counts"].values()) == 1  # resumed after the crash, at case 1
    assert any("HANG" in i for i in incidents["self/hang"]), incidents
    assert summaries["self/foreign"]["failures"] == 1
    assert summaries["self/foreign"]["examples"][0]["outcome"] == "foreign:IndexError"
    assert summaries["self/after"]["failures"] == 0 and summaries["self/after"]["counts"] == {"TruncatedFrameError": 5}
    assert all(summaries[g]["complete"] for g in ("self/before", "self/crash", "self/foreign", "self/after"))


def test_crc32c_matches_the_castagnoli_check_value():
    assert crc32c(b"123456789") == 0xE3069283


@kinds
def test_frame_kinds_cover_what_they_should(frames, kind):
    """The hostile tests below are only meaningful if each kind has the stages it claims."""
    x, kw, stages = kind_inputs()[kind]
    info = embzip.inspect(frames[kind])
    assert stages <= set(info.stages), (kind, info.stages)
    assert len(frames[kind]) <= 4096 or kind == "rans_multichunk", (kind, len(frames[kind]))


@kinds
def test_layout_restatement_round_trips(frames, kind):
    """parse/build above reproduce embzip's frames byte for byte (so the forgeries are real)."""
    assert build(parse(frames[kind])) == frames[kind]
    assert build(parse(frames[kind]), sync=False) == frames[kind]


@kinds
def test_valid_frames_decode_in_the_worker(hostile, kind):
    _assert_group(hostile, f"valid/{kind}")


@kinds
def test_every_truncation(hostile, kind):
    _assert_group(hostile, f"truncations/{kind}")


@kinds
def test_every_header_bit_flip(hostile, kind):
    _assert_group(hostile, f"header_bit_flips/{kind}")


@kinds
def test_trailing_bytes(hostile, kind):
    _assert_group(hostile, f"trailing_bytes/{kind}")


PAYLOAD_KINDS = [k for k in KINDS if k != "empty"]


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_payload_bit_flips_with_verify(hostile, kind):
    _assert_group(hostile, f"payload_bit_flips_verified/{kind}")


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_payload_bit_flips_without_verify(hostile, kind):
    _assert_group(hostile, f"payload_bit_flips_unverified/{kind}")


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_payload_garbage_with_verify(hostile, kind):
    _assert_group(hostile, f"payload_garbage_verified/{kind}")


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_payload_garbage_without_verify(hostile, kind):
    _assert_group(hostile, f"payload_garbage_unverified/{kind}")


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_payload_garbage_with_valid_crcs(hostile, kind):
    _assert_group(hostile, f"payload_garbage_valid_crcs/{kind}")


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
def test_header_fields_rewritten_with_valid_crc(hostile, kind):
    _assert_group(hostile, f"header_fields_valid_crc/{kind}")


def test_garbage_and_empty_input(hostile):
    _assert_group(hostile, "garbage")


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forged_frame(hostile, name):
    _assert_group(hostile, f"forged/{name}")


@pytest.mark.parametrize("major", [2, 3, 255])
def test_bumped_major_version_is_unsupported_in_process(frames, major):
    """(In-process: header parsing only, no kernel runs.) inspect and decompress agree."""
    data = build(parse(frames["bitpack"]), major=major)
    for call in (embzip.inspect, lambda d: embzip.decompress(d), lambda d: embzip.decompress(d, verify=False)):
        with pytest.raises(embzip.UnsupportedVersionError):
            call(data)


@pytest.mark.parametrize("strategy", ["fast", "compact"])
def test_a_legal_huge_step_decodes_to_inf_without_a_warning(strategy):
    """(In-process.) A forged step that is legal (finite, positive, a float32 value) but makes
    code * step overflow decodes to inf, the spec's dtype(q) * dtype(step), on every path: the
    constant rANS section's product (computed in Python, not in a kernel) leaked numpy's
    overflow warning, a foreign exception under ``-W error``."""
    values = np.full(4, 1.0, np.float32)
    data = build(parse(bytes(embzip.compress(values, abs_error=0.1, strategy=strategy))), step=2.0 ** 127)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = embzip.decompress(data)
    assert out.dtype == np.float32 and np.all(np.isposinf(out)), out


@pytest.mark.parametrize("step", [1e39, 1e300, -1e300, float("inf")])
def test_forged_step_is_rejected_cleanly_even_when_warnings_are_errors(frames, step):
    """(In-process: header validation only.) A step beyond float32 in a float32 frame is a
    CorruptFrameError; the check must not leak a numpy RuntimeWarning, which under
    ``-W error`` (or ``filterwarnings = error``) becomes a foreign exception."""
    data = build(parse(frames["bitpack"]), step=step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for call in (embzip.inspect, embzip.decompress):
            with pytest.raises(embzip.FormatError):
                call(data)
