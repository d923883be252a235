"""Int8 dense weight format: W quantized per output channel (symmetric), every entry kept."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats._checks import check_keys, check_tensor
from sparse_rt.formats.base import WeightFormat, register_format
from sparse_rt.formats.int8 import check_scales, quantize_per_channel


@register_format
@dataclass(eq=False)
class DenseInt8Format(WeightFormat):
    """W ~= weight * scales[:, None].

    weight: int8 [out_features, in_features]
    scales: float32 [out_features], >= 0 (0 for an all-zero row)
    """

    name = "dense_int8"

    weight: torch.Tensor
    scales: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor(self.name, "weight", self.weight, (None, None), [torch.int8])
        if self.weight.numel() == 0:
            raise ValueError(f"dense_int8 format: expected a non-empty weight, got shape {list(self.weight.shape)}")
        check_scales(self.name, self.scales, self.weight.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.weight.shape[0], self.weight.shape[1])

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> DenseInt8Format:
        """Quantize a float [out, in] W per output channel (round to nearest); NaN/Inf raise."""
        q, scales = quantize_per_channel(weight)
        return cls(weight=q, scales=scales)

    def to_dense(self) -> torch.Tensor:
        """The dequantized float32 weight."""
        return self.weight.to(torch.float32) * self.scales[:, None]

    @property
    def flops_per_row(self) -> int:
        return 2 * self.weight.numel()

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "scales": self.scales}

    def attributes(self) -> dict[str, int | list[int]]:
        return {}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, torch.Tensor], attributes: dict[str, int | list[int]]
    ) -> DenseInt8Format:
        check_keys(cls.name, "arrays", arrays, ["weight", "scales"])
        check_keys(cls.name, "attributes", attributes, [])
        return cls(**arrays)
