"""Caller mistakes raise ValueError / TypeError, and only them.

- non-finite or non-positive bounds -> ValueError; bool / str (non-real) bounds -> TypeError;
- both or neither of abs_error / rel_error -> ValueError; an unknown strategy -> ValueError;
- non-float dtypes -> TypeError;
- decompress(out=...) of the wrong shape / dtype, or read-only -> ValueError / TypeError;
- a frame that is not bytes-like (bytes, bytearray, memoryview, 1-D uint8 array) -> TypeError.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import embzip

X32 = np.linspace(-1.0, 1.0, 64, dtype=np.float32)


def _frame(x=X32, **kw):
    kw = kw or {"abs_error": 1e-3}
    return embzip.compress(x, **kw)


# --------------------------------------------------------------------- bounds

NON_POSITIVE_OR_NON_FINITE = [
    0, 0.0, -0.0, -1, -1e-300, -5e-324, float("nan"), float("inf"), float("-inf"),
    np.float64("nan"), np.float32("inf"), np.float64(0.0), np.float32(-1.0), np.int64(0),
    np.int32(-3), Fraction(0), Fraction(-1, 3),
]
# Finite as numbers, but beyond float64: still not a usable (finite) bound.
BEYOND_FLOAT64 = [10**400, -(10**400), Fraction(10**400, 3)]
NOT_REAL = [True, False, np.bool_(True), np.bool_(False), "0.1", b"0.1", "nan", [0.1], (0.1,),
            np.array([0.1]), complex(0.1, 0.0), np.complex128(0.1), object(), {}]


@pytest.mark.parametrize("name", ["abs_error", "rel_error"])
@pytest.mark.parametrize("value", NON_POSITIVE_OR_NON_FINITE, ids=repr)
def test_non_positive_or_non_finite_bound_is_value_error(name, value):
    with pytest.raises(ValueError):
        embzip.compress(X32, **{name: value})


@pytest.mark.parametrize("name", ["abs_error", "rel_error"])
@pytest.mark.parametrize("value", BEYOND_FLOAT64, ids=["int-1e400", "negative-int-1e400", "Fraction-1e400"])
def test_bound_beyond_float64_is_value_error(name, value):
    with pytest.raises(ValueError):
        embzip.compress(X32, **{name: value})


@pytest.mark.parametrize("name", ["abs_error", "rel_error"])
@pytest.mark.parametrize("value", NOT_REAL, ids=repr)
def test_non_real_bound_is_type_error(name, value):
    with pytest.raises(TypeError):
        embzip.compress(X32, **{name: value})


@pytest.mark.parametrize("name", ["abs_error", "rel_error"])
@pytest.mark.parametrize("value", [1, np.int64(2), np.float32(0.01), np.float64(0.5), Fraction(1, 100),
                                   1e-300, 5e-324, 1e300], ids=repr)
def test_real_bounds_of_any_numeric_type_are_accepted(name, value):
    frame = embzip.compress(X32, **{name: value})
    info = embzip.inspect(frame)
    assert info.error_mode == name[:3] and info.error_value == float(value)
    if name == "abs_error":
        assert info.abs_error == float(value)
    else:
        assert info.abs_error == float(value) * (float(X32.max()) - float(X32.min()))


@pytest.mark.parametrize("kwargs", [{}, {"abs_error": None}, {"rel_error": None},
                                    {"abs_error": None, "rel_error": None},
                                    {"abs_error": 0.1, "rel_error": 0.1},
                                    {"abs_error": 1e-3, "rel_error": 1e-3, "strategy": "fast"}],
                         ids=str)
def test_both_or_neither_bound_is_value_error(kwargs):
    with pytest.raises(ValueError):
        embzip.compress(X32, **kwargs)


@pytest.mark.parametrize("strategy", ["FAST", "Fast", "", " fast", "rans", "bitpack", "raw", "best",
                                      None, 1, 0, b"fast", 1.5])
def test_unknown_strategy_is_value_error(strategy):
    with pytest.raises(ValueError):
        embzip.compress(X32, abs_error=1e-3, strategy=strategy)


@pytest.mark.parametrize("strategy", [["fast"], {"fast": 1}, []])
def test_unhashable_strategy_is_value_error_naming_the_choices(strategy):
    # (it was the dict lookup's "unhashable type: 'list'")
    with pytest.raises(ValueError, match="strategy must be one of"):
        embzip.compress(X32, abs_error=1e-3, strategy=strategy)


@pytest.mark.parametrize("mask", [[False] * 4, [False, True, False, True]], ids=["none masked", "some masked"])
def test_masked_array_is_type_error_not_its_hidden_values(mask):
    # np.asarray drops the mask: the values it hides would be compressed as data
    with pytest.raises(TypeError, match="masked arrays"):
        embzip.compress(np.ma.masked_array(np.arange(4, dtype=np.float32), mask=mask), abs_error=1e-3)


# --------------------------------------------------------------------- dtypes

NON_FLOAT_DTYPES = ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?", "f2", "c8", "c16",
                    "U3", "S3", "O", "M8[s]", "m8[s]", [("a", "f4")], [("a", "f4"), ("b", "f8")], "V8"]
if np.dtype(np.longdouble) != np.dtype(np.float64):
    NON_FLOAT_DTYPES.append("g")


@pytest.mark.parametrize("dtype", NON_FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kw", [{"abs_error": 0.1}, {"rel_error": 0.1}], ids=["abs", "rel"])
def test_non_float_dtype_is_type_error(dtype, kw):
    x = np.zeros(16, dtype=dtype)
    with pytest.raises(TypeError):
        embzip.compress(x, **kw)
    with pytest.raises(TypeError):
        embzip.compress(x.reshape(4, 4), **kw)


@pytest.mark.parametrize("data", [[1, 2, 3], 3, [True, False], [1j, 2j], ["a", "b"], [[1.0], [1.0, 2.0]],
                                  object(), None], ids=repr)
def test_non_float_array_likes_are_type_error(data):
    with pytest.raises(TypeError):
        embzip.compress(data, abs_error=0.1)


@pytest.mark.parametrize("data,dtype,shape", [([1.0, 2.5], np.float64, (2,)), (1.5, np.float64, ()),
                                              (np.float32(2.5), np.float32, ()), ([[0.5], [1.5]], np.float64, (2, 1))])
def test_float_array_likes_are_accepted(data, dtype, shape):
    y = embzip.decompress(embzip.compress(data, abs_error=0.1))
    assert y.dtype == dtype and y.shape == shape
    assert np.all(np.abs(y.astype(np.float64) - np.asarray(data, dtype=np.float64)) <= 0.1)


# --------------------------------------------------------------------- decompress(out=)


@pytest.fixture(scope="module")
def frame32():
    return _frame()


@pytest.mark.parametrize("shape", [(63,), (65,), (64, 1), (1, 64), (8, 8), ()], ids=str)
def test_out_of_wrong_shape_is_value_error(frame32, shape):
    """A ValueError as a caller's mistake, and an EmbzipError as a bad frame's (the frame may be
    the corrupt one): OutMismatchError is both."""
    out = np.zeros(shape, np.float32)
    before = out.copy()
    with pytest.raises(embzip.OutMismatchError, match="out must have shape") as info:
        embzip.decompress(frame32, out=out)
    assert isinstance(info.value, ValueError) and isinstance(info.value, embzip.EmbzipError)
    assert np.array_equal(out, before)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.uint32, np.complex64, object])
def test_out_of_wrong_dtype_is_rejected(frame32, dtype):
    out = np.zeros(64, dtype)
    with pytest.raises(embzip.OutMismatchError):
        embzip.decompress(frame32, out=out)


def test_out_of_wrong_dtype_for_float64_frame_is_rejected():
    frame = _frame(X32.astype(np.float64))
    with pytest.raises((ValueError, TypeError)):
        embzip.decompress(frame, out=np.zeros(64, np.float32))


@pytest.mark.parametrize("layout", ["C", "strided"])
def test_read_only_out_is_rejected(frame32, layout):
    out = np.zeros(64, np.float32) if layout == "C" else np.zeros(128, np.float32)[::2]
    out.flags.writeable = False
    with pytest.raises((ValueError, TypeError)):
        embzip.decompress(frame32, out=out)
    assert not out.any()


@pytest.mark.parametrize("out", [[0.0] * 64, (0.0,) * 64, memoryview(bytearray(256)), bytearray(256)],
                         ids=["list", "tuple", "memoryview", "bytearray"])
def test_out_that_is_not_an_ndarray_is_type_error(frame32, out):
    with pytest.raises(TypeError):
        embzip.decompress(frame32, out=out)


# --------------------------------------------------------------------- frame argument types


@pytest.mark.parametrize("frame", ["EMBZ", 12, 1.5, None, [69, 77, 66, 90], object(),
                                   np.zeros(60, np.uint16), np.zeros(60, np.int8), np.zeros(60, np.float32),
                                   np.zeros((6, 10), np.uint8)],
                         ids=["str", "int", "float", "None", "list", "object", "uint16", "int8", "float32", "2-D uint8"])
@pytest.mark.parametrize("verb", ["decompress", "inspect"])
def test_frame_that_is_not_bytes_like_is_type_error(frame, verb):
    with pytest.raises(TypeError):
        getattr(embzip, verb)(frame)


def test_error_classes_form_the_documented_tree():
    assert issubclass(embzip.FormatError, embzip.EmbzipError)
    for cls in (embzip.CorruptFrameError, embzip.TruncatedFrameError, embzip.UnsupportedVersionError):
        assert issubclass(cls, embzip.FormatError)
    assert issubclass(embzip.BackendUnavailableError, embzip.EmbzipError)
    assert issubclass(embzip.CommError, embzip.EmbzipError)


@pytest.mark.parametrize("shape", [(1,) * 33, (0, 2**49), (2**25, 0, 2**24)])
def test_compress_refuses_shapes_no_frame_can_describe(shape):
    """(Such frames were written, then refused by every decoder: the data was lost.)"""
    with pytest.raises(ValueError, match="dimensions can be compressed|exceeds 2\\*\\*48"):
        embzip.compress(np.zeros(shape, np.float32), abs_error=0.1)


def test_out_overlapping_the_frame_is_decoded_through_a_copy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    x[5, 5] = np.nan  # an outlier section too
    for strategy in ("fast", "compact"):
        frame = embzip.compress(x, abs_error=1e-3, strategy=strategy, dedup=False)
        expected = embzip.decompress(frame)
        memory = np.zeros(max(frame.size, x.nbytes), np.uint8)
        memory[:frame.size] = frame
        out = memory[:x.nbytes].view(np.float32).reshape(x.shape)  # shares bytes with the frame
        embzip.decompress(memory[:frame.size], out=out)
        np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))


def test_max_bytes_refuses_a_larger_frame_before_allocating_anything(monkeypatch):
    import hostile_frames
    from embzip import _api

    frame = embzip.compress(np.ones((4, 3), np.float32), abs_error=0.1)  # 48 bytes decoded
    assert embzip.decompress(frame, max_bytes=48).shape == (4, 3)
    assert embzip.decompress(frame, max_bytes=48, out=np.empty((4, 3), np.float32)).shape == (4, 3)
    assert embzip.decompress(frame, max_bytes=np.int64(48)).shape == (4, 3)

    def allocate(*args):
        raise AssertionError("allocated before the size check")

    monkeypatch.setattr(_api, "_allocate", allocate)
    for tight, declared in ((47, frame), (0, frame), (2**40, hostile_frames.declaring(2**47))):
        with pytest.raises(embzip.FrameTooLargeError, match=f"more than max_bytes={tight}"):
            embzip.decompress(declared, max_bytes=tight)
    # a frame both too large and corrupt: the size first, before its payload is read, as on
    # the GPU (tests/test_cuda_sim.py), so both backends raise the same error
    corrupt = bytearray(frame.tobytes())
    corrupt[-1] ^= 0xFF
    with pytest.raises(embzip.FrameTooLargeError, match="more than max_bytes=47"):
        embzip.decompress(bytes(corrupt), max_bytes=47)
    with pytest.raises(embzip.CorruptFrameError, match="payload checksum"):
        embzip.decompress(bytes(corrupt), max_bytes=48)
    for bad, error in ((-1, ValueError), (1.5, TypeError), (True, TypeError), ("48", TypeError)):
        with pytest.raises(error, match="max_bytes must be"):
            embzip.decompress(frame, max_bytes=bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols", [1, 3, 16])
def test_working_memory_is_within_what_decompress_documents(dtype, cols):
    """max_bytes caps the array; the docstring bounds what decoding needs besides: ~7 KiB, 1.5x
    the frame's outlier sections, and for dedup frames the unique rows (at most the array) and
    4 bytes a row: the worst dedup frame (every row unique), outliers, a raw frame. numpy's
    allocations are traced (kernels allocate nothing)."""
    import tracemalloc

    import hostile_frames

    rows = 2**16 // cols
    frames = {"every row unique": hostile_frames.every_row_unique(rows, cols, dtype)}
    x = np.random.default_rng(cols).normal(size=(rows, cols)).astype(dtype)
    x.reshape(-1)[::7] = 1e30  # outliers at abs_error
    for strategy in ("fast", "compact"):
        frames[strategy] = embzip.compress(x, abs_error=1e-3, strategy=strategy, dedup=False)
    frames["raw"] = embzip.compress(x, abs_error=float(np.finfo(dtype).tiny))
    for name, frame in frames.items():
        info = embzip.inspect(frame)
        assert ("outliers" in info.stages) == (name in ("fast", "compact")), (name, info.stages)
        assert ("raw" in info.stages) == (name == "raw"), (name, info.stages)
        outlier_bytes = info.sections.get("outlier_positions", 0) + info.sections.get("outlier_values", 0)
        dedup = (1 + 4 / (cols * info.dtype.itemsize)) if "dedup" in info.stages else 0
        limit = info.raw_size * (1 + dedup) + 1.5 * outlier_bytes + 7 * 1024
        embzip.decompress(frame)  # (compiled first: numba's own memory is not the frame's)
        tracemalloc.start()
        try:
            decoded = embzip.decompress(frame, max_bytes=info.raw_size)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert decoded.shape == (rows, cols) and peak <= limit, (name, peak, limit, info.raw_size)


def test_running_out_of_memory_while_decoding_is_an_embzip_error(monkeypatch):
    """Not only the output: a stage's scratch (dedup's unique rows) may not fit either."""
    from embzip import _api

    frame = embzip.compress(np.ones((4, 3)), abs_error=0.1)

    def exhausted(*args):
        raise MemoryError

    monkeypatch.setattr(_api, "_decode", exhausted)
    with pytest.raises(embzip.FrameTooLargeError, match=r"declares shape \(4, 3\).*more than can be allocated"):
        embzip.decompress(frame)
