"""The native residual add + RMS normalization kernel against float64 torch."""

import pytest
import torch

from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.rmsnorm import add_rms_norm, add_rms_norm_torch

pytestmark = pytest.mark.skipif(not native_available(), reason="no C compiler for the CPU kernels")


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 16), (2, 33), (1, 1, 512), (4, 3, 768), (0, 8)])
@pytest.mark.parametrize("with_b", [True, False])
def test_matches_float64_rms_norm(shape, with_b):
    torch.manual_seed(0)
    a = torch.randn(*shape) * 4 + 2
    b = torch.randn(*shape) if with_b else None
    weight = torch.randn(shape[-1])
    y = add_rms_norm(a, b, weight, 1e-6)
    expected = add_rms_norm_torch(a.double(), None if b is None else b.double(), weight.double(), 1e-6)
    assert y.shape == a.shape
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("shape", [(3, 5), (7, 16), (2, 33), (4, 3, 768)])
def test_total_output_is_the_sum(shape):
    torch.manual_seed(1)
    a, b, weight = torch.randn(*shape), torch.randn(*shape), torch.randn(shape[-1])
    y, total = add_rms_norm(a, b, weight, 1e-6, with_total=True)
    torch.testing.assert_close(total, a + b, rtol=0, atol=0)
    torch.testing.assert_close(y, add_rms_norm(a, b, weight, 1e-6), rtol=0, atol=0)


def test_zero_rows_give_zeros_through_epsilon():
    y = add_rms_norm(torch.zeros(2, 40), None, torch.ones(40), 1e-6)
    torch.testing.assert_close(y, torch.zeros(2, 40))
