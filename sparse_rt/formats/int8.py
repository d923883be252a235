"""Per-output-channel symmetric int8 quantization of weights, shared by the int8 formats.

A weight row r is stored as q[r] (int8 in [-127, 127]) and one float32 scale s[r] with
W[r] ~= q[r] * s[r]: s[r] = max |W[r]| / 127, q = round-to-nearest-even(W / s). An all-zero
row has scale 0 and q 0. Unlike the float formats, the int8 formats are lossy: `to_dense`
gives the dequantized weight q * s, not the weight they were made from.
"""

from __future__ import annotations

import torch

from sparse_rt.formats._checks import check_tensor
from sparse_rt.formats.base import as_dense_weight

QMAX = 127


def quantize_per_channel(weight: torch.Tensor, what: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] float -> (q int8 [out, in], scales float32 [out]); ValueError for NaN or Inf."""
    weight = as_dense_weight(weight, what).to(torch.float32)
    if not bool(torch.isfinite(weight).all()):
        bad = (~torch.isfinite(weight)).nonzero()[0].tolist()
        raise ValueError(f"{what}: expected finite values to quantize, got {float(weight[bad[0], bad[1]])} at {bad}")
    amax = weight.abs().amax(dim=1) if weight.shape[1] else torch.zeros(weight.shape[0])
    scales = amax / QMAX
    return round_per_channel(weight, scales), scales.contiguous()


def round_per_channel(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """W float [out, in] on the grid of scales [out] -> int8 q, rounded to nearest even and
    clamped to [-127, 127] (0 in rows whose scale is 0)."""
    divisor = torch.where(scales > 0, scales, torch.ones_like(scales))
    return torch.round(weight / divisor[:, None]).clamp(-QMAX, QMAX).to(torch.int8)


def check_scales(fmt: str, scales: object, out_features: int) -> torch.Tensor:
    """Per-channel scales: float32 [out], finite and >= 0."""
    check_tensor(fmt, "scales", scales, [out_features], [torch.float32])
    if scales.numel() and not bool((torch.isfinite(scales) & (scales >= 0)).all()):
        k = int((~(torch.isfinite(scales) & (scales >= 0))).nonzero()[0])
        raise ValueError(f"{fmt} format: expected scales finite and >= 0, got {float(scales[k])} at {k}")
    return scales
