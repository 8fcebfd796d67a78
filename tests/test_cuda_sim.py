"""CUDA backend under the numba-cuda simulator: parity with the CPU backend.

The simulator must be switched on before numba is imported, and the main pytest process
imports numba without it, so this module re-runs itself in a subprocess with
``NUMBA_ENABLE_CUDASIM=1`` (see :func:`test_simulator_suite`). Inside that subprocess the
real tests run: for hypothesis-drawn arrays (NaN payloads, +-Inf, -0.0, subnormals, bin
edges, huge and tiny bounds) and every strategy, the CUDA frame is byte-identical to the
CPU frame, and either backend decodes either frame to the same bits. The simulator runs one
Python thread per GPU thread, so inputs stay at a few hundred values and example counts low.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

IN_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

if not IN_SIMULATOR:
    def test_simulator_suite(tmp_path):
        """Run this file's simulator tests in a subprocess with the simulator switched on."""
        pytest.importorskip("numba.cuda", reason="numba-cuda is not installed (pip install 'embzip[cuda]')")
        import json

        import cuda_kernel_signatures as listed

        launched = tmp_path / "launched.json"  # every kernel launch's argument types, recorded there
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONWARNINGS="ignore::RuntimeWarning",
                   EMBZIP_RECORD_KERNEL_SIGNATURES=str(launched))
        root = Path(__file__).resolve().parent.parent
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                                 str(Path(__file__).resolve())], cwd=root, env=env,
                                capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"simulator tests failed:\n{result.stdout[-8000:]}\n{result.stderr[-4000:]}")
        # the PTX test compiles the committed list: a signature launched here and missing there
        # would reach a GPU without ever being compiled for one
        seen = {tuple(entry) for entry in json.loads(launched.read_text())}
        assert len(seen) >= 30, "the recorder saw too few launches"
        new = sorted(seen - listed.committed())
        assert not new, (f"kernel signatures missing from tests/{listed.LIST.name} (rerun "
                         f"NUMBA_ENABLE_CUDASIM=1 python tests/cuda_kernel_signatures.py --write): {new[:5]}")
