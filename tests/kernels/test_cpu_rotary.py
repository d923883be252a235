"""The native rotary embedding kernel against its torch reference."""

import pytest
import torch

from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.rotary import rotary, rotary_torch

pytestmark = pytest.mark.skipif(not native_available(), reason="no C compiler for the CPU kernels")


@pytest.mark.parametrize("shape", [(1, 8, 1, 64), (2, 3, 5, 40), (2, 2, 3, 6), (1, 1, 1, 2), (0, 2, 3, 8)])
@pytest.mark.parametrize("tables", ["per-sequence", "shared", "per-head", "one-angle-per-position", "lower-rank"])
def test_matches_reference_on_strided_heads(shape, tables):
    torch.manual_seed(0)
    batch, heads, length, width = shape
    x = torch.randn(batch, length, heads, width).transpose(1, 2)  # the exporter's head transpose: a view
    table_shape = {"per-sequence": (batch, 1, length, width), "shared": (1, 1, length, width),
                   "per-head": (batch, heads, length, width), "one-angle-per-position": (1, 1, length, 1),
                   "lower-rank": (length, width)}[tables]
    angles = torch.randn(*table_shape)
    y = rotary(x, angles.cos(), angles.sin())
    assert y.is_contiguous() and y.shape == x.shape
    torch.testing.assert_close(y, rotary_torch(x, angles.cos(), angles.sin()), rtol=1e-6, atol=1e-6)


def test_tables_that_would_widen_x_are_refused():
    with pytest.raises(ValueError, match="cos"):
        rotary(torch.randn(1, 2, 3, 4), torch.randn(2, 1, 3, 4), torch.randn(1, 1, 3, 4))
