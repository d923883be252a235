"""Winograd F(4x4, 3x3) convolution: a 3x3, stride-1, ungrouped conv in 4x fewer
multiplies than the direct one.

Each 4x4 output tile comes from the 6x6 input tile under it; the weight is transformed once
to U [36, C, K] (`transform_weight`) and packed into the dense kernel's panels
(`pack_panels`); each call transforms x's tiles to V [36, tiles, C], multiplies
M = V @ U [36, tiles, K] with the dense kernel's register tiles and transforms M back to the
output (all three in C, `_winograd_native`). At batch 1 and 14x14x256, two threads, the
products take 0.72 ms with U read from memory, against 1.20 ms in torch.bmm. At 7x7x512,
U (four times the weight's size, 36 MiB) streams from memory on every call. The tuner weighs
Winograd against the direct convolution per conv (`sparse_rt.converters.conv_algorithms`).

Rounding: the transforms scale values by up to 8 (B^T, A^T) and 1/24 (G), so outputs
differ from the direct convolution's by a few float32 ulps times the channel count more;
the tests hold it to 1e-5 relative to the output's scale.
"""

from __future__ import annotations

import torch

from sparse_rt.kernels.cpu._launch import channels_last_operands, pointer, threads
from sparse_rt.kernels.cpu._winograd_native import winograd_input, winograd_output, winograd_product
from sparse_rt.kernels.cpu.configs import simd_width, tile_rows

TILE = 4  # output rows and columns per tile
ALPHA = TILE + 2  # input rows and columns per tile
# panels of outputs a product task computes: 2 ran 2-7% faster than 1 on ResNet-50's 3x3 convs
PANELS_PER_TASK = 2

_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)


def supports(weight_shape, strides, dilations, group: int) -> bool:
    """Whether a conv of weight [K, C, kh, kw] with these strides, dilations and groups is one
    this kernel computes: 3x3, stride 1, dilation 1, one group."""
    return (len(weight_shape) == 4 and tuple(weight_shape[2:]) == (3, 3) and group == 1
            and all(int(s) == 1 for s in strides) and all(int(d) == 1 for d in dilations))


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """weight [K, C, 3, 3] -> U [36, C, K] float32, U[i * 6 + j, c, k] = (G g G^T)[i, j] of
    g = weight[k, c] (computed in float64)."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd: expected a weight [K, C, 3, 3], got shape {list(weight.shape)}")
    g = weight.detach().to(device="cpu", dtype=torch.float64)
    u = torch.einsum("ia,kcab,jb->ijck", _G, g, _G)
    return u.reshape(ALPHA * ALPHA, weight.shape[1], weight.shape[0]).to(torch.float32).contiguous()


def pack_panels(u: torch.Tensor) -> torch.Tensor:
    """U [36, C, K] -> panels [36, ceil(K / NR), C, NR] (NR = 2 * SIMD width), panels[i, p, c, j]
    = U[i, c, p * NR + j], zeros past K: the layout `winograd_product` reads."""
    positions, c, k = u.shape
    width = 2 * simd_width()
    count = -(-k // width)
    padded = torch.zeros(positions, c, count * width, dtype=torch.float32)
    padded[:, :, :k] = u
    return padded.view(positions, c, count, width).permute(0, 2, 1, 3).contiguous()


class WinogradConv3x3:
    """x [N, C, H, W] (any memory format, float32, cpu) -> conv3x3(x) + bias (+ z), then ReLU
    when asked: [N, K, out_h, out_w] in channels-last memory, out_h = H + pad_top + pad_bottom
    - 2 (likewise out_w). weight [K, C, 3, 3]; pads (top, left, bottom, right); z, the
    residual: the output's shape."""

    def __init__(self, weight: torch.Tensor, pads: tuple[int, int, int, int]) -> None:
        self.panels = pack_panels(transform_weight(weight))
        self.out_channels, self.in_channels = int(weight.shape[0]), int(weight.shape[1])
        self.pads = tuple(int(p) for p in pads)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None, z: torch.Tensor | None = None,
                 relu: bool = False) -> torch.Tensor:
        rows, bias, z = channels_last_operands(x, self.in_channels, bias, z, "winograd conv")
        n, h, w, c = rows.shape
        top, left, bottom, right = self.pads
        out_h, out_w = h + top + bottom - 2, w + left + right - 2
        if out_h < 1 or out_w < 1:
            raise ValueError(f"winograd conv: a 3x3 kernel does not fit the padded input {h + top + bottom}x"
                             f"{w + left + right}")
        tiles_h, tiles_w = -(-out_h // TILE), -(-out_w // TILE)
        k = self.out_channels
        y = torch.empty(n, out_h, out_w, k)
        tiles = n * tiles_h * tiles_w
        v = torch.empty(ALPHA * ALPHA, tiles, c)
        winograd_input()(threads(), pointer(rows), pointer(v), n, h, w, c, tiles_h, tiles_w, top, left)
        m = torch.empty(ALPHA * ALPHA, tiles, k)
        winograd_product()(threads(), pointer(v), pointer(self.panels), pointer(m), tiles, c, k, PANELS_PER_TASK,
                           tile_rows())
        winograd_output()(threads(), pointer(m), pointer(bias), pointer(z), pointer(y), n, out_h, out_w, k,
                          tiles_h, tiles_w, int(relu))
        return y.permute(0, 3, 1, 2)
