"""Bitmask weight format: one bit per dense weight saying whether it is kept, and the kept values
packed row by row (unstructured sparsity at 50-90 %, and N:M patterns).

Per dense element it stores 4 * density + 0.125 bytes (plus 4 or 8 bytes of offset per
row): 2.125 at 50 %, 1.325 at 70 %, against CSR's 6 * density and N:M's 2.5 at 2:4. A
kernel reads x contiguously and expands each chunk of packed values into the lanes its
mask bits name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats._checks import check_keys, check_offsets, check_pair, check_tensor
from sparse_rt.formats.base import WeightFormat, as_dense_weight, register_format

OFFSET_DTYPES = (torch.int32, torch.int64)
# Mask rows are whole 64-bit words (8 bytes) so that any 8- or 16-column chunk a kernel reads
# lies inside its row.
WORD_BITS = 64
# Zero floats after the last row's values: a SIMD load of up to 16 floats starting at any
# row's last value stays inside the array.
VALUE_PADDING = 16

# POPCOUNT[b]: set bits of the byte b
POPCOUNT = torch.tensor([bin(b).count("1") for b in range(256)], dtype=torch.int64)
_BIT_WEIGHTS = torch.tensor([1 << j for j in range(8)], dtype=torch.int32)


def mask_bytes(in_features: int) -> int:
    """Bytes of one mask row: in_features bits rounded up to whole 64-bit words."""
    return -(-in_features // WORD_BITS) * (WORD_BITS // 8)


def pack_mask(nonzero: torch.Tensor) -> torch.Tensor:
    """A 0/1 [out, in] mask -> uint8 [out, mask_bytes(in)], bit j of byte k standing for column 8k + j."""
    out_features, in_features = nonzero.shape
    padded = torch.zeros(out_features, mask_bytes(in_features) * 8, dtype=torch.int32)
    padded[:, :in_features] = nonzero != 0
    return (padded.view(out_features, -1, 8) * _BIT_WEIGHTS).sum(dim=2).to(torch.uint8)


def unpack_mask(mask: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of pack_mask: uint8 [out, bytes] -> bool [out, in_features]."""
    bits = (mask.to(torch.int32).unsqueeze(2) & _BIT_WEIGHTS).ne(0)
    return bits.reshape(mask.shape[0], -1)[:, :in_features]


@register_format
@dataclass(eq=False)
class BitmaskFormat(WeightFormat):
    """W as a bit per entry plus the kept values, row-major.

    shape:       (out_features, in_features)
    mask:        uint8 [out, mask_bytes(in)]; bit j of mask[o, k] is set iff W[o, 8k + j] is
                 stored; bits past in_features are zero
    row_offsets: int32 or int64 [out + 1]; row o's values are values[row_offsets[o]:row_offsets[o+1]],
                 as many as its mask has set bits
    values:      float [row_offsets[-1] + VALUE_PADDING], the stored values in column order,
                 then VALUE_PADDING zeros
    """

    name = "bitmask"

    shape: tuple[int, int]
    mask: torch.Tensor
    row_offsets: torch.Tensor
    values: torch.Tensor

    def __post_init__(self) -> None:
        self.shape = check_pair(self.name, "shape", self.shape)
        out_features, in_features = self.shape
        row_bytes = mask_bytes(in_features)
        check_tensor(self.name, "mask", self.mask, [out_features, row_bytes], [torch.uint8])
        check_tensor(self.name, "row_offsets", self.row_offsets, [out_features + 1], OFFSET_DTYPES)
        check_tensor(self.name, "values", self.values, [None])
        nnz = self.values.shape[0] - VALUE_PADDING
        if nnz < 0:
            raise ValueError(
                f"bitmask format: expected values of length row_offsets[-1] + {VALUE_PADDING} (the padding), "
                f"got {self.values.shape[0]}"
            )
        check_offsets(self.name, "row_offsets", self.row_offsets, nnz, f"values less its {VALUE_PADDING} padding")
        outside = ~pack_mask(torch.ones(1, in_features, dtype=torch.bool))  # bits past in_features
        bad = (self.mask & outside).nonzero()
        if bad.numel():
            o, k = bad[0].tolist()
            raise ValueError(
                f"bitmask format: expected no mask bits past in_features={in_features}, "
                f"got mask[{o}, {k}]={int(self.mask[o, k])}"
            )
        counts = POPCOUNT[self.mask.long()].sum(dim=1)
        lengths = self.row_offsets.diff().long()
        wrong = (counts != lengths).nonzero()
        if wrong.numel():
            o = int(wrong[0])
            raise ValueError(
                f"bitmask format: expected row {o} to hold as many values as its mask has set bits "
                f"({int(counts[o])}), got row_offsets[{o + 1}] - row_offsets[{o}] = {int(lengths[o])}"
            )
        if self.values[nnz:].ne(0).any():
            raise ValueError(f"bitmask format: expected the last {VALUE_PADDING} values (padding) to be zero, "
                             f"got {self.values[nnz:].tolist()}")

    @property
    def nnz(self) -> int:
        return self.values.shape[0] - VALUE_PADDING

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> BitmaskFormat:
        """Keep every entry of W ([out, in]) that is not exactly zero."""
        weight = as_dense_weight(weight)
        out_features, in_features = weight.shape
        nonzero = weight != 0
        counts = nonzero.sum(dim=1)
        nnz = int(counts.sum())
        offset_dtype = torch.int32 if nnz <= torch.iinfo(torch.int32).max else torch.int64
        return cls(
            shape=(out_features, in_features),
            mask=pack_mask(nonzero),
            row_offsets=torch.cat([counts.new_zeros(1), counts.cumsum(dim=0)]).to(offset_dtype),
            values=torch.cat([weight[nonzero], weight.new_zeros(VALUE_PADDING)]),
        )

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(self.shape, dtype=self.values.dtype)
        # True entries of the boolean mask are enumerated row-major: the packed order
        dense[unpack_mask(self.mask, self.shape[1])] = self.values[: self.nnz]
        return dense

    @property
    def flops_per_row(self) -> int:
        return 2 * self.nnz

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"mask": self.mask, "row_offsets": self.row_offsets, "values": self.values}

    def attributes(self) -> dict[str, int | list[int]]:
        return {"shape": list(self.shape)}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, torch.Tensor], attributes: dict[str, int | list[int]]
    ) -> BitmaskFormat:
        check_keys(cls.name, "arrays", arrays, ["mask", "row_offsets", "values"])
        check_keys(cls.name, "attributes", attributes, ["shape"])
        return cls(shape=attributes["shape"], **arrays)
