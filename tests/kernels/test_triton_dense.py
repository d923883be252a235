"""The dense (torch / cuBLAS) baseline of the Triton backend."""

import os

import torch

# The kernels run compiled where CUDA is present, else under triton's interpreter; the
# variable must be set before triton is first imported (see sparse_rt.kernels.triton._launch).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from sparse_rt.formats import DenseFormat
from sparse_rt.kernels.registry import get_kernel, kernels_for
from sparse_rt.kernels.triton.configs import dense_configs
from sparse_rt.kernels.triton.dense import bind_dense, dense_linear_reference
from tests.helpers import assert_close


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_dense_matches_matmul(device, layout, with_bias):
    weight = torch.randn(37, 53)
    bias = torch.randn(37) if with_bias else None
    fmt = DenseFormat.from_dense(weight)
    assert {"layout": layout} in dense_configs(fmt, device)
    linear = bind_dense(fmt, bias, {"layout": layout}, device)
    for lead in [(), (1,), (5,), (2, 3)]:
        x = torch.randn(*lead, 53)
        y = linear(x.to(device))
        expected = x @ weight.T + (0 if bias is None else bias)
        assert y.shape == expected.shape
        assert_close(y.cpu(), expected, rtol=1e-5)
        assert_close(dense_linear_reference(x, fmt, bias), expected, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dense_half_precision_on_cuda(device, dtype):
    if device.type != "cuda":
        pytest.skip("half precision is checked on CUDA only")
    weight = torch.randn(256, 384)
    x = torch.randn(17, 384)
    y = bind_dense(DenseFormat.from_dense(weight), None, {"layout": "in_out"}, device)(x.to(device, dtype))
    assert y.dtype == dtype
    assert_close(y.float().cpu(), x.to(dtype).float() @ weight.to(dtype).float().T, rtol=2e-2)


def test_dense_kernel_is_registered(monkeypatch):
    monkeypatch.setenv("SPARSE_RT_BACKEND", "triton")
    fmt = DenseFormat.from_dense(torch.randn(4, 3))
    assert get_kernel("dense_triton_cublas") in kernels_for(fmt, "cpu")
    with pytest.raises(ValueError, match="DenseOptions: expected layout 'out_in' or 'in_out', got 'nt'"):
        bind_dense(fmt, None, {"layout": "nt"}, torch.device("cpu"))
