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
