"""Triton permuted-block kernels (fused and staged) against the dense weight (interpreter on CPU, compiled on CUDA)."""

import os

import torch

# The kernels run compiled where CUDA is present, else under triton's interpreter; the
# variable must be set before triton is first imported (see sparse_rt.kernels.triton._launch).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from sparse_rt.formats import PermutedFormat
from sparse_rt.formats.base import narrowest_index_dtype
from sparse_rt.kernels.registry import get_kernel, kernels_for
from sparse_rt.kernels.triton.configs import MAX_GATHER_WIDTH, permuted_configs
from sparse_rt.kernels.triton.permuted import (
    bind_permuted,
    pack_permuted,
    permuted_linear_reference,
)
from tests.helpers import assert_close

X_SHAPES = [(1,), (5,), (2, 3)]  # leading dims of x


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)


def _permuted(in_features: int, out_features: int, n: int, layers: int, seed: int) -> PermutedFormat:
    generator = torch.Generator().manual_seed(seed)
    permutations = torch.stack([torch.randperm(n, generator=generator) for _ in range(layers)] or [torch.arange(n)])
    return PermutedFormat(
        in_features=in_features,
        out_features=out_features,
        permutations=permutations[:layers].to(narrowest_index_dtype(n - 1)),
        blocks=torch.randn(layers, n // 2, 2, 2, generator=generator),
    )


CASES = {
    "53_to_37_n54": (53, 37, 54, 3),  # n not a power of two: padded to 64
    "48_to_64": (48, 64, 64, 2),
    "5_to_7_n10": (5, 7, 10, 4),
    "3_to_2_no_layers": (3, 2, 4, 0),
}


def _schedules(fmt: PermutedFormat, device: torch.device) -> dict[str, dict]:
    configs = permuted_configs(fmt, device)
    staged = [c for c in configs if c["schedule"] == "staged"]
    return {"fused_default": configs[0], "staged_default": staged[0], "staged_last": staged[-1]}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("schedule", ["fused_default", "staged_default", "staged_last"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_permuted_matches_dense(device, case, schedule, with_bias):
    in_features, out_features, n, layers = CASES[case]
    fmt = _permuted(in_features, out_features, n, layers, seed=len(case))
    weight = fmt.to_dense()
    bias = torch.randn(out_features) if with_bias else None
    linear = bind_permuted(fmt, bias, _schedules(fmt, device)[schedule], device)
    for lead in X_SHAPES:
        x = torch.randn(*lead, in_features)
        expected = x @ weight.T + (0 if bias is None else bias)
        y = linear(x.to(device))
        assert y.shape == expected.shape and y.dtype == torch.float32
        assert_close(y.cpu(), expected, rtol=1e-5)


def test_permuted_fused_holds_several_rows_per_program(device):
    fmt = _permuted(53, 37, 54, 3, seed=1)
    config = {"schedule": "fused", "BLOCK_M": 4, "num_warps": 2}
    assert config in permuted_configs(fmt, device)
    x = torch.randn(7, 53)
    y = bind_permuted(fmt, None, config, device)(x.to(device))
    assert_close(y.cpu(), x @ fmt.to_dense().T, rtol=1e-5)


def test_permuted_zero_blocks_and_one_dimensional_input(device):
    fmt = _permuted(53, 37, 54, 3, seed=2)
    fmt.blocks.zero_()
    bias = torch.randn(37)
    for config in _schedules(fmt, device).values():
        y = bind_permuted(fmt, bias, config, device)(torch.randn(53).to(device))
        assert y.shape == (37,)
        assert_close(y.cpu(), bias, rtol=0)


def test_permuted_packing_pads_with_identity_and_zero_blocks():
    fmt = _permuted(53, 37, 54, 3, seed=3)
    packed = pack_permuted(fmt, None, torch.device("cpu"))
    assert packed.permutations.shape == (3, 64) and packed.blocks.shape == (3, 4, 32)
    assert packed.permutations[:, 54:].tolist() == [list(range(54, 64))] * 3
    assert bool((packed.permutations[:, :54] == fmt.permutations).all())
    assert not packed.blocks[:, :, 27:].any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_permuted_half_precision_on_cuda(device, dtype):
    if device.type != "cuda":
        pytest.skip("half precision is checked on CUDA only")
    fmt = _permuted(1000, 1024, 1024, 4, seed=4)
    fmt.blocks.mul_(0.7)  # keeps |W x| near |x| through the layers
    weight = fmt.to_dense()
    for config in _schedules(fmt, device).values():
        linear = bind_permuted(fmt, None, config, device)
        for batch in (1, 17):
            x = torch.randn(batch, 1000)
            y = linear(x.to(device, dtype))
            assert y.dtype == dtype
            assert_close(y.float().cpu(), x.to(dtype).float() @ weight.T, rtol=2e-2)


def test_permuted_wide_layers_are_staged_only():
    wide = _permuted(2 * MAX_GATHER_WIDTH, 2 * MAX_GATHER_WIDTH, 2 * MAX_GATHER_WIDTH, 1, seed=5)
    assert {c["schedule"] for c in permuted_configs(wide, torch.device("cuda"))} == {"staged"}


def test_permuted_reference_matches_dense():
    fmt = _permuted(53, 37, 54, 3, seed=6)
    bias = torch.randn(37)
    x = torch.randn(2, 3, 53)
    assert_close(permuted_linear_reference(x, fmt, bias), x @ fmt.to_dense().T + bias, rtol=1e-5)


def test_permuted_kernel_is_registered(monkeypatch):
    monkeypatch.setenv("SPARSE_RT_BACKEND", "triton")
    assert get_kernel("permuted_triton") in kernels_for(_permuted(53, 37, 54, 3, seed=7), "cpu")
