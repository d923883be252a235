"""BSR linear on the CPU: y = x @ W.T + b with W in BsrFormat (any block shape).

`pack_bsr` repacks the blocks of each block row into one row-major panel
[r, blocks in the row * c] (see `_bsr_native`), so that every output row is a
contiguous run of weights, and splits the block rows into tasks of about equal
stored weights. `bsr_linear` runs the gathered-segment dot product kernel for one
input row and the transposed-input kernel (up to four output rows share every
batch-tile load) for several.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.kernels.cpu._bsr_native import bsr_gemm, bsr_gemv
from sparse_rt.kernels.cpu._launch import (
    TaskSplit, bias_of, check_cpu, pointer, rows_of, shaped_like, threads, tile_tasks,
)
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.configs import BlockOptions, block_configs, parse_options, simd_width
from sparse_rt.kernels.registry import Config, Kernel, register_kernel

INDEX_NAMES = {torch.int8: "i8", torch.int16: "i16", torch.int32: "i32"}
# Cost of an output row beyond its stored weights, in weights, for the split into tasks.
ROW_OVERHEAD = 8


@dataclass(frozen=True)
class BsrPacked:
    """A BSR weight ready for the C kernels.

    block_row_offsets:    int64 [block rows + 1]
    block_column_indices: int8/int16/int32 [nblocks] (named by `index`)
    panels:               float32 [nblocks * r * c], block row R's panel [r, nb * c] at
                          block_row_offsets[R] * r * c
    longest:              most blocks in one block row
    in_padded:            in_features rounded up to a multiple of c
    """

    shape: tuple[int, int]
    block_shape: tuple[int, int]
    index: str
    block_row_offsets: torch.Tensor
    block_column_indices: torch.Tensor
    panels: torch.Tensor
    bias: torch.Tensor | None
    longest: int
    in_padded: int
    tasks: TaskSplit


def block_row_panels(weight) -> torch.Tensor:
    """float32 [nblocks * r * c]: panel[i, kk * c + j] = blocks[k0 + kk, i, j] per block row."""
    r, c = weight.block_shape
    offsets = weight.block_row_offsets.long()
    counts = offsets.diff()
    block_row = torch.repeat_interleave(torch.arange(counts.shape[0]), counts, output_size=weight.nblocks)
    within = torch.arange(weight.nblocks) - offsets[block_row]
    # destination of blocks[k, i, j]: start of the panel + i * (row length) + within * c + j
    start = offsets[block_row] * r * c + within * c
    row_length = counts[block_row] * c
    destination = (
        start[:, None, None] + torch.arange(r)[None, :, None] * row_length[:, None, None] + torch.arange(c)
    )
    panels = torch.empty(weight.nblocks * r * c, dtype=torch.float32)
    panels[destination.flatten()] = weight.blocks.to(torch.float32).flatten()
    return panels


def pack_bsr(weight, bias: torch.Tensor | None, tasks_per_thread: int) -> BsrPacked:
    """Pack a BsrFormat (and bias [out]) for the kernels."""
    r, c = weight.block_shape
    offsets = weight.block_row_offsets.to(torch.int64).contiguous()
    counts = offsets.diff()
    return BsrPacked(
        shape=tuple(weight.shape),
        block_shape=(r, c),
        index=INDEX_NAMES[weight.block_column_indices.dtype],
        block_row_offsets=offsets,
        block_column_indices=weight.block_column_indices.contiguous(),
        panels=block_row_panels(weight),
        bias=bias_of(bias, weight.shape[0], "bsr_linear"),
        longest=int(counts.max()) if counts.numel() else 0,
        in_padded=weight.grid[1] * c,
        tasks=TaskSplit(counts * r * c + r * ROW_OVERHEAD, tasks_per_thread),
    )


def bsr_linear(x: torch.Tensor, packed: BsrPacked, options: BlockOptions) -> torch.Tensor:
    """x: float32 [..., in] -> y: float32 [..., out]."""
    out_features, in_features = packed.shape
    r, c = packed.block_shape
    rows = rows_of(x, in_features, "bsr_linear")
    batch = rows.shape[0]
    y = torch.empty(batch, out_features, dtype=torch.float32)
    if batch:
        num_threads = threads()
        split = packed.tasks(num_threads)
        weights = (pointer(packed.block_row_offsets), pointer(packed.block_column_indices), pointer(packed.panels),
                   pointer(packed.bias), r, c)
        if batch == 1:
            bsr_gemv(packed.index)(num_threads, split.shape[0] - 1, pointer(split), *weights, in_features, out_features,
                                   packed.longest, pointer(rows), pointer(y))
        else:
            width = simd_width()
            # xT scratch: [in padded to c, batch padded to the SIMD width]
            transposed = torch.empty(packed.in_padded * (-(-batch // width) * width), dtype=torch.float32)
            tasks = tile_tasks(split, batch, options.batch_vectors * width, num_threads)
            bsr_gemm(packed.index)(
                num_threads, *tasks, *weights, batch, in_features, packed.in_padded, out_features, pointer(rows),
                pointer(y), pointer(transposed), options.batch_vectors,
            )
    return shaped_like(y, x)


def bind_bsr(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind: pack once, return x -> bsr_linear(x)."""
    check_cpu(device, "bsr_linear")
    options = parse_options(BlockOptions, config)
    packed = pack_bsr(weight, bias, options.tasks_per_thread)
    return lambda x: bsr_linear(x, packed, options)


def bsr_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: per kept block, x[..., its columns] @ block.T added into its rows."""
    out_features, in_features = weight.shape
    r, c = weight.block_shape
    block_rows, block_columns = weight.grid
    padded = torch.zeros(*x.shape[:-1], block_columns * c, dtype=x.dtype)
    padded[..., :in_features] = x
    # segments: [..., nblocks, c]
    segments = padded.reshape(*x.shape[:-1], block_columns, c)[..., weight.block_column_indices.long(), :]
    products = torch.einsum("...kc,krc->...kr", segments, weight.blocks.to(x.dtype))
    y = torch.zeros(*x.shape[:-1], block_rows, r, dtype=x.dtype)
    y.index_add_(-2, weight.block_rows_of_blocks(), products)
    y = y.reshape(*x.shape[:-1], block_rows * r)[..., :out_features]
    return y if bias is None else y + bias.to(x.dtype)


BSR_CPU_BLOCKROW = register_kernel(
    Kernel(
        name="bsr_cpu_blockrow",
        format="bsr",
        backend="cpu",
        bind=bind_bsr,
        configs=block_configs,
        supports=lambda weight, device: native_available() and weight.block_column_indices.dtype in INDEX_NAMES,
    )
)
