"""Dense weight format: the weight matrix itself (the fallback every layer can take)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats._checks import check_keys, check_tensor
from sparse_rt.formats.base import WeightFormat, as_dense_weight, register_format


@register_format
@dataclass(eq=False)
class DenseFormat(WeightFormat):
    """W itself.

    weight: float [out_features, in_features], on the cpu.
    """

    name = "dense"

    weight: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor(self.name, "weight", self.weight, (None, None))
        if self.weight.numel() == 0:
            raise ValueError(f"dense format: expected a non-empty weight, got shape {list(self.weight.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.weight.shape[0], self.weight.shape[1])

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> DenseFormat:
        """Wrap W ([out, in] float tensor or numpy array), made contiguous (no copy if it already is)."""
        return cls(weight=as_dense_weight(weight).contiguous())

    def to_dense(self) -> torch.Tensor:
        """The stored weight tensor itself (not a copy)."""
        return self.weight

    @property
    def flops_per_row(self) -> int:
        return 2 * self.weight.numel()

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight}

    def attributes(self) -> dict[str, int | list[int]]:
        return {}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, torch.Tensor], attributes: dict[str, int | list[int]]
    ) -> DenseFormat:
        check_keys(cls.name, "arrays", arrays, ["weight"])
        check_keys(cls.name, "attributes", attributes, [])
        return cls(weight=arrays["weight"])
