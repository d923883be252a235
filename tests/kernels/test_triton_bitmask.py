"""Triton bitmask kernel against the dense product (interpreter on CPU, compiled on CUDA)."""

import os

import torch

# The kernels run compiled where CUDA is present, else under triton's interpreter; the
# variable must be set before triton is first imported (see sparse_rt.kernels.triton._launch).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from sparse_rt.formats import BitmaskFormat
from sparse_rt.kernels.registry import get_kernel, kernels_for
from sparse_rt.kernels.triton.bitmask import bind_bitmask, bitmask_linear_reference
from sparse_rt.kernels.triton.configs import bitmask_configs
from tests.formats.test_bitmask_format import two_of_four
from tests.helpers import assert_close, masked_weight

X_SHAPES = [(1,), (2,), (7,), (2, 3)]  # leading dims of x


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)


def _weight(case: str) -> torch.Tensor:
    if case == "2:4":
        return two_of_four(37, 53, seed=1)
    if case == "all_zero":
        return torch.zeros(9, 20)
    if case == "all_dense":
        return torch.randn(9, 20)
    if case == "one_input":
        return masked_weight(11, 1, 0.5, seed=2)
    if case == "one_output":
        return masked_weight(1, 70, 0.5, seed=3)
    weight = masked_weight(37, 53, 0.5, seed=4)
    weight[2] = 0  # an empty row
    return weight


CASES = ["half_odd", "2:4", "all_zero", "all_dense", "one_input", "one_output"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("pick", [0, -1], ids=["default_config", "last_config"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_bitmask_matches_dense(device, case, pick, with_bias):
    weight = _weight(case)
    out_features, in_features = weight.shape
    bias = torch.randn(out_features) if with_bias else None
    fmt = BitmaskFormat.from_dense(weight)
    linear = bind_bitmask(fmt, bias, bitmask_configs(fmt, device)[pick], device)
    for lead in X_SHAPES:
        x = torch.randn(*lead, in_features)
        expected = x @ weight.T + (0 if bias is None else bias)
        y = linear(x.to(device))
        assert y.shape == expected.shape and y.dtype == torch.float32
        assert_close(y.cpu(), expected, rtol=1e-5)


def test_bitmask_non_contiguous_input(device):
    weight = masked_weight(20, 33, 0.5, seed=5)
    fmt = BitmaskFormat.from_dense(weight)
    x = torch.randn(33, 4).T
    y = bind_bitmask(fmt, None, bitmask_configs(fmt, device)[0], device)(x.to(device))
    assert_close(y.cpu(), x @ weight.T, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bitmask_half_precision_on_cuda(device, dtype):
    if device.type != "cuda":
        pytest.skip("half precision is checked on CUDA only")
    weight = masked_weight(256, 384, 0.5, seed=6)
    fmt = BitmaskFormat.from_dense(weight)
    bias = torch.randn(256)
    for config in bitmask_configs(fmt, device)[:4]:
        linear = bind_bitmask(fmt, bias, config, device)
        for batch in (1, 17):
            x = torch.randn(batch, 384)
            y = linear(x.to(device, dtype))
            assert y.dtype == dtype
            assert_close(y.float().cpu(), x.to(dtype).float() @ weight.to(dtype).float().T + bias, rtol=2e-2)


def test_bitmask_configs_are_valid():
    fmt = BitmaskFormat.from_dense(masked_weight(37, 53, 0.5, seed=7))
    configs = bitmask_configs(fmt, torch.device("cpu"))
    assert len(configs) > 1 and all(config["BLOCK_K"] % 8 == 0 for config in configs)
    with pytest.raises(ValueError, match=r"BitmaskOptions: expected BLOCK_K a power of two in \[8, 1024\], got 4"):
        bind_bitmask(fmt, None, {**configs[0], "BLOCK_K": 4}, torch.device("cpu"))


def test_bitmask_reference_matches_dense():
    weight = masked_weight(37, 53, 0.3, seed=8)
    bias = torch.randn(37)
    x = torch.randn(2, 3, 53)
    assert_close(bitmask_linear_reference(x, BitmaskFormat.from_dense(weight), bias), x @ weight.T + bias, rtol=1e-5)


def test_bitmask_kernel_is_registered(monkeypatch):
    monkeypatch.setenv("SPARSE_RT_BACKEND", "triton")
    fmt = BitmaskFormat.from_dense(masked_weight(37, 53, 0.5, seed=9))
    assert get_kernel("bitmask_triton_expand") in kernels_for(fmt, "cpu")
