"""The arithmetic every int8 linear kernel implements, as plain torch (the tests' reference).

Activations are quantized per token (row of x), symmetric, to 7 bits: scale = amax / 63,
q = clamp(round(x / scale), -63, 63) computed as round(x * (63 / amax)) in float32, as the
C kernels do. The product is exact in integers, then y = acc * (x_scale * w_scale[r]) + b.
A row with NaN or Inf has scale NaN (its outputs are NaN); an all-zero row has scale 0.
"""

from __future__ import annotations

import torch

ACTIVATION_QMAX = 63


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x float32 [rows, in] -> (q int32 [rows, in], scales float32 [rows])."""
    x = x.to(torch.float32)
    finite = torch.isfinite(x).all(dim=1)
    amax = torch.where(finite[:, None], x.abs(), torch.zeros(())).amax(dim=1) if x.shape[1] else torch.zeros(x.shape[0])
    inverse = torch.where(amax > 0, torch.tensor(float(ACTIVATION_QMAX)) / amax, torch.zeros(()))
    inverse = torch.where(finite, inverse, torch.zeros(()))
    scaled = torch.nan_to_num(x * inverse[:, None], nan=0.0)
    q = torch.round(scaled).clamp(-ACTIVATION_QMAX, ACTIVATION_QMAX).to(torch.int32)
    scales = torch.where(finite, amax / ACTIVATION_QMAX, torch.full((), float("nan")))
    return q, scales


def int8_linear_reference(x: torch.Tensor, q_weight: torch.Tensor, w_scales: torch.Tensor,
                          bias: torch.Tensor | None) -> torch.Tensor:
    """x float32 [..., in], q_weight int8 [out, in], w_scales [out], bias [out] or None -> y [..., out]:
    the exact int64 product of the quantized operands, dequantized."""
    rows = x.reshape(-1, x.shape[-1])
    q, scales = quantize_activations(rows)
    acc = q.to(torch.int64) @ q_weight.to(torch.int64).T  # [rows, out], exact
    y = acc.to(torch.float64) * (scales.to(torch.float64)[:, None] * w_scales.to(torch.float64)[None, :])
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(torch.float32).reshape(*x.shape[:-1], q_weight.shape[0])
