"""The hostile-frame worker: ``python tests/hostile_worker.py GROUPS RESULTS PROGRESS GROUP CASE``.

tests/test_hostile.py writes the frames and case groups (hostile_frames.py) to GROUPS and runs
this script, so that a segfault or a hang in a numba kernel fails a test naming the case
instead of killing pytest. It decodes every case from (GROUP, CASE) on, writes one JSON line
per case to RESULTS, and the case it is in to PROGRESS; ``faulthandler`` reports a case that
runs longer than ``EMBZIP_HOSTILE_CASE_TIMEOUT`` seconds as a hang.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
import time

import numpy as np

import embzip
from embzip.checksum import crc32c
from hostile_frames import BOTH, _header_len, decoded_sha, recrc  # (same directory)

CASE_TIMEOUT = float(os.environ.get("EMBZIP_HOSTILE_CASE_TIMEOUT", "30"))  # one decode: beyond it, a hang


# --------------------------------------------------------------------------- the worker


def _mutate(base: bytes, mutation) -> bytes:
    op = mutation[0]
    if op == "none":
        return base
    if op == "trunc":
        return base[:mutation[1]]
    if op == "flip":
        b = bytearray(base)
        b[mutation[1] // 8] ^= 1 << (mutation[1] % 8)
        return bytes(b)
    if op in ("set", "set_recrc", "set_hcrc"):
        b = bytearray(base)
        for pos, value in mutation[1]:
            b[pos] = value
        if op == "set_recrc":
            return recrc(bytes(b))
        if op == "set_hcrc":
            hlen = _header_len(base)
            return bytes(b[:hlen - 4]) + struct.pack("<I", crc32c(bytes(b[:hlen - 4]))) + bytes(b[hlen:])
        return bytes(b)
    if op == "append":
        return base + mutation[1]
    if op == "explicit":
        return mutation[1]
    raise AssertionError(op)


def _classify(op: str, data: bytes, verify: bool):
    if op.startswith("selftest_"):  # the harness's own test: a crash, a hang, a foreign error
        if op == "selftest_crash":
            import signal
            os.kill(os.getpid(), signal.SIGSEGV)
        if op == "selftest_hang":
            time.sleep(3600)
        op = "raise_index_error"
    try:
        if op == "raise_index_error":
            raise IndexError("selftest")
        if op == "inspect":
            embzip.inspect(data)
            return "ok", None
        return "array", embzip.decompress(data, verify=verify)
    except embzip.EmbzipError as exc:
        return type(exc).__name__, exc
    except Exception as exc:  # noqa: BLE001 - a foreign exception is what we are looking for
        return "foreign:" + type(exc).__name__, exc


_EMBZIP_ERRORS = {cls.__name__: cls for cls in (
    embzip.EmbzipError, embzip.FormatError, embzip.CorruptFrameError, embzip.TruncatedFrameError,
    embzip.UnsupportedVersionError, embzip.BackendUnavailableError, embzip.CommError)}


def _judge(expect: str, outcome: str, value, shape, dtype) -> bool:
    is_error = outcome in _EMBZIP_ERRORS
    if expect == "error":
        return is_error
    if expect.startswith("format:"):
        return outcome in expect[len("format:"):].split(",")
    if expect == "tolerant":
        if outcome == "ok":
            return True
        if outcome == "array":
            return value.shape == tuple(shape) and value.dtype == np.dtype(dtype)
        return is_error
    if expect == "tolerant_any":
        return is_error or outcome in ("ok", "array")
    if expect.startswith("equal:"):
        return outcome == "array" and decoded_sha(value) == expect[len("equal:"):]
    raise AssertionError(expect)


def worker_main(argv) -> None:
    import faulthandler

    groups_path, results_path, progress_path, start_group, start_case = argv
    start_group, start_case = int(start_group), int(start_case)
    with open(groups_path, "rb") as fh:
        spec = pickle.load(fh)
    frames, shapes, groups = spec["frames"], spec["shapes"], spec["groups"]
    began = time.perf_counter()
    for frame in frames.values():  # warm up the JIT outside the per-case watchdog
        for verify in BOTH:
            embzip.decompress(frame, verify=verify)
    warmup = time.perf_counter() - began
    faulthandler.enable()
    progress = os.open(progress_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with open(results_path, "a") as out:
        for gi in range(start_group, len(groups)):
            name, kind, expect, cases = groups[gi]
            os.write(progress, f"G {gi} {name}\n".encode())
            base = frames[kind] if kind else None
            shape, dtype = shapes.get(kind, (None, None))
            counts, failures = {}, 0
            began = time.perf_counter()
            for ci in range(start_case if gi == start_group else 0, len(cases)):
                mutation, op, verify = cases[ci]
                os.write(progress, f"C {gi} {ci}\n".encode())
                data = _mutate(base, mutation)
                faulthandler.dump_traceback_later(CASE_TIMEOUT, exit=True)
                outcome, value = _classify(op, data, verify)
                faulthandler.cancel_dump_traceback_later()
                counts[outcome] = counts.get(outcome, 0) + 1
                if not _judge(expect, outcome, value, shape, dtype):
                    failures += 1
                    if failures <= 12:  # streamed, so a later crash in the group loses nothing
                        out.write(json.dumps({"group": name, "failure": {
                            "case": ci, "mutation": _describe_mutation(mutation), "op": op, "verify": verify,
                            "outcome": outcome, "detail": _describe_value(outcome, value)}}) + "\n")
                        out.flush()
            out.write(json.dumps({"group": name, "summary": {
                "cases": len(cases), "counts": counts, "failures": failures,
                "seconds": round(time.perf_counter() - began, 3)}}) + "\n")
            out.flush()
        out.write(json.dumps({"done": True, "warmup_seconds": round(warmup, 3)}) + "\n")
    os.close(progress)


def _describe_mutation(mutation) -> str:
    if mutation[0] in ("explicit", "append"):
        return f"{mutation[0]}({len(mutation[1])} bytes: {mutation[1][:64].hex()}{'...' if len(mutation[1]) > 64 else ''})"
    return repr(mutation)[:200]


def _describe_value(outcome, value) -> str:
    if outcome == "array":
        return f"returned array shape={value.shape} dtype={value.dtype}"
    if outcome == "ok":
        return "returned normally"
    return f"{type(value).__name__}: {value}"[:300]


if __name__ == "__main__":
    worker_main(sys.argv[1:])
    sys.exit(0)
