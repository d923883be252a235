"""The native tanh-form GELU against float64 torch."""

import pytest
import torch
import torch.nn.functional as F

from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.gelu_tanh import ELEMENTS_PER_TASK, gelu_tanh

pytestmark = pytest.mark.skipif(not native_available(), reason="no C compiler for the CPU kernels")


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (3, 33), (2, ELEMENTS_PER_TASK + 5)])
def test_matches_float64_gelu_tanh(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape) * 4
    y = gelu_tanh(x)
    expected = F.gelu(x.double(), approximate="tanh")
    assert y.shape == x.shape and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), expected, rtol=2e-6, atol=1e-6)


def test_extremes_saturate_without_overflow():
    x = torch.tensor([-1e30, -200.0, -60.0, -0.0, 0.0, 60.0, 200.0, 1e30])
    y = gelu_tanh(x)
    torch.testing.assert_close(y, torch.tensor([-0.0, -0.0, -0.0, -0.0, 0.0, 60.0, 200.0, 1e30]))
