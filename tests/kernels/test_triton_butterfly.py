"""Triton butterfly kernels (fused and staged) against the dense weight (interpreter on CPU, compiled on CUDA)."""

import os

import torch

# The kernels run compiled where CUDA is present, else under triton's interpreter; the
# variable must be set before triton is first imported (see sparse_rt.kernels.triton._launch).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from sparse_rt.formats import ButterflyFormat
from sparse_rt.kernels.registry import get_kernel, kernels_for
from sparse_rt.kernels.triton.butterfly import (
    bind_butterfly,
    butterfly_linear_reference,
)
from sparse_rt.kernels.triton.configs import MAX_FUSED_WIDTH, butterfly_configs
from tests.helpers import assert_close

X_SHAPES = [(1,), (5,), (2, 3)]  # leading dims of x


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)


def _butterfly(in_features: int, out_features: int, stages: int, seed: int) -> ButterflyFormat:
    generator = torch.Generator().manual_seed(seed)
    twiddles = torch.randn(stages, 2**stages // 2, 2, 2, generator=generator)
    return ButterflyFormat(in_features=in_features, out_features=out_features, twiddles=twiddles)


CASES = {
    "53_to_37": (53, 37, 6),
    "48_to_64": (48, 64, 6),
    "5_to_7_wide": (5, 7, 4),  # n = 16 > max(in, out)
    "1_to_1_no_stages": (1, 1, 0),
}


def _schedules(fmt: ButterflyFormat, device: torch.device) -> dict[str, dict]:
    configs = butterfly_configs(fmt, device)
    staged = [c for c in configs if c["schedule"] == "staged"]
    return {"fused_default": configs[0], "staged_default": staged[0], "staged_last": staged[-1]}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("schedule", ["fused_default", "staged_default", "staged_last"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_butterfly_matches_dense(device, case, schedule, with_bias):
    in_features, out_features, stages = CASES[case]
    fmt = _butterfly(in_features, out_features, stages, seed=len(case))
    weight = fmt.to_dense()
    bias = torch.randn(out_features) if with_bias else None
    linear = bind_butterfly(fmt, bias, _schedules(fmt, device)[schedule], device)
    for lead in X_SHAPES:
        x = torch.randn(*lead, in_features)
        expected = x @ weight.T + (0 if bias is None else bias)
        y = linear(x.to(device))
        assert y.shape == expected.shape and y.dtype == torch.float32
        assert_close(y.cpu(), expected, rtol=1e-5)


def test_butterfly_fused_holds_several_rows_per_program(device):
    fmt = _butterfly(53, 37, 6, seed=1)
    config = {"schedule": "fused", "BLOCK_M": 4, "num_warps": 2}
    assert config in butterfly_configs(fmt, device)
    x = torch.randn(7, 53)
    y = bind_butterfly(fmt, None, config, device)(x.to(device))
    assert_close(y.cpu(), x @ fmt.to_dense().T, rtol=1e-5)


def test_butterfly_zero_twiddles_and_one_dimensional_input(device):
    fmt = ButterflyFormat(in_features=53, out_features=37, twiddles=torch.zeros(6, 32, 2, 2))
    bias = torch.randn(37)
    for config in _schedules(fmt, device).values():
        y = bind_butterfly(fmt, bias, config, device)(torch.randn(53).to(device))
        assert y.shape == (37,)
        assert_close(y.cpu(), bias, rtol=0)


def test_butterfly_from_a_dense_butterfly_matrix(device):
    square = _butterfly(16, 16, 4, seed=2).to_dense()
    fmt = ButterflyFormat.from_dense(square)
    x = torch.randn(5, 16)
    for config in _schedules(fmt, device).values():
        y = bind_butterfly(fmt, None, config, device)(x.to(device))
        assert_close(y.cpu(), x @ square.T, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_butterfly_half_precision_on_cuda(device, dtype):
    if device.type != "cuda":
        pytest.skip("half precision is checked on CUDA only")
    fmt = _butterfly(1000, 1024, 10, seed=3)
    fmt.twiddles.mul_(0.7)  # keeps |W x| near |x| through 10 stages
    weight = fmt.to_dense()
    for config in _schedules(fmt, device).values():
        linear = bind_butterfly(fmt, None, config, device)
        for batch in (1, 17):
            x = torch.randn(batch, 1000)
            y = linear(x.to(device, dtype))
            assert y.dtype == dtype
            assert_close(y.float().cpu(), x.to(dtype).float() @ weight.T, rtol=2e-2)


def test_butterfly_wide_layers_are_staged_only():
    stages = (2 * MAX_FUSED_WIDTH).bit_length() - 1
    wide = _butterfly(2 * MAX_FUSED_WIDTH, 2 * MAX_FUSED_WIDTH, stages, seed=0)
    assert {c["schedule"] for c in butterfly_configs(wide, torch.device("cuda"))} == {"staged"}


def test_butterfly_reference_matches_dense():
    fmt = _butterfly(53, 37, 6, seed=4)
    bias = torch.randn(37)
    x = torch.randn(2, 3, 53)
    assert_close(butterfly_linear_reference(x, fmt, bias), x @ fmt.to_dense().T + bias, rtol=1e-5)


def test_butterfly_kernel_is_registered(monkeypatch):
    monkeypatch.setenv("SPARSE_RT_BACKEND", "triton")
    assert get_kernel("butterfly_triton") in kernels_for(_butterfly(53, 37, 6, seed=5), "cpu")
