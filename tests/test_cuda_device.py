"""CUDA backend on a real GPU: parity with the CPU backend at sizes the simulator cannot
reach, and interop with cupy and torch. Every test skips (with the reason) without a GPU.

The simulator suite (tests/test_cuda_sim.py) covers the logic on CI; these tests catch what
only hardware shows: races between blocks, FMA contraction, alignment of real allocations.
"""

from __future__ import annotations

import numpy as np
import pytest


def _gpu():
    cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    from numba import config
    if config.ENABLE_CUDASIM:
        pytest.skip("the simulator is on: tests/test_cuda_sim.py covers it")
    if not cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    return cuda


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _host(device_array):
    """A numba or cupy device array's contents as numpy."""
    if hasattr(device_array, "copy_to_host"):
        return device_array.copy_to_host()
    import cupy
    assert isinstance(device_array, cupy.ndarray), type(device_array)
    return cupy.asnumpy(device_array)


def _parity(cuda, x, **kwargs):
    import embzip
    frame = embzip.compress(cuda.to_device(x), **kwargs)
    cpu_frame = embzip.compress(x, **kwargs)
    assert frame.copy_to_host().tobytes() == cpu_frame.tobytes()
    expected = embzip.decompress(cpu_frame)
    np.testing.assert_array_equal(_bits(embzip.decompress(frame).copy_to_host()), _bits(expected))
    np.testing.assert_array_equal(_bits(embzip.decompress(frame, device="cpu")), _bits(expected))
    # a host frame decoded on the GPU: a cupy array when cupy works here, else numba's
    np.testing.assert_array_equal(_bits(_host(embzip.decompress(cpu_frame, device="cuda"))), _bits(expected))


