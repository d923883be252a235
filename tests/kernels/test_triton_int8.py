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


def _special_rows(in_features: int) -> tuple[torch.Tensor, list[int]]:
    """(x [8, in], its non-finite rows): rows mixed in sign, all zero, all positive, all negative,
    small, then rows holding a NaN, a -Inf and a +Inf."""
    x = torch.randn(8, in_features)
    x[1] = 0.0
    x[2] = x[2].abs() + 0.25
    x[3] = -x[3].abs() - 0.25
    x[4] *= 1e-3
    x[5, 5] = float("nan")
    x[6, 0] = float("-inf")
    x[7, 3] = float("inf")
    return x, [5, 6, 7]


@pytest.mark.parametrize("kernel_name", sorted(FORMATS))
def test_int8_matches_the_reference_on_special_rows(device, kernel_name):
    weight = _with_empty_rows()
    fmt = FORMATS[kernel_name].from_dense(weight)
    bias = torch.randn(weight.shape[0])
    kernel = get_kernel(kernel_name)
    linear = kernel.bind(fmt, bias, kernel.configs(fmt, device)[0], device)
    x, bad = _special_rows(weight.shape[1])
    expected = int8_linear_reference(x, _dense_q(fmt), fmt.scales, bias)
    y = linear(x.to(device)).cpu()
    assert torch.isnan(y[bad]).all() and torch.isnan(expected[bad]).all()
    good = [i for i in range(x.shape[0]) if i not in bad]
    assert_close(y[good], expected[good], rtol=2e-6)
    assert torch.equal(y[1], bias)


def test_quantize_rows_matches_the_reference(device):
    x, bad = _special_rows(70)
    ties = torch.zeros(3, 70)  # rows whose span is 255 (inverse 1): x * inverse and -lo * inverse tie
    ties[0, :4] = torch.tensor([0.5, 1.5, 2.5, 255.0])
    ties[1, :4] = torch.tensor([-0.5, -1.5, -2.5, -255.0])
    ties[2, :5] = torch.tensor([0.5, 1.5, -0.5, -127.5, 127.5])
    x = torch.cat([x, ties])
    q, scales, zeros = quantize_rows(x.to(device))
    q_ref, scales_ref, zeros_ref = quantize_activations(x)
    good = [i for i in range(x.shape[0]) if i not in bad]  # a non-finite row's q and zero point are free
    assert torch.equal(q.cpu().T.to(torch.int32)[good] + 128, q_ref[good])
    assert torch.equal(zeros.cpu()[good], zeros_ref[good])
    torch.testing.assert_close(scales.cpu(), scales_ref, rtol=0, atol=0, equal_nan=True)
    assert zeros_ref[-3:].tolist() == [0, 255, 128]
    assert q_ref[-3:, :5].tolist() == [[0, 2, 2, 255, 0], [255, 253, 253, 0, 255], [128, 130, 128, 0, 255]]
