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


def check_csr_arrays(fmt: str, shape, row_offsets: torch.Tensor, column_indices: torch.Tensor,
                     values: torch.Tensor, value_dtypes=None) -> tuple[int, int]:
    """Validate the arrays of a compressed-sparse-rows weight of format `fmt` (values of
    `value_dtypes`, any floating dtype when None) and return its (out, in) shape; raises naming the field."""
    out_features, in_features = check_pair(fmt, "shape", shape)
    check_tensor(fmt, "row_offsets", row_offsets, [out_features + 1], OFFSET_DTYPES)
    check_tensor(fmt, "values", values, [None], value_dtypes)
    nnz = values.shape[0]
    check_tensor(fmt, "column_indices", column_indices, [nnz], [narrowest_index_dtype(in_features - 1)])
    check_offsets(fmt, "row_offsets", row_offsets, nnz, "values")
    check_index_range(fmt, "column_indices", column_indices, in_features)
    check_ascending_segments(fmt, "column_indices", column_indices, row_offsets, "row")
    return out_features, in_features


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
        self.shape = check_csr_arrays(self.name, self.shape, self.row_offsets, self.column_indices, self.values)

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
