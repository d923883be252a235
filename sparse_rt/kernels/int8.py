"""The arithmetic every int8 linear kernel implements, as plain torch (the tests' reference).

Activations are quantized per token (row of x), asymmetric, to 8 bits (u8 with a zero point,
as onnxruntime's dynamic quantization does, but per token instead of per tensor). With
lo = min(0, min x) and hi = max(0, max x), all in float32:

    inverse = 255 / (hi - lo)          scale = (hi - lo) / 255
    zero    = rint(-lo * inverse)      in [0, 255]
    q       = clamp(rint(x * inverse) + zero, 0, 255)

so x ~= (q - zero) * scale, and a row of one sign uses all 256 levels (the output of a GELU,
say, where a symmetric code would leave half of them unused). rint rounds half to even. The
product is exact in integers, then y = sum((q - zero) * w) * (scale * w_scale[r]) + b[r].
A row with NaN or Inf has scale NaN (its outputs are NaN); an all-zero row has scale 0, zero
point 0 and outputs equal to the bias.
"""

from __future__ import annotations

import torch

ACTIVATION_LEVELS = 255


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x float32 [rows, in] -> (q int32 [rows, in] in [0, 255], scales float32 [rows],
    zero points int32 [rows])."""
    x = x.to(torch.float32)
    finite = torch.isfinite(x).all(dim=1)
    safe = torch.where(finite[:, None], x, torch.zeros(()))
    if x.shape[1]:
        lo, hi = safe.amin(dim=1).clamp(max=0.0), safe.amax(dim=1).clamp(min=0.0)
    else:
        lo = hi = torch.zeros(x.shape[0])
    span = hi - lo
    inverse = torch.where(span > 0, torch.tensor(float(ACTIVATION_LEVELS)) / torch.where(span > 0, span, 1.0),
                          torch.zeros(()))
    zero = torch.round(-lo * inverse)
    scaled = torch.round(torch.nan_to_num(x * inverse[:, None], nan=0.0, posinf=0.0, neginf=0.0))
    q = (scaled + zero[:, None]).clamp(0, ACTIVATION_LEVELS).to(torch.int32)
    scales = torch.where(finite, span / ACTIVATION_LEVELS, torch.full((), float("nan")))
    return q, scales, zero.to(torch.int32)


def int8_linear_reference(x: torch.Tensor, q_weight: torch.Tensor, w_scales: torch.Tensor,
                          bias: torch.Tensor | None) -> torch.Tensor:
    """x float32 [..., in], q_weight int8 [out, in], w_scales [out], bias [out] or None -> y [..., out]:
    the exact int64 product of the quantized operands, dequantized."""
    rows = x.reshape(-1, x.shape[-1])
    q, scales, zeros = quantize_activations(rows)
    acc = (q - zeros[:, None]).to(torch.int64) @ q_weight.to(torch.int64).T  # [rows, out], exact
    y = acc.to(torch.float64) * (scales.to(torch.float64)[:, None] * w_scales.to(torch.float64)[None, :])
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(torch.float32).reshape(*x.shape[:-1], q_weight.shape[0])
