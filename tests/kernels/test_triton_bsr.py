"""Triton BSR kernel against the masked dense product (interpreter on CPU, compiled on CUDA)."""

import os

import torch

# The kernels run compiled where CUDA is present, else under triton's interpreter; the
# variable must be set before triton is first imported (see sparse_rt.kernels.triton._launch).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from sparse_rt.formats import BsrFormat
from sparse_rt.kernels.registry import get_kernel, kernels_for
from sparse_rt.kernels.triton.bsr import bind_bsr, bsr_linear_reference, bsr_supports
from sparse_rt.kernels.triton.configs import bsr_configs
from tests.helpers import assert_close

X_SHAPES = [(1,), (5,), (3, 7)]  # leading dims of x: batch 1, 5 and 21 (two batch tiles of 16)


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)


def _block_sparse(shape: tuple[int, int], block_shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Random blocks kept with probability 1/2, block row 1 empty, ragged edges kept."""
    generator = torch.Generator().manual_seed(seed)
    (out_features, in_features), (r, c) = shape, block_shape
    grid = (-(-out_features // r), -(-in_features // c))
    keep = torch.rand(grid, generator=generator) < 0.5
    keep[1] = False
    keep[-1, -1] = True
    mask = keep.repeat_interleave(r, 0).repeat_interleave(c, 1)[:out_features, :in_features]
    return torch.randn(shape, generator=generator) * mask


CASES = {
    "16x16_odd": ((37, 53), (16, 16)),
    "32x16_odd": ((37, 53), (32, 16)),
    "16x32": ((64, 48), (16, 32)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("pick", [0, -1], ids=["default_config", "last_config"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_bsr_matches_dense(device, case, pick, with_bias):
    shape, block_shape = CASES[case]
    weight = _block_sparse(shape, block_shape, seed=len(case))
    bias = torch.randn(shape[0]) if with_bias else None
    fmt = BsrFormat.from_dense(weight, block_shape=block_shape)
    linear = bind_bsr(fmt, bias, bsr_configs(fmt, device)[pick], device)
    for lead in X_SHAPES:
        x = torch.randn(*lead, shape[1])
        expected = x @ weight.T + (0 if bias is None else bias)
        y = linear(x.to(device))
        assert y.shape == expected.shape and y.dtype == torch.float32
        assert_close(y.cpu(), expected, rtol=1e-5)


@pytest.mark.parametrize("split_k", [2, 4])
def test_bsr_split_k_adds_partial_sums(device, split_k):
    weight = _block_sparse((64, 48), (16, 16), seed=5)
    weight[:16] = torch.randn(16, 48)  # a block row of three blocks, split across programs
    bias = torch.randn(64)
    fmt = BsrFormat.from_dense(weight, block_shape=(16, 16))
    config = dict(bsr_configs(fmt, device)[0], SPLIT_K=split_k)
    x = torch.randn(5, 48)
    y = bind_bsr(fmt, bias, config, device)(x.to(device))
    assert_close(y.cpu(), x @ weight.T + bias, rtol=1e-5)


def test_bsr_all_zero_weight_and_one_dimensional_input(device):
    fmt = BsrFormat.from_dense(torch.zeros(37, 53), block_shape=(16, 16))
    bias = torch.randn(37)
    linear = bind_bsr(fmt, bias, bsr_configs(fmt, device)[0], device)
    y = linear(torch.randn(53).to(device))
    assert y.shape == (37,)
    assert_close(y.cpu(), bias, rtol=0)
    assert linear(torch.randn(0, 53).to(device)).shape == (0, 37)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_shape", [(16, 16), (64, 32), (128, 128)])
def test_bsr_half_precision_on_cuda(device, dtype, block_shape):
    if device.type != "cuda":
        pytest.skip("half precision is checked on CUDA only")
    weight = _block_sparse((512, 384), block_shape, seed=6)
    fmt = BsrFormat.from_dense(weight, block_shape=block_shape)
    bias = torch.randn(512)
    for config in bsr_configs(fmt, device)[:4]:
        linear = bind_bsr(fmt, bias, config, device)
        for batch in (1, 16, 100):
            x = torch.randn(batch, 384)
            y = linear(x.to(device, dtype))
            assert y.dtype == dtype
            assert_close(y.float().cpu(), x.to(dtype).float() @ weight.to(dtype).float().T + bias, rtol=2e-2)


def test_bsr_reference_matches_dense():
    weight = _block_sparse((37, 53), (16, 32), seed=7)
    bias = torch.randn(37)
    x = torch.randn(2, 3, 53)
    fmt = BsrFormat.from_dense(weight, block_shape=(16, 32))
    assert_close(bsr_linear_reference(x, fmt, bias), x @ weight.T + bias, rtol=1e-5)


def test_bsr_supports_only_tl_dot_block_sides(monkeypatch):
    monkeypatch.setenv("SPARSE_RT_BACKEND", "triton")
    weight = _block_sparse((64, 48), (16, 16), seed=8)
    kernel = get_kernel("bsr_triton_dot")
    assert kernel in kernels_for(BsrFormat.from_dense(weight, block_shape=(16, 16)), "cpu")
    small = BsrFormat.from_dense(weight, block_shape=(8, 16))
    assert not bsr_supports(small, torch.device("cpu"))
    assert kernel not in kernels_for(small, "cpu")
    with pytest.raises(ValueError, match=r"expected block sides in \[16, 32, 64, 128\], got block_shape \(8, 16\)"):
        bind_bsr(small, None, bsr_configs(small, torch.device("cpu"))[0], torch.device("cpu"))