@pytest.mark.parametrize("strategy", ["fast", "compact", "auto"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parity_large(strategy, dtype):
    cuda = _gpu()
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, size=(3_000_000 // 64, 64)).astype(dtype)  # millions of values: many blocks
    x.reshape(-1)[rng.integers(0, x.size, 500)] = np.nan
    x.reshape(-1)[rng.integers(0, x.size, 50)] = np.inf
    _parity(cuda, x, rel_error=0.01, strategy=strategy)
    _parity(cuda, x.reshape(-1)[:1_000_003], abs_error=1e-4, strategy=strategy)  # fused path + tail


def test_parity_dedup_many_rows():
    cuda = _gpu()
    rng = np.random.default_rng(1)
    table = rng.normal(size=(5000, 32)).astype(np.float32)
    batch = table[np.minimum(rng.zipf(1.05, 200_000) - 1, 4999)]
    for strategy in ("fast", "compact", "auto"):
        _parity(cuda, batch, rel_error=0.02, strategy=strategy)


def test_bin_edges_match_cpu_bit_for_bit():
    """Values on rounding edges: an FMA-contracted quantizer would code some differently."""
    cuda = _gpu()
    rng = np.random.default_rng(2)
    step = np.float32(2e-3)
    k = rng.integers(-10**6, 10**6, 2_000_000)
    x = ((k + 0.5) * np.float64(step)).astype(np.float32)
    x = np.where(rng.integers(0, 2, x.size) == 1, np.nextafter(x, np.float32(np.inf)), x).astype(np.float32)
    _parity(cuda, x, abs_error=1e-3, strategy="fast")
    _parity(cuda, x.astype(np.float64), abs_error=1e-3, strategy="fast")


def test_cupy_in_cupy_out():
    _gpu()
    cupy = pytest.importorskip("cupy", reason="cupy is not installed")
    import embzip
    x = cupy.random.default_rng(3).standard_normal((4096, 50), dtype=cupy.float32)
    frame = embzip.compress(x, rel_error=0.01)
    assert isinstance(frame, cupy.ndarray) and frame.dtype == cupy.uint8
    y = embzip.decompress(frame)
    assert isinstance(y, cupy.ndarray) and y.shape == x.shape
    assert float(cupy.abs(y - x).max()) <= embzip.inspect(frame).abs_error
    assert cupy.asnumpy(frame).tobytes() == embzip.compress(cupy.asnumpy(x), rel_error=0.01).tobytes()


def test_caller_on_a_nonblocking_cupy_stream():
    """A caller whose current cupy stream is non-blocking: that stream does not order with the
    legacy stream embzip's kernels use. The input is still being written there when compress
    starts (a freshly pooled array, then a queue of kernels writing it), and the results are
    read there right after: compress must wait for the producer's stream, and both calls must
    return complete results (embzip._stream_order). Frames and values must match the CPU's."""
    _gpu()
    cupy = pytest.importorskip("cupy", reason="cupy is not installed")
    import warnings

    import embzip
    x = np.random.default_rng(8).normal(0, 1, size=(8192, 64)).astype(np.float32)
    expected_frame = embzip.compress(x, abs_error=1e-3)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream, warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Ss]tream")  # e.g. cupy's DLPack "Stream 0 is passed"
        source = cupy.asarray(x)
        for _ in range(3):
            data = cupy.empty_like(source)
            for _ in range(200):  # keeps the stream busy well past the moment compress starts
                cupy.multiply(source, 1.0, out=data)
            frame = embzip.compress(data, abs_error=1e-3)
            assert cupy.asnumpy(frame).tobytes() == expected_frame.tobytes()
            out = cupy.empty_like(data)
            cupy.multiply(source, 0.0, out=out)  # a queued write to out the decoder must come after
            embzip.decompress(frame, out=out)
            got = cupy.asnumpy(out)  # read on the non-blocking stream, no synchronize of our own
            np.testing.assert_array_equal(_bits(got), _bits(embzip.decompress(expected_frame)))
    stream.synchronize()


def test_torch_cuda_tensor():
    _gpu()
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    import embzip
    x = torch.randn(1000, 64, device="cuda")
    frame = embzip.compress(x, abs_error=1e-3)
    out = torch.empty_like(x)
    embzip.decompress(frame, out=out)
    assert float((out - x).abs().max()) <= 1e-3


def test_small_grids_print_no_occupancy_warnings():
    """embzip launches small grids on purpose; numba-cuda's low-occupancy warning about them
    is noise to the user, and the switch that silences it must be restored afterwards."""
    import warnings

    from numba import config
    from numba.core.errors import NumbaPerformanceWarning

    cuda = _gpu()
    import embzip
    x = np.random.default_rng(4).normal(size=(37, 16)).astype(np.float32)
    before = config.CUDA_LOW_OCCUPANCY_WARNINGS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for strategy in ("fast", "compact"):
            frame = embzip.compress(cuda.to_device(x), rel_error=0.01, strategy=strategy)
            embzip.decompress(frame)
    assert not [w for w in caught if issubclass(w.category, NumbaPerformanceWarning)], caught[:3]
    assert config.CUDA_LOW_OCCUPANCY_WARNINGS == before


# ------------------------------------------------------------------ hazards only hardware shows
# (from a review of what the simulator hides: block scheduling, denormal flushing, a real
# allocator's addresses, concurrent host threads)


def test_repeated_compress_is_byte_identical():
    """Blocks run in a different order on every launch: the dedup numbering, the scans and the
    atomics must not let that order into the frame."""
    cuda = _gpu()
    import embzip
    rng = np.random.default_rng(9)
    table = rng.normal(size=(3000, 48)).astype(np.float32)
    batch = table[np.minimum(rng.zipf(1.05, 150_000) - 1, 2999)]
    device_batch = cuda.to_device(batch)
    for strategy in ("fast", "compact", "auto"):
        cpu = embzip.compress(batch, rel_error=0.01, strategy=strategy).tobytes()
        for attempt in range(5):
            frame = embzip.compress(device_batch, rel_error=0.01, strategy=strategy)
            assert frame.copy_to_host().tobytes() == cpu, (strategy, attempt)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_values_and_steps_match_cpu(dtype):
    """A GPU that flushed subnormals (ftz) would code them, or a subnormal step, differently."""
    cuda = _gpu()
    info = np.finfo(dtype)
    rng = np.random.default_rng(10)
    x = (rng.standard_normal(1_000_000) * info.tiny * 64).astype(dtype)  # mostly subnormal
    x[::97] = info.smallest_subnormal * rng.integers(-5, 5, x[::97].size)
    sub = (info.smallest_subnormal * rng.integers(-10**6, 10**6, 1_000_000)).astype(dtype)  # all subnormal
    for strategy in ("fast", "compact"):
        _parity(cuda, x, abs_error=float(info.tiny) * 4, strategy=strategy)
        _parity(cuda, sub, abs_error=float(info.smallest_subnormal) * 40, strategy=strategy)  # a subnormal step


def test_misaligned_cupy_frame():
    """A frame at an odd device address (a real allocation, not the simulator's host memory)."""
    _gpu()
    cupy = pytest.importorskip("cupy", reason="cupy is not installed")
    import embzip
    x = np.random.default_rng(11).normal(size=(20_000, 32)).astype(np.float32)
    for strategy in ("fast", "compact"):
        frame = embzip.compress(x, abs_error=1e-3, strategy=strategy)
        buffer = cupy.empty(frame.size + 1, cupy.uint8)
        buffer[1:] = cupy.asarray(frame)
        got = _host(embzip.decompress(buffer[1:]))
        np.testing.assert_array_equal(_bits(got), _bits(embzip.decompress(frame)))


def test_concurrent_threads_give_their_own_frames():
    """Host threads compressing and decoding different inputs at once (one context, shared
    caches and pools): each frame is what that input alone gives."""
    cuda = _gpu()
    import threading

    import embzip
    inputs = [np.random.default_rng(20 + k).normal(size=(50_000, 40)).astype(np.float32) for k in range(4)]
    expected = [embzip.compress(x, abs_error=1e-3, strategy=("fast", "compact")[k % 2]).tobytes()
                for k, x in enumerate(inputs)]
    results, errors = [None] * 4, []

    def work(k):
        try:
            for _ in range(3):
                frame = embzip.compress(cuda.to_device(inputs[k]), abs_error=1e-3, strategy=("fast", "compact")[k % 2])
                host = frame.copy_to_host()
                assert host.tobytes() == expected[k], k
                np.testing.assert_array_equal(_bits(embzip.decompress(frame).copy_to_host()),
                                              _bits(embzip.decompress(host)))
            results[k] = True
        except BaseException as exc:  # reported below, from the main thread
            errors.append((k, exc))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert results == [True] * 4


def test_beyond_two_to_the_31_values():
    """Index arithmetic past 2**31 elements (8 GiB of float32): opt in with
    EMBZIP_TEST_HUGE=1 (bench/device_check.sh's hazards step sets it on an 80 GB GPU)."""
    import os

    cuda = _gpu()
    if os.environ.get("EMBZIP_TEST_HUGE") != "1":
        pytest.skip("EMBZIP_TEST_HUGE=1 not set (needs ~30 GB of GPU memory and a minute)")
    cupy = pytest.importorskip("cupy", reason="cupy is not installed")
    import embzip
    n = 2**31 + 513
    x = cupy.random.default_rng(12).standard_normal(n, dtype=cupy.float32)
    for strategy in ("fast", "compact"):
        frame = embzip.compress(x, abs_error=1e-2, strategy=strategy)
        y = embzip.decompress(frame)
        assert y.shape == (n,)
        assert float(cupy.abs(y - x).max()) <= 1e-2, strategy
        del frame, y
    del x
    cuda.synchronize()


def test_a_frame_declaring_more_than_the_device_holds_is_an_embzip_error():
    """What the allocator of a real device raises (cupy's OutOfMemoryError, numba's
    CudaAPIError) for a 90-byte frame declaring 2**47 float32 values: the CPU's EmbzipError."""
    _gpu()
    import embzip
    import hostile_frames

    frame = hostile_frames.declaring(2**47)
    with pytest.raises(embzip.FrameTooLargeError, match="more than can be allocated"):
        embzip.decompress(frame, device="cuda")
    with pytest.raises(embzip.FrameTooLargeError, match="more than max_bytes=4000"):
        embzip.decompress(hostile_frames.declaring(1001), device="cuda", max_bytes=4000)
    embzip.decompress(hostile_frames.declaring(1000), device="cuda")  # the device still works
