"""BSR weight format: the nonzero r x c blocks of W, block row by block row."""

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
from sparse_rt.formats.base import (
    WeightFormat,
    as_dense_weight,
    narrowest_index_dtype,
    padded_mask,
    register_format,
)


def count_kept_blocks(nonzero: torch.Tensor, block_shape: tuple[int, int]) -> int:
    """How many r x c blocks of a 0/1 (bool, uint8 or float) [out, in] mask, zero-padded to
    whole blocks, hold a nonzero: the blocks `BsrFormat.from_dense` would keep. A uint8 mask
    of whole blocks is read in place."""
    r, c = block_shape
    out_features, in_features = nonzero.shape
    rows, columns = _ceil_div(out_features, r), _ceil_div(in_features, c)
    padded = padded_mask(nonzero, rows * r, columns * c)
    per_row = padded.view(rows * r, columns, c).amax(dim=2)  # reduce the contiguous axis first
    return int(torch.count_nonzero(per_row.view(rows, r, columns).amax(dim=1)))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@register_format
@dataclass(eq=False)
class BsrFormat(WeightFormat):
    """W in block compressed sparse rows, zero-padded up to multiples of the block shape.

    shape:                (out_features, in_features)
    block_shape:          (r, c)
    block_row_offsets:    int32 [ceil(out / r) + 1]; block row i holds blocks
                          block_row_offsets[i]:block_row_offsets[i+1]
    block_column_indices: [nblocks] in narrowest_index_dtype(ceil(in / c) - 1), strictly
                          ascending within each block row
    blocks:               float [nblocks, r, c]; blocks[k] covers rows i*r:(i+1)*r and columns
                          j*c:(j+1)*c of the padded W, j = block_column_indices[k]; entries in
                          the padding beyond `shape` are zero
    """

    name = "bsr"

    shape: tuple[int, int]
    block_shape: tuple[int, int]
    block_row_offsets: torch.Tensor
    block_column_indices: torch.Tensor
    blocks: torch.Tensor

    def __post_init__(self) -> None:
        self.shape = check_pair(self.name, "shape", self.shape)
        self.block_shape = check_pair(self.name, "block_shape", self.block_shape)
        r, c = self.block_shape
        block_rows, block_columns = self.grid
        check_tensor(self.name, "block_row_offsets", self.block_row_offsets, [block_rows + 1], [torch.int32])
        check_tensor(self.name, "blocks", self.blocks, [None, r, c])
        nblocks = self.blocks.shape[0]
        check_tensor(
            self.name,
            "block_column_indices",
            self.block_column_indices,
            [nblocks],
            [narrowest_index_dtype(block_columns - 1)],
        )
        check_offsets(self.name, "block_row_offsets", self.block_row_offsets, nblocks, "blocks")
        check_index_range(self.name, "block_column_indices", self.block_column_indices, block_columns)
        check_ascending_segments(
            self.name, "block_column_indices", self.block_column_indices, self.block_row_offsets, "block row"
        )
        self._check_padding()

    def _check_padding(self) -> None:
        r, c = self.block_shape
        block_rows, block_columns = self.grid
        pad_rows = block_rows * r - self.shape[0]
        pad_columns = block_columns * c - self.shape[1]
        in_last_row = self.block_rows_of_blocks() == block_rows - 1
        in_last_column = self.block_column_indices == block_columns - 1
        bad = (in_last_row & self.blocks[:, r - pad_rows :, :].ne(0).flatten(1).any(1)) | (
            in_last_column & self.blocks[:, :, c - pad_columns :].ne(0).flatten(1).any(1)
        )
        if bad.any():
            k = int(bad.nonzero()[0])
            raise ValueError(
                f"bsr format: expected zeros in blocks beyond shape {list(self.shape)} (the padding "
                f"up to {block_rows * r}x{block_columns * c}), got a nonzero in blocks[{k}]"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """(block rows, block columns) of the padded W."""
        return (_ceil_div(self.shape[0], self.block_shape[0]), _ceil_div(self.shape[1], self.block_shape[1]))

    @property
    def nblocks(self) -> int:
        return self.blocks.shape[0]

    def block_rows_of_blocks(self) -> torch.Tensor:
        """int64 [nblocks]: the block row of each stored block."""
        return torch.repeat_interleave(
            torch.arange(self.grid[0]), self.block_row_offsets.diff().long(), output_size=self.nblocks
        )

    @classmethod
    def from_dense(cls, weight: torch.Tensor, *, block_shape: tuple[int, int]) -> BsrFormat:
        """Keep every r x c block of the zero-padded W ([out, in]) that holds a nonzero."""
        weight = as_dense_weight(weight)
        out_features, in_features = weight.shape
        r, c = check_pair(cls.name, "block_shape", block_shape)
        block_rows, block_columns = _ceil_div(out_features, r), _ceil_div(in_features, c)
        padded = weight.new_zeros(block_rows * r, block_columns * c)
        padded[:out_features, :in_features] = weight
        # tiles: [block_rows, block_columns, r, c]
        tiles = padded.view(block_rows, r, block_columns, c).permute(0, 2, 1, 3)
        keep = tiles.ne(0).any(dim=(2, 3))
        block_row_offsets = torch.cat([keep.new_zeros(1, dtype=torch.long), keep.sum(dim=1).cumsum(0)])
        return cls(
            shape=(out_features, in_features),
            block_shape=(r, c),
            block_row_offsets=block_row_offsets.to(torch.int32),
            block_column_indices=keep.nonzero()[:, 1].to(narrowest_index_dtype(block_columns - 1)),
            blocks=tiles[keep],
        )

    def to_dense(self) -> torch.Tensor:
        r, c = self.block_shape
        block_rows, block_columns = self.grid
        tiles = self.blocks.new_zeros(block_rows, block_columns, r, c)
        tiles[self.block_rows_of_blocks(), self.block_column_indices.long()] = self.blocks
        padded = tiles.permute(0, 2, 1, 3).reshape(block_rows * r, block_columns * c)
        return padded[: self.shape[0], : self.shape[1]].contiguous()

    @property
    def flops_per_row(self) -> int:
        """Two per stored block entry (zeros inside kept blocks are computed too)."""
        return 2 * self.blocks.numel()

    def arrays(self) -> dict[str, torch.Tensor]:
        return {
            "block_row_offsets": self.block_row_offsets,
            "block_column_indices": self.block_column_indices,
            "blocks": self.blocks,
        }

    def attributes(self) -> dict[str, int | list[int]]:
        return {"shape": list(self.shape), "block_shape": list(self.block_shape)}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, torch.Tensor], attributes: dict[str, int | list[int]]
    ) -> BsrFormat:
        check_keys(cls.name, "arrays", arrays, ["block_row_offsets", "block_column_indices", "blocks"])
        check_keys(cls.name, "attributes", attributes, ["shape", "block_shape"])
        return cls(shape=attributes["shape"], block_shape=attributes["block_shape"], **arrays)