else:
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from numba import cuda

    import embzip
    import strategies as S

    warnings.simplefilter("ignore", RuntimeWarning)  # numpy scalar overflow in simulated kernels

    if os.environ.get("EMBZIP_RECORD_KERNEL_SIGNATURES"):  # (set by test_simulator_suite)
        import atexit
        import json

        import cuda_kernel_signatures as listed

        _LAUNCHED = listed.record(listed.kernels())
        atexit.register(lambda path=os.environ["EMBZIP_RECORD_KERNEL_SIGNATURES"]:
                        Path(path).write_text(json.dumps(sorted(_LAUNCHED))))
    SIM = settings(max_examples=int(os.environ.get("EMBZIP_SIM_EXAMPLES", "8")), deadline=None)

    def bits(a) -> np.ndarray:
        a = np.ascontiguousarray(a)
        return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])

    def check_parity(x: np.ndarray, **kwargs) -> None:
        """Same frame bytes from both backends; same decoded bits from every pairing (the
        frames being identical, the GPU decoding the CPU frame is the GPU decoding its own)."""
        cpu_frame = embzip.compress(x, **kwargs)
        dev_frame = embzip.compress(cuda.to_device(np.array(x, order="C")), **kwargs)  # keeps 0-d
        assert getattr(dev_frame, "__cuda_ndarray__", False)
        host_copy = dev_frame.copy_to_host()
        assert host_copy.tobytes() == cpu_frame.tobytes(), (
            f"frames differ: {embzip.inspect(cpu_frame).stages} vs {embzip.inspect(host_copy).stages}, "
            f"{cpu_frame.size} vs {host_copy.size} bytes")
        expected = embzip.decompress(cpu_frame)
        on_device = embzip.decompress(dev_frame)  # device frame -> device array
        assert getattr(on_device, "__cuda_ndarray__", False)
        assert on_device.shape == x.shape and on_device.dtype == x.dtype
        np.testing.assert_array_equal(bits(on_device.copy_to_host()), bits(expected))
        gpu_frame_on_cpu = embzip.decompress(dev_frame, device="cpu")
        assert isinstance(gpu_frame_on_cpu, np.ndarray)
        np.testing.assert_array_equal(bits(gpu_frame_on_cpu), bits(expected))

    @SIM
    @given(data=st.data(), dtype=st.sampled_from(S.FLOATS), strategy=st.sampled_from(S.STRATEGIES))
    def test_parity_abs(data, dtype, strategy):
        x, abs_error = data.draw(S.abs_cases(dtype, max_elements=200))
        check_parity(x, abs_error=abs_error, strategy=strategy)

    @SIM
    @given(data=st.data(), dtype=st.sampled_from(S.FLOATS), strategy=st.sampled_from(S.STRATEGIES))
    def test_parity_rel(data, dtype, strategy):
        x, rel_error = data.draw(S.rel_cases(dtype, max_elements=200))
        check_parity(x, rel_error=rel_error, strategy=strategy)

    @settings(max_examples=3, deadline=None)
    @given(data=st.data(), strategy=st.sampled_from(S.STRATEGIES))
    def test_parity_multi_block_streams(data, strategy):
        """520-1100 values: several bit-packed blocks, a tail, sprinkled specials."""
        x = data.draw(S.bulk_arrays(np.float32, 1e-3, min_size=520, max_size=1100))
        check_parity(x, abs_error=1e-3, strategy=strategy)

    @pytest.mark.parametrize("strategy", ["fast", "compact", "auto"])
    def test_parity_embedding_batch_with_repeats(strategy):
        """A Zipf lookup batch: dedup on, repeated rows, an outlier row, both streams."""
        rng = np.random.default_rng(7)
        table = rng.normal(0, 0.1, size=(30, 12)).astype(np.float32)
        batch = table[np.minimum(rng.zipf(1.3, 60) - 1, 29)]
        batch[5, 3] = np.nan
        check_parity(batch, rel_error=0.02, strategy=strategy)

    def test_parity_sampled_dedup_decision():
        """More rows than DEDUP_SAMPLE_ROWS: the dedup decision comes from the same sample."""
        rng = np.random.default_rng(3)
        x = rng.normal(size=(4200, 1)).astype(np.float32)
        x[::7] = 0.5  # repeats the sample sees
        check_parity(x, abs_error=1e-2, strategy="fast")

    @pytest.mark.parametrize("dedup", [True, False])
    def test_parity_dedup_option(dedup):
        """dedup=True / False skip the sample on both backends alike (same frame)."""
        rng = np.random.default_rng(5)
        x = rng.normal(size=(4200, 3)).astype(np.float32)
        x[4100:] = x[:100]  # repeats only outside the sampled runs' reach of each other
        check_parity(x, abs_error=1e-2, strategy="fast", dedup=dedup)

    def test_parity_special_layouts():
        """0-d, empty, constant (rel bound 0), all-NaN, huge bound, float64."""
        check_parity(np.float32(1.25).reshape(()), abs_error=0.1)
        check_parity(np.zeros((3, 0), np.float32), abs_error=0.1)
        check_parity(np.full((4, 5), -0.0, np.float32), rel_error=0.01)
        check_parity(np.full(7, 3.5), rel_error=0.05)
        check_parity(np.full(9, np.nan, np.float32), rel_error=0.05)
        check_parity(np.linspace(-1, 1, 300), abs_error=1e300)
        check_parity(np.zeros((2, 1), np.float32), rel_error=1e-30)  # dedup, then raw fallback
        host_frame = embzip.compress(np.arange(40, dtype=np.float32), abs_error=0.01)
        on_gpu = embzip.decompress(host_frame, device="cuda")
        np.testing.assert_array_equal(on_gpu.copy_to_host(), embzip.decompress(host_frame))

    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_finite_range_keys_match_the_cpu(dtype):
        """The device range is found with integer atomics on order keys of the bits (a zeroed
        counter needs no +-inf start): the extremes, signed zeros, subnormals, +-max, and
        arrays with no finite value at all come out as the CPU's."""
        from embzip.cuda import pipeline
        from embzip.stages.quantize import finite_range

        info = np.finfo(dtype)
        tiny = np.array(info.smallest_subnormal, dtype)
        nan_payload = np.array(0x7FC00123 if dtype == np.float32 else 0x7FF8000000000123,
                               np.uint32 if dtype == np.float32 else np.uint64).view(dtype)
        cases = [[info.max, -info.max], [-0.0], [0.0, -0.0], [tiny, -tiny], [tiny], [-tiny, np.inf],
                 [np.nan, np.inf, -np.inf], [nan_payload, 1.5, -2.5], [info.min, 0.0], [np.inf], [], [7.0] * 70]
        for values in cases:
            x = np.array(values, dtype)
            got = pipeline.finite_range(cuda.to_device(x))
            want = finite_range(x)
            assert (got is None) == (want is None), values
            if got is not None:  # equal as numbers (a zero's sign is immaterial to the bound)
                assert got == want and all(np.isfinite(got)), (values, got, want)

    def test_workspace_slices_counters_and_uploads():
        """Scratch arrays are disjoint, aligned slices of one chunk (big ones stand alone);
        counters start at zero and are read in one copy per region; upload packs arrays of
        mixed dtypes into one copy and gives them back bit for bit."""
        from numba.cuda.simulator.cudadrv import devicearray as sim_arrays

        from embzip.cuda import memory

        with memory.workspace() as ws:
            arrays = [memory.device_empty(n, dtype) for n, dtype in ((3, np.uint8), (5, np.int64), ((4, 6), np.float32))]
            starts = [a._ary.ctypes.data for a in arrays]
            assert all((p - starts[0]) % memory.ALIGN == 0 for p in starts)  # (a GPU chunk starts aligned)
            ends = [p + a._ary.nbytes for p, a in zip(starts, arrays)]
            assert all(ends[k] <= starts[k + 1] for k in range(len(arrays) - 1))
            assert arrays[2].shape == (4, 6)
            chunk_start = starts[0]
            assert all(chunk_start <= p < chunk_start + memory.CHUNK_BYTES for p in starts)
            big = memory.device_empty(memory.CHUNK_BYTES, np.uint8)
            assert not chunk_start <= big._ary.ctypes.data < chunk_start + memory.CHUNK_BYTES
            caller = memory.device_empty(8, np.uint8, for_caller=True)
            assert not chunk_start <= caller._ary.ctypes.data < chunk_start + memory.CHUNK_BYTES
            a, b, wide = ws.counters(2), ws.counters(1), ws.counters(memory.COUNTER_SLOTS + 1)
            assert a.region is b.region and wide.region is not a.region
            a.device[1] = 7
            b.device[0] = -3
            wide.device[memory.COUNTER_SLOTS] = 9
            reads = []
            original = sim_arrays.FakeCUDAArray.copy_to_host
            sim_arrays.FakeCUDAArray.copy_to_host = lambda self, *args: reads.append(1) or original(self, *args)
            try:
                values = ws.read(a, b, wide)
            finally:
                sim_arrays.FakeCUDAArray.copy_to_host = original
            assert values == [[0, 7], [-3], [0] * memory.COUNTER_SLOTS + [9]] and len(reads) == 2
            hosts = [np.arange(3, dtype=np.uint8), np.array([-1, 2**40], np.int64), np.array([[1.5, -0.0]], np.float32),
                     np.empty(0, np.int64)]
            for host, dev in zip(hosts, memory.upload(*hosts)):
                assert dev.dtype == host.dtype and dev.shape == host.shape
                np.testing.assert_array_equal(dev.copy_to_host().view(np.uint8), host.view(np.uint8))
        assert memory.current_workspace() is not ws  # closed: a fresh one per request outside

    def test_a_small_round_trip_stays_within_its_launch_allocation_and_sync_budget(monkeypatch):
        """A GPU call's fixed cost is its kernel launches (~21 us each on an H200), device
        allocations (~26 us) and host reads (~19 us, each waits for all queued work), not its
        kernels (docs/cuda.md). These are the counts of a 1-D and a 2-D (dedup-checked) fast
        call and of an auto call that picks rANS, under the simulator's launch sizes, as
        budgets: a change that adds a launch, an allocation, a read or an upload fails here."""
        from numba.cuda.simulator.cudadrv import devicearray as sim_arrays

        from embzip.cuda import _launch

        counts = {}

        def counting(key, original):
            def wrapper(*args, **kwargs):
                counts[key] = counts.get(key, 0) + 1
                return original(*args, **kwargs)
            return wrapper

        rng = np.random.default_rng(11)
        # (launches, allocations, host reads, uploads) of compress, then of decompress
        for shape, strategy, budget in (((4096,), "fast", ((9, 2, 2, 1), (7, 2, 2, 0))),
                                        ((32, 128), "fast", ((19, 2, 3, 1), (7, 2, 2, 0))),
                                        ((4096,), "auto", ((18, 2, 5, 3), (7, 2, 3, 1)))):
            x = (rng.standard_normal(shape) * 0.1).astype(np.float32)
            x.flat[5] = np.nan  # an outlier: the outlier sections and their checks run too
            dev = cuda.to_device(x)
            cpu_frame = embzip.compress(x, rel_error=0.01, strategy=strategy)
            embzip.compress(dev, rel_error=0.01, strategy=strategy)  # the CRC tables upload once
            used = []
            with monkeypatch.context() as patch:
                patch.setattr(_launch._QuietKernel, "__getitem__", counting("launches", _launch._QuietKernel.__getitem__))
                patch.setattr(cuda, "device_array", counting("allocations", cuda.device_array))
                patch.setattr(cuda, "to_device", counting("allocations", counting("uploads", cuda.to_device)))
                patch.setattr(sim_arrays.FakeCUDAArray, "copy_to_host",
                              counting("reads", sim_arrays.FakeCUDAArray.copy_to_host))
                patch.setattr(sim_arrays.FakeCUDAArray, "copy_to_device",
                              counting("uploads", sim_arrays.FakeCUDAArray.copy_to_device))
                counts.clear()
                frame = embzip.compress(dev, rel_error=0.01, strategy=strategy)
                used.append(dict(counts))
                counts.clear()
                decoded = embzip.decompress(frame)
                used.append(dict(counts))
            assert frame.copy_to_host().tobytes() == cpu_frame.tobytes()
            np.testing.assert_array_equal(bits(decoded.copy_to_host()), bits(embzip.decompress(cpu_frame)))
            for verb, got, limits in zip(("compress", "decompress"), used, budget):
                for key, limit in zip(("launches", "allocations", "reads", "uploads"), limits):
                    assert got.get(key, 0) <= limit, (shape, strategy, verb, key, got)

    def test_non_contiguous_input_and_out():
        x = np.random.default_rng(1).normal(size=(24, 10)).astype(np.float32)
        dev = cuda.to_device(x)
        frame = embzip.compress(dev.T, abs_error=1e-3)  # a transposed (F-order) view
        assert frame.copy_to_host().tobytes() == embzip.compress(x.T, abs_error=1e-3).tobytes()
        frame = embzip.compress(dev[::2, 1:7], abs_error=1e-3)  # strided slice
        assert frame.copy_to_host().tobytes() == embzip.compress(x[::2, 1:7], abs_error=1e-3).tobytes()
        expected = embzip.decompress(frame.copy_to_host())
        target = cuda.to_device(np.zeros((6, 12), np.float32))
        result = embzip.decompress(frame, out=target.T)  # a non-contiguous out
        np.testing.assert_array_equal(np.asarray(result.copy_to_host()), expected)
        contiguous = cuda.device_array((12, 6), np.float32)
        assert embzip.decompress(frame, out=contiguous) is contiguous
        np.testing.assert_array_equal(contiguous.copy_to_host(), expected)

    def test_cuda_array_interface_objects():
        """Any object exposing __cuda_array_interface__ (in the simulator: host pointers)."""
        x = np.random.default_rng(2).normal(size=(16, 8)).astype(np.float64)

        class Tensorish:  # what torch.cuda tensors look like to embzip
            def __init__(self, array):
                self._keep = array
                self.__cuda_array_interface__ = dict(array.__array_interface__, version=3)

        frame = embzip.compress(Tensorish(x), rel_error=0.01, strategy="compact")
        assert frame.copy_to_host().tobytes() == embzip.compress(x, rel_error=0.01, strategy="compact").tobytes()
        info = embzip.inspect(frame)
        assert info.shape == (16, 8) and info.frame_size == frame.shape[0]
        out = np.zeros_like(x)
        embzip.decompress(frame, out=Tensorish(out))
        np.testing.assert_array_equal(out, embzip.decompress(frame.copy_to_host()))

    def test_misaligned_device_values_are_refused():
        """A float array at an address that is not a multiple of its item size faults on a GPU
        (fatal to the context), so it is a ValueError before any launch. Frames are copied
        instead (below): their bytes carry no alignment."""
        for dtype in (np.float32, np.float64):
            size = np.dtype(dtype).itemsize
            raw = np.zeros(8 * size + 1, np.uint8)
            odd = raw[1:].view(dtype)  # numpy allows the misaligned view; its address is odd

            class Tensorish:
                def __init__(self, array):
                    self._keep = array
                    self.__cuda_array_interface__ = dict(array.__array_interface__, version=3)

            with pytest.raises(ValueError, match="not aligned"):
                embzip.compress(Tensorish(odd), abs_error=1e-3)
            frame = embzip.compress(np.ones(8, dtype), abs_error=1e-3)
            with pytest.raises(ValueError, match="not aligned"):
                embzip.decompress(cuda.to_device(frame), out=Tensorish(odd))
            empty = raw[1:1].view(dtype)  # no elements: nothing is read, nothing to refuse
            assert embzip.inspect(embzip.compress(Tensorish(empty), abs_error=1e-3)).shape == (0,)

    def test_crc_tables_are_uploaded_per_device(monkeypatch):
        """A process that switches GPUs gets tables on each (one GPU's memory is an illegal
        address to another's kernels without peer access)."""
        from embzip.cuda import checksum

        class Device:
            def __init__(self, id):
                self.id = id

        monkeypatch.setattr(checksum, "_tables", {})
        current = [Device(0)]
        monkeypatch.setattr(checksum.cuda, "get_current_device", lambda: current[0])
        first = checksum.device_tables()
        assert checksum.device_tables() is first
        current[0] = Device(1)
        second = checksum.device_tables()
        assert second is not first and second[0] is not first[0]
        current[0] = Device(0)
        assert checksum.device_tables() is first

    @pytest.mark.parametrize("threads, ok", [("16", False), ("1", False), ("48", False), ("512", False),
                                             ("32", True), ("256", True)])
    def test_threads_per_block_must_be_a_power_of_two_of_at_least_a_warp(threads, ok):
        # below 32 the bit-packer's grid-stride step was 0 (a division by zero on a GPU)
        env = dict(os.environ, EMBZIP_CUDA_THREADS=threads)
        result = subprocess.run([sys.executable, "-c", "import embzip.cuda._launch"], env=env,
                                capture_output=True, text=True, timeout=120)
        assert (result.returncode == 0) == ok, result.stderr[-2000:]
        if not ok:
            assert "EMBZIP_CUDA_THREADS must be a power of two in 32..256" in result.stderr

    def test_misaligned_device_frame_and_corruption():
        x = np.random.default_rng(4).normal(size=(300,)).astype(np.float32)
        frame = embzip.compress(x, abs_error=1e-3, strategy="fast")
        padded = np.zeros(frame.size + 1, np.uint8)
        padded[1:] = frame
        dev = cuda.to_device(padded)[1:]  # starts at an odd address
        np.testing.assert_array_equal(embzip.decompress(dev).copy_to_host(), embzip.decompress(frame))
        broken = frame.copy()
        broken[-1] ^= 0x10
        with pytest.raises(embzip.CorruptFrameError, match="payload checksum"):
            embzip.decompress(cuda.to_device(broken))
        with pytest.raises(embzip.TruncatedFrameError):
            embzip.decompress(cuda.to_device(frame[:-1]))
        with pytest.raises(ValueError, match="device"):
            embzip.decompress(frame, device="tpu")

    def test_device_decode_rejects_inconsistent_sections():
        """Hostile frames decoded on the device raise the CPU's errors, never crash."""
        from embzip.format import parse_frame
        from embzip.format.header import finish_frame

        rng = np.random.default_rng(5)
        x = rng.normal(size=(20, 6)).astype(np.float32)
        x[3] = x[1]
        for strategy in ("fast", "compact"):
            frame = embzip.compress(x, abs_error=1e-2, strategy=strategy)
            header, _ = parse_frame(frame)
            for at in range(header.header_length, frame.size, 7):
                forged = frame.copy()
                forged[at] ^= 0x5A
                finish_frame(forged, header)  # a valid CRC over the forged payload
                try:
                    cpu = embzip.decompress(forged)
                except embzip.EmbzipError as exc:
                    cpu = (type(exc), str(exc))
                try:
                    gpu = embzip.decompress(cuda.to_device(forged)).copy_to_host()
                except embzip.EmbzipError as exc:
                    gpu = (type(exc), str(exc))
                # the same error, word for word: both backends read a section's head with
                # the same checked parsers (embzip.stages.rans._section)
                assert isinstance(cpu, tuple) == isinstance(gpu, tuple), f"{strategy}: byte {at}"
                if isinstance(cpu, tuple):
                    assert gpu == cpu, f"{strategy}: byte {at}"
                else:
                    np.testing.assert_array_equal(bits(gpu), bits(cpu))

    @pytest.mark.parametrize("elements", [2**45, 2**47])
    def test_a_frame_declaring_more_than_fits_is_the_cpus_error_on_the_device(elements):
        """A constant rANS section lets a 90-byte frame declare 2**47 elements; the device's
        allocation (of the output) failing is the frame's EmbzipError, word for word the CPU's.
        (2**45 float32 values, 128 TiB, is more than a process's address space: no host
        allocates it, whatever its memory and overcommit setting.)"""
        import hostile_frames

        frame = hostile_frames.declaring(elements)
        corrupt = bytearray(frame)
        corrupt[-1] ^= 0xFF  # its payload: with max_bytes the size is judged first on both,
        # without it the CRC (the CPU checks it before allocating; the device once it failed to)
        too_big, too_big_for_limit = (embzip.FrameTooLargeError, "more than can be allocated"), \
            (embzip.FrameTooLargeError, "more than max_bytes=1000")
        for data, limit, verify, (error, text) in (
                (frame, None, True, too_big), (frame, 1000, True, too_big_for_limit),
                (bytes(corrupt), 1000, True, too_big_for_limit),
                (bytes(corrupt), None, True, (embzip.CorruptFrameError, "payload checksum mismatch")),
                (bytes(corrupt), None, False, too_big)):
            errors = []
            for device in ("cpu", "cuda"):
                with pytest.raises(error, match=text) as caught:
                    embzip.decompress(data, device=device, max_bytes=limit, verify=verify)
                assert type(caught.value) is error
                errors.append(str(caught.value))
            assert errors[0] == errors[1]

    def test_only_an_out_of_memory_driver_error_becomes_the_frames_error(monkeypatch):
        """numba's allocator reports a full device as CudaAPIError(CUDA_ERROR_OUT_OF_MEMORY);
        any other driver error is not the frame's and propagates."""
        from numba.cuda.cudadrv.driver import CudaAPIError

        from embzip import _backend

        def fail_with(code):
            def fail(*args):
                exc = CudaAPIError("driver")
                exc.code = code
                raise exc
            return fail

        frame = embzip.compress(np.ones((4, 3), np.float32), abs_error=0.1)
        monkeypatch.setattr(_backend, "_decode", fail_with(_backend._CUDA_ERROR_OUT_OF_MEMORY))
        with pytest.raises(embzip.FrameTooLargeError, match=r"declares shape \(4, 3\).*more than can be allocated"):
            embzip.decompress(frame, device="cuda")
        monkeypatch.setattr(_backend, "_decode", fail_with(1))  # CUDA_ERROR_INVALID_VALUE
        with pytest.raises(CudaAPIError) as caught:
            embzip.decompress(frame, device="cuda")
        assert caught.value.code == 1
