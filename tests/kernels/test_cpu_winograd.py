"""Winograd F(4x4, 3x3) convolution against a float64 torch conv2d: odd channel counts and
sizes, every padding, the residual and ReLU epilogue, zero weights, and the AVX2 and portable
builds."""

import pytest
import torch
import torch.nn.functional as F

from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.cpu.winograd import WinogradConv3x3, pack_panels, supports, transform_weight
from tests.helpers import OTHER_INSTRUCTION_SETS, run_built_for

pytestmark = pytest.mark.skipif(not native_available(), reason="no C compiler for the native kernels")


def reference(x, weight, bias, pads, z=None, relu=False):
    top, left, bottom, right = pads
    y = F.conv2d(F.pad(x.double(), (left, right, top, bottom)), weight.double(),
                 None if bias is None else bias.double())
    if z is not None:
        y = y + z.double()
    return (torch.relu(y) if relu else y).float()


def assert_matches(actual, expected):
    assert actual.shape == expected.shape
    scale = max(float(expected.abs().max()), 1e-6)
    assert float((actual - expected).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("n, c, k, h, w, pads", [
    (1, 5, 7, 9, 11, (1, 1, 1, 1)),    # channels below one vector, out not a multiple of 4
    (2, 17, 33, 8, 8, (1, 1, 1, 1)),   # channels past one vector
    (1, 64, 64, 20, 20, (1, 1, 1, 1)),
    (1, 16, 20, 6, 5, (0, 0, 0, 0)),
    (3, 3, 4, 3, 3, (0, 0, 0, 0)),     # one output position
    (1, 8, 8, 1, 1, (1, 1, 1, 1)),     # one input position
    (2, 9, 6, 7, 10, (2, 0, 1, 3)),    # uneven pads
    (1, 6, 70, 70, 66, (1, 1, 1, 1)),  # 306 tiles: two row blocks of the products; outputs past two panels
    (1, 40, 96, 6, 6, (1, 1, 1, 1)),   # several full panels of outputs
])
def test_matches_conv2d(n, c, k, h, w, pads):
    g = torch.Generator().manual_seed(n * 100 + c)
    x = torch.randn(n, c, h, w, generator=g)
    weight, bias = torch.randn(k, c, 3, 3, generator=g) * 0.2, torch.randn(k, generator=g)
    conv = WinogradConv3x3(weight, pads)
    assert_matches(conv(x, bias), reference(x, weight, bias, pads))
    assert_matches(conv(x.contiguous(memory_format=torch.channels_last), None), reference(x, weight, None, pads))


@pytest.mark.parametrize("relu", [False, True])
def test_residual_and_relu(relu):
    g = torch.Generator().manual_seed(1)
    x, weight, bias = torch.randn(2, 24, 13, 13, generator=g), torch.randn(40, 24, 3, 3, generator=g), torch.randn(40)
    z = torch.randn(2, 40, 13, 13, generator=g)
    y = WinogradConv3x3(weight, (1, 1, 1, 1))(x, bias, z.contiguous(memory_format=torch.channels_last), relu)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_matches(y, reference(x, weight, bias, (1, 1, 1, 1), z, relu))
    if relu:
        assert float(y.min()) == 0.0


def test_zero_and_dense_weights():
    x = torch.randn(1, 32, 12, 12)
    bias = torch.randn(16)
    y = WinogradConv3x3(torch.zeros(16, 32, 3, 3), (1, 1, 1, 1))(x, bias)
    assert torch.equal(y, bias.view(1, 16, 1, 1).expand(1, 16, 12, 12))
    ones = torch.ones(16, 32, 3, 3)
    assert_matches(WinogradConv3x3(ones, (1, 1, 1, 1))(x), reference(x, ones, None, (1, 1, 1, 1)))


def test_weight_transform_layout():
    weight = torch.randn(6, 4, 3, 3)
    u = transform_weight(weight)
    assert u.shape == (36, 4, 6) and u.dtype == torch.float32
    # U[0] = (G g G^T)[0, 0] = g[0, 0] / 16: the corner tap, scaled
    assert torch.allclose(u[0], weight[:, :, 0, 0].T / 16)
    with pytest.raises(ValueError, match=r"expected a weight \[K, C, 3, 3\], got shape \[6, 4, 5, 5\]"):
        transform_weight(torch.randn(6, 4, 5, 5))


def test_panel_layout():
    u = torch.randn(36, 3, 37)
    panels = pack_panels(u)
    width = 2 * simd_width()
    assert panels.shape == (36, -(-37 // width), 3, width)
    assert torch.equal(panels[5, 1, 2, :3], u[5, 2, width:width + 3])
    assert panels[:, -1, :, 37 - (panels.shape[1] - 1) * width:].eq(0).all()


def test_bad_inputs_are_named():
    conv = WinogradConv3x3(torch.randn(8, 4, 3, 3), (0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"expected x float32 \[N, 4, H, W\] on cpu, got float32 \[1, 5, 6, 6\]"):
        conv(torch.randn(1, 5, 6, 6))
    with pytest.raises(ValueError, match=r"got float64 \[1, 4, 6, 6\]"):
        conv(torch.randn(1, 4, 6, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="does not fit the padded input 2x6"):
        conv(torch.randn(1, 4, 2, 6))


def test_supports():
    assert supports((8, 4, 3, 3), (1, 1), (1, 1), 1)
    assert not supports((8, 4, 3, 3), (2, 2), (1, 1), 1)
    assert not supports((8, 4, 3, 3), (1, 1), (2, 2), 1)
    assert not supports((8, 2, 3, 3), (1, 1), (1, 1), 2)
    assert not supports((8, 4, 5, 5), (1, 1), (1, 1), 1)
    assert not supports((8, 4, 3), (1,), (1,), 1)


OTHER_ISA_SCRIPT = r"""
import torch, torch.nn.functional as F
from sparse_rt.kernels.cpu.winograd import WinogradConv3x3
g = torch.Generator().manual_seed(0)
for n, c, k, h in ((1, 5, 7, 9), (2, 19, 21, 10)):
    x, w, b, z = torch.randn(n, c, h, h, generator=g), torch.randn(k, c, 3, 3, generator=g), torch.randn(k), torch.randn(n, k, h, h, generator=g)
    expected = torch.relu(F.conv2d(x.double(), w.double(), b.double(), padding=1) + z.double()).float()
    actual = WinogradConv3x3(w, (1, 1, 1, 1))(x, b, z, True)
    assert float((actual - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
print("ok")
"""


@pytest.mark.parametrize("arch, needs", OTHER_INSTRUCTION_SETS, ids=["avx2", "portable"])
def test_other_instruction_sets(arch, needs, tmp_path):
    run_built_for(arch, needs, OTHER_ISA_SCRIPT, tmp_path)
