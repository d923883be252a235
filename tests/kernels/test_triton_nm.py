"""Triton N:M kernel against the masked dense product (interpreter on CPU, compiled on CUDA)."""

import os

import torch

# The kernels run compiled where CUDA is present, else under triton's interpreter; the
# variable must be set before triton is first imported (see sparse_rt.kernels.triton._launch).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from sparse_rt.formats import NmFormat
from sparse_rt.kernels.registry import get_kernel, kernels_for
from sparse_rt.kernels.triton.configs import nm_configs
from sparse_rt.kernels.triton.nm import bind_nm, nm_linear_reference
from tests.helpers import assert_close

X_SHAPES = [(1,), (5,), (2, 3)]  # leading dims of x


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)


def _n_of_m(shape: tuple[int, int], n: int, m: int, seed: int) -> torch.Tensor:
    """Exactly n random nonzeros per group of m (last group ragged), row 2 empty."""
    generator = torch.Generator().manual_seed(seed)
    out_features, in_features = shape
    groups = -(-in_features // m)
    kept = torch.rand(out_features, groups, m, generator=generator).argsort(-1)[..., :n]
    mask = torch.zeros(out_features, groups, m, dtype=torch.bool).scatter_(-1, kept, True)
    weight = torch.randn(out_features, groups * m, generator=generator) * mask.reshape(out_features, -1)
    weight[2] = 0
    return weight[:, :in_features].contiguous()


CASES = {
    "2:4_odd": ((37, 53), 2, 4),
    "1:4": ((64, 48), 1, 4),
    "3:8_odd": ((37, 53), 3, 8),
    "2:4_all_zero": ((37, 53), 0, 4),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("pick", [0, -1], ids=["default_config", "last_config"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_nm_matches_dense(device, case, pick, with_bias):
    shape, n, m = CASES[case]
    weight = _n_of_m(shape, n, m, seed=len(case))
    bias = torch.randn(shape[0]) if with_bias else None
    fmt = NmFormat.from_dense(weight, n=max(n, 2), m=m)
    linear = bind_nm(fmt, bias, nm_configs(fmt, device)[pick], device)
    for lead in X_SHAPES:
        x = torch.randn(*lead, shape[1])
        expected = x @ weight.T + (0 if bias is None else bias)
        y = linear(x.to(device))
        assert y.shape == expected.shape and y.dtype == torch.float32
        assert_close(y.cpu(), expected, rtol=1e-5)


def test_nm_one_dimensional_input(device):
    weight = _n_of_m((37, 53), 2, 4, seed=1)
    fmt = NmFormat.from_dense(weight, n=2, m=4)
    x = torch.randn(53)
    y = bind_nm(fmt, None, nm_configs(fmt, device)[0], device)(x.to(device))
    assert y.shape == (37,)
    assert_close(y.cpu(), weight @ x, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nm_half_precision_on_cuda(device, dtype):
    if device.type != "cuda":
        pytest.skip("half precision is checked on CUDA only")
    weight = _n_of_m((256, 384), 2, 4, seed=2)
    fmt = NmFormat.from_dense(weight, n=2, m=4)
    bias = torch.randn(256)
    for config in nm_configs(fmt, device)[:4]:
        linear = bind_nm(fmt, bias, config, device)
        for batch in (1, 17):
            x = torch.randn(batch, 384)
            y = linear(x.to(device, dtype))
            assert y.dtype == dtype
            assert_close(y.float().cpu(), x.to(dtype).float() @ weight.to(dtype).float().T + bias, rtol=2e-2)


def test_nm_reference_matches_dense():
    weight = _n_of_m((37, 53), 3, 8, seed=3)
    bias = torch.randn(37)
    x = torch.randn(2, 3, 53)
    assert_close(nm_linear_reference(x, NmFormat.from_dense(weight, n=3, m=8), bias), x @ weight.T + bias, rtol=1e-5)


def test_nm_kernel_is_registered(monkeypatch):
    monkeypatch.setenv("SPARSE_RT_BACKEND", "triton")
    fmt = NmFormat.from_dense(_n_of_m((37, 53), 2, 4, seed=4), n=2, m=4)
    assert get_kernel("nm_triton_gather") in kernels_for(fmt, "cpu")
