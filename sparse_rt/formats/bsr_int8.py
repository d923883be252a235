"""Int8 block-sparse weight format: 1x4 blocks, quantized per output channel (symmetric).

A block is four consecutive inputs of one output row, aligned to a multiple of 4: the
weight operand of one 4-wide int8 dot product (`vpdpbusd`), so a kernel multiplies a
block with the activations' quad of those four inputs as it stands, without gathering
and interleaving columns as int8 CSR must. Weights pruned in 1x4 blocks keep exactly
their blocks; an unstructured weight keeps every quad holding a nonzero (about 34% of
the quads at 90% sparsity).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparse_rt.formats._checks import (
    check_ascending_segments,
    check_index_range,
    check_keys,
    check_offsets,
    check_pair,
    check_tensor,
)
from sparse_rt.formats.base import WeightFormat, narrowest_index_dtype, register_format
from sparse_rt.formats.csr import OFFSET_DTYPES
from sparse_rt.formats.int8 import check_scales, quantize_per_channel

BLOCK = 4


def quads_of(in_features: int) -> int:
    """Block columns of a weight with `in_features` inputs (the last one may be partial)."""
    return -(-in_features // BLOCK)


@register_format
@dataclass(eq=False)
class BsrInt8Format(WeightFormat):
    """W ~= blocks * scales[:, None]; row r holds blocks row_offsets[r]:row_offsets[r+1].

    shape:         (out_features, in_features)
    row_offsets:   int32 or int64 [out + 1], counting blocks
    block_columns: [blocks] in narrowest_index_dtype(quads - 1), the block's first input / 4,
                   strictly ascending within each row
    values:        int8 [blocks, 4]; the inputs past in_features of a last partial block hold 0
    scales:        float32 [out], >= 0
    """

    name = "bsr_int8"

    shape: tuple[int, int]
    row_offsets: torch.Tensor
    block_columns: torch.Tensor
    values: torch.Tensor
    scales: torch.Tensor

    def __post_init__(self) -> None:
        out_features, in_features = self.shape = check_pair(self.name, "shape", self.shape)
        quads = quads_of(in_features)
        check_tensor(self.name, "row_offsets", self.row_offsets, [out_features + 1], OFFSET_DTYPES)
        check_tensor(self.name, "values", self.values, [None, BLOCK], [torch.int8])
        blocks = self.values.shape[0]
        check_tensor(self.name, "block_columns", self.block_columns, [blocks], [narrowest_index_dtype(quads - 1)])
        check_offsets(self.name, "row_offsets", self.row_offsets, blocks, "values")
        check_index_range(self.name, "block_columns", self.block_columns, quads)
        check_ascending_segments(self.name, "block_columns", self.block_columns, self.row_offsets, "row")
        tail = in_features - (quads - 1) * BLOCK  # inputs of the last block column
        if tail < BLOCK and blocks:
            last = self.block_columns.long() == quads - 1
            if bool((self.values[last][:, tail:] != 0).any()):
                raise ValueError(f"{self.name} format: expected 0 in the inputs past in_features={in_features} "
                                 f"of the last block column, got nonzeros")
        check_scales(self.name, self.scales, out_features)

    @property
    def blocks(self) -> int:
        return self.values.shape[0]

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> BsrInt8Format:
        """Quantize a float [out, in] W per output channel; quads that quantize to all 0 are dropped."""
        q, scales = quantize_per_channel(weight)
        return cls.from_quantized(q, scales)

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scales: torch.Tensor) -> BsrInt8Format:
        """From int8 q [out, in] and scales [out]: keep the 1x4 blocks of q holding a nonzero."""
        out_features, in_features = q.shape
        quads = quads_of(in_features)
        padded = F.pad(q, (0, quads * BLOCK - in_features)).reshape(out_features, quads, BLOCK)
        kept = (padded != 0).any(dim=2)  # [out, quads]
        rows, columns = kept.nonzero(as_tuple=True)  # row-major: ascending columns within a row
        row_offsets = torch.zeros(out_features + 1, dtype=torch.int64)
        row_offsets[1:] = kept.sum(dim=1).cumsum(0)
        return cls(shape=(out_features, in_features), row_offsets=row_offsets,
                   block_columns=columns.to(narrowest_index_dtype(quads - 1)),
                   values=padded[rows, columns].contiguous(), scales=scales.to(torch.float32).contiguous())

    def quantized(self) -> torch.Tensor:
        """The int8 weight q [out, in] (W ~= q * scales[:, None])."""
        out_features, in_features = self.shape
        quads = quads_of(in_features)
        dense = torch.zeros(out_features, quads, BLOCK, dtype=torch.int8)
        rows = torch.repeat_interleave(torch.arange(out_features), self.row_offsets.diff().long())
        dense[rows, self.block_columns.long()] = self.values
        return dense.reshape(out_features, quads * BLOCK)[:, :in_features]

    def to_dense(self) -> torch.Tensor:
        """The dequantized float32 weight."""
        return self.quantized().to(torch.float32) * self.scales[:, None]

    @property
    def flops_per_row(self) -> int:
        return 2 * self.values.numel()

    def arrays(self) -> dict[str, torch.Tensor]:
        return {
            "row_offsets": self.row_offsets,
            "block_columns": self.block_columns,
            "values": self.values,
            "scales": self.scales,
        }

    def attributes(self) -> dict[str, int | list[int]]:
        return {"shape": list(self.shape)}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, torch.Tensor], attributes: dict[str, int | list[int]]
    ) -> BsrInt8Format:
        check_keys(cls.name, "arrays", arrays, ["row_offsets", "block_columns", "values", "scales"])
        check_keys(cls.name, "attributes", attributes, ["shape"])
        return cls(shape=attributes["shape"], **arrays)
