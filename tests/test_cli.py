"""The ``embzip`` command: compress / decompress / inspect / bench, and its error contract.

Commands run in-process through :func:`embzip.cli.main` (the console script's entry), one
through ``python -m embzip`` to check the real process's exit status and stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import embzip
from embzip import cli

RNG = np.random.default_rng(3)


@pytest.fixture()
def npy(tmp_path):
    x = RNG.normal(size=(300, 24)).astype(np.float32)
    x[::7] = x[0]  # repeated rows: dedup shows in the stages
    path = tmp_path / "x.npy"
    np.save(path, x)
    return path, x


def run(capsys, *argv):
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse rejects bad arguments before main's body runs
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def test_compress_decompress_round_trip_within_bound(npy, tmp_path, capsys):
    path, x = npy
    frame, back = tmp_path / "x.ezf", tmp_path / "y.npy"
    status, out, err = run(capsys, "compress", path, frame, "--rel-error", "0.01", "--strategy", "fast")
    assert status == 0 and "ratio" in out and err == ""
    status, out, _ = run(capsys, "decompress", frame, back, "--max-bytes", str(x.nbytes))  # exactly fits
    assert status == 0 and back.exists()
    y = np.load(back)
    info = embzip.inspect(frame.read_bytes())
    assert y.dtype == x.dtype and y.shape == x.shape and info.error_mode == "rel"
    assert np.abs(y.astype(np.float64) - x).max() <= info.abs_error


def test_max_bytes_zero_decodes_an_empty_array(tmp_path, capsys):
    """``--max-bytes 0`` is ``max_bytes=0``: an empty array fits, anything else is refused."""
    path, frame, back = tmp_path / "e.npy", tmp_path / "e.ezf", tmp_path / "f.npy"
    np.save(path, np.empty((0, 5), np.float64))
    assert run(capsys, "compress", path, frame, "--abs-error", "0.1")[0] == 0
    assert run(capsys, "decompress", frame, back, "--max-bytes", "0")[0] == 0
    y = np.load(back)
    assert y.shape == (0, 5) and y.dtype == np.float64


def test_compress_and_inspect_json_describe_the_frame(npy, tmp_path, capsys):
    path, x = npy
    frame = tmp_path / "x.ezf"
    status, out, _ = run(capsys, "compress", path, frame, "--abs-error", "1e-3", "--json")
    made = json.loads(out)
    assert status == 0 and made["frame_size"] == frame.stat().st_size
    status, out, _ = run(capsys, "inspect", frame, "--json")
    info = json.loads(out)
    assert status == 0 and info["shape"] == [300, 24] and info["dtype"] == "float32"
    assert info["abs_error"] == 1e-3 and info["raw_size"] == x.nbytes
    assert "dedup" in info["stages"] and info["unique_rows"] < 300
    assert info["ratio"] == pytest.approx(x.nbytes / frame.stat().st_size)
    status, out, _ = run(capsys, "inspect", frame)
    assert status == 0 and "stages:" in out and "unique rows:" in out and "ratio" in out


@pytest.mark.parametrize("argv, status, message", [
    (["compress", "{npy}", "{tmp}/o.ezf"], 2, "one of the arguments"),
    (["compress", "{npy}", "{tmp}/o.ezf", "--abs-error", "1", "--rel-error", "1"], 2, "not allowed"),
    (["compress", "{npy}", "{tmp}/o.ezf", "--abs-error", "nan"], 2, "positive number"),
    (["compress", "{tmp}/missing.npy", "{tmp}/o.ezf", "--abs-error", "1"], 1, "No such file"),
    (["compress", "{junk}", "{tmp}/o.ezf", "--abs-error", "1"], 2, "not a .npy"),
    (["compress", "{ints}", "{tmp}/o.ezf", "--abs-error", "1"], 2, "float32 or float64"),
    (["decompress", "{junk}", "{tmp}/o.npy"], 1, "Error"),
    (["inspect", "{npy}"], 1, "Error"),
    (["decompress", "{zeros}", "{tmp}/o.npy"], 1, "is not an embzip frame: it starts with b'\\x00\\x00"),
    (["inspect", "{truncated}"], 1, "Truncated"),
    (["decompress", "{frame}", "{tmp}/o.npy", "--max-bytes", "100"], 1, "more than max_bytes=100"),
    (["decompress", "{frame}", "{tmp}/o.npy", "--max-bytes", "-1"], 2, "non-negative integer"),
    (["decompress", "{frame}", "{tmp}/o.npy", "--max-bytes", "0"], 1, "more than max_bytes=0"),
    (["bench", "{ints}", "--methods", "fp16"], 2, "float32 or float64"),
    (["bench", "--bounds", "rel:x"], 2, "bad bound"),
    ([], 2, "missing command"),
])
def test_bad_input_is_one_line_on_stderr_and_nonzero(npy, tmp_path, capsys, argv, status, message):
    path, x = npy
    junk, ints, truncated = tmp_path / "junk.bin", tmp_path / "ints.npy", tmp_path / "t.ezf"
    junk.write_bytes(b"EMBZ not a frame at all" * 3)
    zeros = tmp_path / "zeros.bin"  # (stands in for /dev/zero: refused before it is read whole)
    zeros.write_bytes(bytes(1 << 20))
    np.save(ints, np.arange(10))
    truncated.write_bytes(embzip.compress(x, abs_error=1e-2).tobytes()[:-10])
    frame = tmp_path / "f.ezf"
    frame.write_bytes(embzip.compress(x, abs_error=1e-2).tobytes())
    argv = [a.format(npy=path, tmp=tmp_path, junk=junk, ints=ints, truncated=truncated, zeros=zeros, frame=frame)
            for a in argv]
    got, out, err = run(capsys, *argv)
    assert got == status, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o.ezf").exists()  # nothing half-written


def test_real_process_exit_status_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.ezf"
    bad.write_bytes(b"\x00" * 100)
    proc = subprocess.run([sys.executable, "-m", "embzip", "inspect", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("embzip: error:") and proc.stderr.count("\n") == 1


def test_bench_on_a_file_json_and_progress(npy, capsys):
    path, _ = npy
    status, out, err = run(capsys, "bench", path, "--methods", "embzip-fast,fp16",
                           "--bounds", "rel:0.01,abs:0.001", "--repeat", "1", "--json")
    rows = json.loads(out)
    assert status == 0 and len(rows) == 4
    assert {r["key"] for r in rows} == {"embzip-fast", "fp16"}
    assert all(r["within_bound"] for r in rows if r["key"] == "embzip-fast")
    progress = [line for line in err.splitlines() if "/4 " in line]
    assert len(progress) == 4 and "4/4" in progress[-1]  # one line per measurement


def test_bench_table_and_plot(npy, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path, _ = npy
    png = tmp_path / "rd.png"
    status, out, err = run(capsys, "bench", path, "--methods", "embzip-auto,int8",
                           "--bounds", "rel:0.05", "--repeat", "1", "--plot", png, "--quiet")
    assert status == 0 and err == ""
    assert "embzip auto: bound held" in out and "int8 rowwise" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
