"""The native GELU kernel against float64 GELU, and the Gelu op's choice between it and torch."""

import pytest
import torch
import torch.nn.functional as F

from sparse_rt.ir.graph import SPARSE_DOMAIN, Node
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.gelu import NATIVE_LIMIT, gelu
from sparse_rt.ops.registry import BindContext, lookup

pytestmark = pytest.mark.skipif(not native_available(), reason="no C compiler for the CPU kernels")


def reference(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x.double())


def test_matches_float64_gelu_over_the_whole_range():
    x = torch.cat([torch.linspace(-15, 15, 300_001), torch.randn(10_000) * 4])
    error = (gelu(x).double() - reference(x)).abs()
    assert float(error.max()) < 5e-7
    positive = x > 0.01
    assert float((error[positive] / reference(x)[positive].abs()).max()) < 1e-6


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 3072, 4099])
def test_every_length_and_tail(n):
    x = torch.randn(n) * 3
    y = gelu(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert all(abs(a - b) < 5e-7 for a, b in zip(y.double().tolist(), reference(x).tolist()))


def test_special_values_and_non_contiguous_input():
    specials = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 50.0, -50.0, 1e30, -1e30])
    torch.testing.assert_close(gelu(specials), F.gelu(specials), rtol=1e-6, atol=1e-30)
    assert torch.isnan(gelu(torch.tensor([float("nan")]))).all()
    x = torch.randn(6, 8).T
    torch.testing.assert_close(gelu(x), F.gelu(x), rtol=1e-5, atol=5e-7)


@pytest.mark.parametrize("shape", [(1, 3072), (2, NATIVE_LIMIT)], ids=["native", "torch"])
def test_gelu_op_matches_torch_at_both_sizes(shape):
    node = Node("Gelu", ["x"], ["y"], {"approximate": "none"}, "gelu", SPARSE_DOMAIN)
    run = lookup("Gelu", SPARSE_DOMAIN, 17).bind(node, BindContext(device=torch.device("cpu"), opset=17,
                                                                  constants={}, options={}))
    x = torch.randn(*shape)
    torch.testing.assert_close(run(x).double(), reference(x), rtol=1e-5, atol=2e-6)  # torch: 1.3e-6 off
