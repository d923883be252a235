"""The native residual add + layer normalization kernel against float64 torch."""

import pytest
import torch
import torch.nn.functional as F

from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.layernorm import add_layer_norm

pytestmark = pytest.mark.skipif(not native_available(), reason="no C compiler for the CPU kernels")


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (7, 16), (2, 33), (4, 3, 768), (0, 8)])
@pytest.mark.parametrize("with_b", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_float64_layer_norm(shape, with_b, with_bias):
    torch.manual_seed(0)
    a = torch.randn(*shape) * 4 + 2
    b = torch.randn(*shape) if with_b else None
    scale, bias = torch.randn(shape[-1]), torch.randn(shape[-1]) if with_bias else None
    y = add_layer_norm(a, b, scale, bias, 1e-5)
    total = a.double() + (b.double() if with_b else 0)
    expected = F.layer_norm(total, shape[-1:], scale.double(), None if bias is None else bias.double(), 1e-5)
    assert y.shape == a.shape
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=2e-5)


def test_constant_rows_give_the_bias():
    a = torch.full((2, 40), 3.0)
    y = add_layer_norm(a, torch.ones(2, 40), torch.ones(40), torch.arange(40.0), 1e-12)
    torch.testing.assert_close(y, torch.arange(40.0).expand(2, 40))


@pytest.mark.parametrize("shape", [(3, 5), (7, 16), (2, 33), (4, 3, 768)])
def test_total_output_is_the_sum(shape):
    torch.manual_seed(1)
    a, b = torch.randn(*shape), torch.randn(*shape)
    scale, bias = torch.randn(shape[-1]), torch.randn(shape[-1])
    y, total = add_layer_norm(a, b, scale, bias, 1e-5, with_total=True)
    torch.testing.assert_close(total, a + b, rtol=0, atol=0)
    torch.testing.assert_close(y, add_layer_norm(a, b, scale, bias, 1e-5), rtol=0, atol=0)
