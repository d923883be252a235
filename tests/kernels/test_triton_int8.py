"""Triton int8 kernels (CSR, BSR 1x4 and dense) against the dense int32 reference (interpreter on CPU, compiled on CUDA)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from sparse_rt.formats import BsrInt8Format, CsrInt8Format, DenseInt8Format
from sparse_rt.kernels.int8 import int8_linear_reference, quantize_activations
from sparse_rt.kernels.registry import get_kernel
from sparse_rt.kernels.triton.int8 import quantize_rows
from tests.helpers import assert_close, masked_weight

FORMATS = {"csr_int8_triton": CsrInt8Format, "bsr_int8_triton": BsrInt8Format, "dense_int8_triton": DenseInt8Format}
X_SHAPES = [(1,), (2, 3)]  # the interpreter runs one program per row of W: few shapes


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> torch.device:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(request.param)


def _with_empty_rows() -> torch.Tensor:
    weight = masked_weight(17, 53, 0.3, seed=0)
    weight[[0, 3, 16]] = 0
    return weight


WEIGHTS = {
    "odd_with_empty_rows": _with_empty_rows,
    "all_zero": lambda: torch.zeros(9, 33),
    "all_dense": lambda: masked_weight(12, 40, 1.0, seed=2),
    "saturating": lambda: torch.ones(8, 64),
}


def _dense_q(fmt) -> torch.Tensor:
    return torch.round(fmt.to_dense() / torch.where(fmt.scales > 0, fmt.scales, 1.0)[:, None]).to(torch.int8)


CASES = [(name, 0) for name in sorted(WEIGHTS)] + [("all_dense", -1)]  # (weight, config: default or last)


@pytest.mark.parametrize("kernel_name", sorted(FORMATS))
@pytest.mark.parametrize("name, pick", CASES, ids=[f"{n}-{'default' if p == 0 else 'last'}" for n, p in CASES])
def test_int8_matches_the_int32_reference(device, kernel_name, name, pick):
    weight = WEIGHTS[name]()
    fmt = FORMATS[kernel_name].from_dense(weight)
    bias = torch.randn(weight.shape[0])
    kernel = get_kernel(kernel_name)
    linear = kernel.bind(fmt, bias, kernel.configs(fmt, device)[pick], device)
    for lead in X_SHAPES:
        x = torch.randn(*lead, weight.shape[1])
        if name == "saturating":
            x = torch.ones_like(x)
        expected = int8_linear_reference(x, _dense_q(fmt), fmt.scales, bias)
        y = linear(x.to(device))
        assert y.shape == (*lead, weight.shape[0])
        assert_close(y.cpu(), expected, rtol=2e-6)


def test_quantize_rows_matches_the_reference(device):
    x = torch.randn(6, 70)
    x[1] = 0.0
    x[2, 5] = float("nan")
    x[3, 0] = float("-inf")
    q, scales = quantize_rows(x.to(device))
    q_ref, scales_ref = quantize_activations(x)
    assert torch.equal(q.cpu().T.to(torch.int32)[[0, 1, 4, 5]], q_ref[[0, 1, 4, 5]])
    torch.testing.assert_close(scales.cpu(), scales_ref, equal_nan=True)
