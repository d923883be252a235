"""Int8 CSR weight format: the nonzeros of W quantized per output channel (symmetric)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats._checks import check_keys
from sparse_rt.formats.base import WeightFormat, register_format
from sparse_rt.formats.csr import CsrFormat, check_csr_arrays
from sparse_rt.formats.int8 import check_scales, quantize_per_channel


@register_format
@dataclass(eq=False)
class CsrInt8Format(WeightFormat):
    """W ~= CSR(values) * scales[:, None], rows in compressed sparse rows.

    shape:          (out_features, in_features)
    row_offsets:    int32 or int64 [out + 1]
    column_indices: [nnz] in narrowest_index_dtype(in - 1), strictly ascending within each row
    values:         int8 [nnz]
    scales:         float32 [out], >= 0
    """

    name = "csr_int8"

    shape: tuple[int, int]
    row_offsets: torch.Tensor
    column_indices: torch.Tensor
    values: torch.Tensor
    scales: torch.Tensor

    def __post_init__(self) -> None:
        self.shape = check_csr_arrays(self.name, self.shape, self.row_offsets, self.column_indices, self.values,
                                      [torch.int8])
        check_scales(self.name, self.scales, self.shape[0])

    @property
    def nnz(self) -> int:
        return self.values.shape[0]

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> CsrInt8Format:
        """Quantize a float [out, in] W per output channel; entries that quantize to 0 are dropped."""
        q, scales = quantize_per_channel(weight)
        return cls.from_quantized(q, scales)

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scales: torch.Tensor) -> CsrInt8Format:
        """From int8 q [out, in] and scales [out]: keep the nonzeros of q."""
        csr = CsrFormat.from_dense(q.to(torch.float32))
        return cls(shape=csr.shape, row_offsets=csr.row_offsets, column_indices=csr.column_indices,
                   values=csr.values.to(torch.int8), scales=scales.to(torch.float32).contiguous())

    def to_dense(self) -> torch.Tensor:
        """The dequantized float32 weight."""
        csr = CsrFormat(self.shape, self.row_offsets, self.column_indices, self.values.to(torch.float32))
        return csr.to_dense() * self.scales[:, None]

    @property
    def flops_per_row(self) -> int:
        return 2 * self.nnz

    def arrays(self) -> dict[str, torch.Tensor]:
        return {
            "row_offsets": self.row_offsets,
            "column_indices": self.column_indices,
            "values": self.values,
            "scales": self.scales,
        }

    def attributes(self) -> dict[str, int | list[int]]:
        return {"shape": list(self.shape)}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, torch.Tensor], attributes: dict[str, int | list[int]]
    ) -> CsrInt8Format:
        check_keys(cls.name, "arrays", arrays, ["row_offsets", "column_indices", "values", "scales"])
        check_keys(cls.name, "attributes", attributes, ["shape"])
        return cls(shape=attributes["shape"], **arrays)
