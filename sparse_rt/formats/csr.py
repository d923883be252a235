"""CSR weight format: the nonzeros of W row by row (unstructured sparsity)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats._checks import (
    check_ascending_segments,
    check_index_range,
    check_keys,
    check_offsets,
    check_pair,
    check_tensor,
)
from sparse_rt.formats.base import WeightFormat, as_dense_weight, narrowest_index_dtype, register_format

OFFSET_DTYPES = (torch.int32, torch.int64)


@register_format
@dataclass(eq=False)
class CsrFormat(WeightFormat):
    """W in compressed sparse rows.

    shape:          (out_features, in_features)
    row_offsets:    int32 or int64 [out + 1]; row o holds entries row_offsets[o]:row_offsets[o+1]
    column_indices: [nnz] in narrowest_index_dtype(in - 1), strictly ascending within each row
    values:         float [nnz]
    """

    name = "csr"

    shape: tuple[int, int]
    row_offsets: torch.Tensor
    column_indices: torch.Tensor
    values: torch.Tensor

    def __post_init__(self) -> None:
        self.shape = check_pair(self.name, "shape", self.shape)
        out_features, in_features = self.shape
        check_tensor(self.name, "row_offsets", self.row_offsets, [out_features + 1], OFFSET_DTYPES)
        check_tensor(self.name, "values", self.values, [None])
        nnz = self.values.shape[0]
        check_tensor(
            self.name, "column_indices", self.column_indices, [nnz], [narrowest_index_dtype(in_features - 1)]
        )
        check_offsets(self.name, "row_offsets", self.row_offsets, nnz, "values")
        check_index_range(self.name, "column_indices", self.column_indices, in_features)
        check_ascending_segments(self.name, "column_indices", self.column_indices, self.row_offsets, "row")

    @property
    def nnz(self) -> int:
        return self.values.shape[0]

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> CsrFormat:
        """Keep every entry of W ([out, in]) that is not exactly zero."""
        weight = as_dense_weight(weight)
        out_features, in_features = weight.shape
        mask = weight != 0
        counts = mask.sum(dim=1)
        nnz = int(counts.sum())
        offset_dtype = torch.int32 if nnz <= torch.iinfo(torch.int32).max else torch.int64
        row_offsets = torch.cat([counts.new_zeros(1), counts.cumsum(dim=0)]).to(offset_dtype)
        # nonzero() lists (row, column) in row-major order, so columns ascend within a row
        column_indices = mask.nonzero()[:, 1].to(narrowest_index_dtype(in_features - 1))
        return cls(
            shape=(out_features, in_features),
            row_offsets=row_offsets,
            column_indices=column_indices,
            values=weight[mask],
        )

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(self.shape, dtype=self.values.dtype)
        rows = torch.repeat_interleave(
            torch.arange(self.shape[0]), self.row_offsets.diff().long(), output_size=self.nnz
        )
        dense[rows, self.column_indices.long()] = self.values
        return dense

    @property
    def flops_per_row(self) -> int:
        return 2 * self.nnz

    def arrays(self) -> dict[str, torch.Tensor]:
        return {
            "row_offsets": self.row_offsets,
            "column_indices": self.column_indices,
            "values": self.values,
        }

    def attributes(self) -> dict[str, int | list[int]]:
        return {"shape": list(self.shape)}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, torch.Tensor], attributes: dict[str, int | list[int]]
    ) -> CsrFormat:
        check_keys(cls.name, "arrays", arrays, ["row_offsets", "column_indices", "values"])
        check_keys(cls.name, "attributes", attributes, ["shape"])
        return cls(shape=attributes["shape"], **arrays)
