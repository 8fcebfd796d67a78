"""torch interop (embzip/_interop.py): CPU tensors in zero-copy, ``like=`` tensors out."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import embzip
from embzip import _interop

torch = pytest.importorskip("torch")


def test_import_embzip_does_not_import_torch():
    code = "import sys, embzip; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_tensor_round_trip_within_bound(dtype):
    t = torch.randn(256, 16, dtype=dtype, generator=torch.Generator().manual_seed(0))
    frame = embzip.compress(t, rel_error=0.01)
    # the same frame as from the numpy array: the tensor is read as it is, not converted
    assert np.array_equal(frame, embzip.compress(t.numpy(), rel_error=0.01))
    out = embzip.decompress(frame, like=t)
    assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == t.shape
    assert out.device == t.device
    bound = embzip.inspect(frame).abs_error
    assert (out.double() - t.double()).abs().max().item() <= bound


def test_tensor_requiring_grad_is_detached_not_refused():
    t = torch.randn(64, 8, requires_grad=True)
    frame = embzip.compress(t * 2, abs_error=1e-3)  # a non-leaf in a graph
    out = embzip.decompress(frame, like=t)
    assert not out.requires_grad
    assert (out - (t * 2).detach()).abs().max().item() <= 1e-3


def test_views_and_negated_views_compress():
    base = torch.randn(32, 16)
    for t in (base.t(), base[::2, 3:], -base, torch.randn(4, 4, dtype=torch.complex64).imag):
        out = embzip.decompress(embzip.compress(t, abs_error=1e-4), like=t)
        assert torch.allclose(out, t.contiguous(), atol=1e-4, rtol=0)


def test_as_numpy_is_zero_copy_and_to_like_shares_memory():
    t = torch.arange(6, dtype=torch.float32)
    a = _interop.as_numpy(t)
    assert a.ctypes.data == t.data_ptr()  # same memory: no copy on the way in
    back = _interop.to_like(a, t)
    assert back.data_ptr() == a.ctypes.data  # nor on the way out


def test_unsupported_tensor_dtypes_and_like_values_are_type_errors():
    with pytest.raises(TypeError):
        embzip.compress(torch.ones(4, dtype=torch.int32), abs_error=0.1)
    frame = embzip.compress(np.ones(4, np.float32), abs_error=0.1)
    with pytest.raises(TypeError, match="like must be a torch tensor"):
        embzip.decompress(frame, like=np.ones(4))


def test_non_tensors_are_not_taken_for_tensors():
    class Fake:  # has the methods, but not torch's module
        device = "cpu"

        def numpy(self):
            raise AssertionError("called")
    assert not _interop.is_tensor(Fake())
    assert _interop.is_tensor(torch.zeros(1))
