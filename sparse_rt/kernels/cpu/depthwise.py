"""Depthwise 2-D convolution on the CPU: one filter per channel (group = channels, one output
channel each), as MobileNet's 3x3 convs are.

A C loop over channels-last tensors (`_depthwise_native`) with the bias, the residual and
ReLU or a clip in its epilogue, the padding read as zeros (uneven pads need no padded copy).
oneDNN's convolution spends about 30 us per call before it computes: on MobileNetV2's
depthwise convs with ReLU6, two threads, this kernel took 0.076 against 0.102 ms at
112x112x32, 0.024 against 0.042 at 14x14x384, 0.021 against 0.039 at 7x7x960, and 0.087
against 0.095 at 112x112x96 stride 2, where oneDNN also needs x padded first.
"""

from __future__ import annotations

import torch

from sparse_rt.kernels.cpu._depthwise_native import depthwise_conv
from sparse_rt.kernels.cpu._launch import channels_last_operands, pointer, threads

ACTIVATION_CODES = {None: 0, "relu": 1, "clip": 2}


def supports(weight_shape, group: int) -> bool:
    """Whether a conv of weight [K, C/group, kh, kw] with `group` groups is a 3x3 depthwise one (one
    input and one output channel per group), which the kernel runs with its taps in registers.
    Other kernels it runs tap by tap, slower than oneDNN: ConvNeXt's 7x7 took 0.74 against 0.19
    ms at 56x56x96 (they are left to oneDNN)."""
    return (len(weight_shape) == 4 and group > 1 and weight_shape[0] == group and weight_shape[1] == 1
            and tuple(weight_shape[2:]) == (3, 3))


class DepthwiseConv2d:
    """x [N, C, H, W] (float32, cpu, any memory format) -> activation(depthwise conv(x) + bias
    (+ z)) [N, C, out_h, out_w] in channels-last memory. weight [C, 1, kh, kw]; strides,
    dilations (sh, sw), (dh, dw); pads (top, left, bottom, right); z: the output's shape;
    activation None, "relu" or "clip" to bounds (lo, hi)."""

    def __init__(self, weight: torch.Tensor, strides, dilations, pads) -> None:
        if weight.dim() != 4 or weight.shape[1] != 1:
            raise ValueError(f"depthwise conv: expected a weight [C, 1, kh, kw], got shape {list(weight.shape)}")
        channels, _, kh, kw = weight.shape
        self.channels, self.kernel = int(channels), (int(kh), int(kw))
        self.taps = weight.detach().to(device="cpu", dtype=torch.float32).reshape(channels, kh * kw).t().contiguous()
        self.strides, self.dilations = tuple(int(s) for s in strides), tuple(int(d) for d in dilations)
        self.pads = tuple(int(p) for p in pads)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        top, left, bottom, right = self.pads
        return (h + top + bottom - dh * (kh - 1) - 1) // sh + 1, (w + left + right - dw * (kw - 1) - 1) // sw + 1

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None, z: torch.Tensor | None = None,
                 activation: str | None = None, bounds: tuple[float, float] | None = None) -> torch.Tensor:
        rows, bias, z = channels_last_operands(x, self.channels, bias, z, "depthwise conv")
        n, h, w, c = rows.shape
        out_h, out_w = self.output_size(h, w)
        if out_h < 1 or out_w < 1:
            raise ValueError(f"depthwise conv: a {self.kernel[0]}x{self.kernel[1]} kernel does not fit the padded "
                             f"input of {h}x{w} with pads {list(self.pads)}")
        y = torch.empty(n, out_h, out_w, c)
        lo, hi = bounds if activation == "clip" else (0.0, 0.0)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        depthwise_conv()(threads(), pointer(rows), pointer(self.taps), pointer(bias), pointer(z), pointer(y),
                         n, h, w, c, out_h, out_w, kh, kw, sh, sw, dh, dw, self.pads[0], self.pads[1],
                         ACTIVATION_CODES[activation], lo, hi)
        return y.permute(0, 3, 1, 2)
