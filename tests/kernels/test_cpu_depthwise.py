"""Depthwise conv (one filter per channel) against a float64 torch conv2d: kernels 3x3 and
others, strides, dilations, uneven pads, odd channel counts, the epilogue (bias, residual,
ReLU, clip), zero weights, and the AVX2 and portable builds."""

import pytest
import torch
import torch.nn.functional as F

from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.depthwise import DepthwiseConv2d, supports
from tests.helpers import OTHER_INSTRUCTION_SETS, run_built_for

pytestmark = pytest.mark.skipif(not native_available(), reason="no C compiler for the native kernels")


def reference(x, weight, bias, strides, dilations, pads, z=None, activation=None, bounds=None):
    top, left, bottom, right = pads
    y = F.conv2d(F.pad(x.double(), (left, right, top, bottom)), weight.double(),
                 None if bias is None else bias.double(), strides, 0, dilations, x.shape[1])
    if z is not None:
        y = y + z.double()
    if activation == "relu":
        y = torch.relu(y)
    elif activation == "clip":
        y = y.clamp(*bounds)
    return y.float()


def assert_matches(actual, expected):
    assert actual.shape == expected.shape
    assert actual.is_contiguous(memory_format=torch.channels_last)
    scale = max(float(expected.abs().max()), 1e-6)
    assert float((actual - expected).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("c, h, w, kernel, strides, dilations, pads", [
    (32, 12, 12, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    (19, 9, 11, (3, 3), (2, 2), (1, 1), (0, 0, 1, 1)),    # odd channels, TensorFlow-style SAME
    (48, 8, 8, (3, 3), (1, 1), (2, 2), (2, 2, 2, 2)),     # dilated
    (20, 10, 7, (5, 5), (2, 1), (1, 1), (2, 1, 2, 3)),    # 5x5, uneven everything
    (7, 6, 6, (1, 3), (1, 1), (1, 1), (0, 1, 0, 1)),      # below one vector
    (16, 1, 1, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),     # one position: only the centre tap
])
def test_matches_conv2d(c, h, w, kernel, strides, dilations, pads):
    g = torch.Generator().manual_seed(c)
    x, weight, bias = torch.randn(2, c, h, w, generator=g), torch.randn(c, 1, *kernel, generator=g), torch.randn(c)
    conv = DepthwiseConv2d(weight, strides, dilations, pads)
    assert_matches(conv(x, bias), reference(x, weight, bias, strides, dilations, pads))
    assert_matches(conv(x.contiguous(memory_format=torch.channels_last)), reference(x, weight, None, strides, dilations, pads))


@pytest.mark.parametrize("activation, bounds", [(None, None), ("relu", None), ("clip", (0.0, 6.0)), ("clip", (-1.0, 0.5))])
def test_residual_and_activation(activation, bounds):
    g = torch.Generator().manual_seed(3)
    x, weight, bias = torch.randn(1, 40, 9, 9, generator=g) * 4, torch.randn(40, 1, 3, 3, generator=g), torch.randn(40)
    z = torch.randn(1, 40, 9, 9, generator=g)
    y = DepthwiseConv2d(weight, (1, 1), (1, 1), (1, 1, 1, 1))(x, bias, z, activation, bounds)
    assert_matches(y, reference(x, weight, bias, (1, 1), (1, 1), (1, 1, 1, 1), z, activation, bounds))


def test_zero_weights_give_the_bias():
    bias = torch.randn(24)
    y = DepthwiseConv2d(torch.zeros(24, 1, 3, 3), (2, 2), (1, 1), (1, 1, 1, 1))(torch.randn(2, 24, 8, 8), bias)
    assert torch.equal(y, bias.view(1, 24, 1, 1).expand(2, 24, 4, 4))


def test_bad_inputs_are_named():
    conv = DepthwiseConv2d(torch.randn(8, 1, 3, 3), (1, 1), (1, 1), (0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"expected x float32 \[N, 8, H, W\] on cpu, got float32 \[1, 4, 6, 6\]"):
        conv(torch.randn(1, 4, 6, 6))
    with pytest.raises(ValueError, match=r"does not fit the padded input of 2x6"):
        conv(torch.randn(1, 8, 2, 6))
    with pytest.raises(ValueError, match=r"expected a weight \[C, 1, kh, kw\], got shape \[8, 2, 3, 3\]"):
        DepthwiseConv2d(torch.randn(8, 2, 3, 3), (1, 1), (1, 1), (0, 0, 0, 0))


def test_supports():
    assert supports((8, 1, 3, 3), 8)
    assert not supports((16, 1, 3, 3), 8)  # two filters per channel
    assert not supports((8, 2, 3, 3), 4)
    assert not supports((8, 8, 3, 3), 1)
    assert not supports((8, 1, 7, 7), 8)  # left to oneDNN


OTHER_ISA_SCRIPT = r"""
import torch, torch.nn.functional as F
from sparse_rt.kernels.cpu.depthwise import DepthwiseConv2d
g = torch.Generator().manual_seed(0)
for c, h, stride, pads in ((5, 9, 1, (1, 1, 1, 1)), (37, 10, 2, (0, 0, 1, 1))):
    x, w, b = torch.randn(2, c, h, h, generator=g), torch.randn(c, 1, 3, 3, generator=g), torch.randn(c)
    top, left, bottom, right = pads
    expected = F.conv2d(F.pad(x.double(), (left, right, top, bottom)), w.double(), b.double(), stride, 0, 1, c).clamp(0, 6).float()
    actual = DepthwiseConv2d(w, (stride, stride), (1, 1), pads)(x, b, None, "clip", (0.0, 6.0))
    assert float((actual - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
print("ok")
"""


@pytest.mark.parametrize("arch, needs", OTHER_INSTRUCTION_SETS, ids=["avx2", "portable"])
def test_other_instruction_sets(arch, needs, tmp_path):
    run_built_for(arch, needs, OTHER_ISA_SCRIPT, tmp_path)
