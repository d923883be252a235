"""Im2Col: a convolution's input patches as rows, against F.unfold."""

import pytest
import torch
import torch.nn.functional as F

from sparse_rt.ops.im2col import im2col


def unfold_reference(x, kernel, strides, pads, dilations):
    """x [N, H, W, C] -> [N, H', W', kh * kw * C] through F.unfold (channel-major patches)."""
    top, left, bottom, right = pads
    nchw = F.pad(x.permute(0, 3, 1, 2), (left, right, top, bottom))
    cols = F.unfold(nchw, kernel, dilation=dilations, stride=strides)  # [N, C * kh * kw, L]
    n, c = x.shape[0], x.shape[3]
    out_h = (nchw.shape[2] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    out_w = (nchw.shape[3] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    cols = cols.reshape(n, c, kernel[0] * kernel[1], out_h, out_w)  # -> (taps, channels) per position
    return cols.permute(0, 3, 4, 2, 1).reshape(n, out_h, out_w, -1)


@pytest.mark.parametrize("kernel, strides, pads, dilations", [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    ((3, 2), (2, 1), (0, 1, 2, 0), (1, 2)),
    ((1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    ((5, 5), (3, 2), (2, 2, 2, 2), (2, 1)),
    ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
], ids=["3x3", "3x3 stride 2", "asymmetric", "1x1 stride 2", "5x5 dilated", "2x2 no pad"])
@pytest.mark.parametrize("layout", ["channels-last", "transposed NCHW"])
def test_im2col_matches_unfold(kernel, strides, pads, dilations, layout):
    if layout == "channels-last":
        x = torch.randn(2, 11, 13, 5)
    else:  # a permuted view of NCHW memory, as a Transpose of an NCHW value hands it over
        x = torch.randn(2, 5, 11, 13).permute(0, 2, 3, 1)
    y = im2col(x, kernel, strides, pads, dilations)
    assert y.is_contiguous()
    torch.testing.assert_close(y, unfold_reference(x, kernel, strides, pads, dilations), rtol=0, atol=0)


def test_im2col_of_an_empty_batch_is_empty():
    y = im2col(torch.randn(0, 6, 6, 4), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    assert y.shape == (0, 6, 6, 36)


@pytest.mark.parametrize("x, kernel, match", [
    (torch.randn(1, 2, 2, 3), (3, 3), "does not fit the padded input 2x2"),
    (torch.randn(2, 3, 4), (1, 1), r"expected x \[N, H, W, C\], got shape \[2, 3, 4\]"),
])
def test_im2col_errors_name_what_was_expected(x, kernel, match):
    with pytest.raises(ValueError, match=match):
        im2col(x, kernel)
