"""BSR linear on Triton: y = x @ W.T + b with W in BsrFormat.

One program takes one block row of W and a tile of BLOCK_M batch rows and walks
the block row's kept blocks with tl.dot (SPLIT_K programs may share a block
row, adding into a zeroed fp32 output). tl.dot needs every side >= 16 and a
power of two, so block sides are 16..128 (square or rectangular) and small
batches are padded to 16 rows inside the kernel (masked loads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from sparse_rt.kernels.registry import Config
from sparse_rt.kernels.triton._bsr_kernels import _bsr_linear_kernel
from sparse_rt.kernels.triton._launch import (
    DtypeCopies,
    dot_precision,
    pow2_at_most,
    rows_of,
    runnable,
)
from sparse_rt.kernels.triton.configs import BsrOptions, parse_options

BLOCK_SIDES = (16, 32, 64, 128)


@dataclass(frozen=True)
class BsrPacked:
    """A BSR weight on its device; blocks: [nblocks, c, r], each block transposed for tl.dot."""

    shape: tuple[int, int]
    block_shape: tuple[int, int]
    device: torch.device
    block_row_offsets: torch.Tensor
    block_column_indices: torch.Tensor
    blocks: DtypeCopies
    bias: DtypeCopies | None


def bsr_supports(weight, device: torch.device) -> bool:
    """Block sides must be tl.dot tiles: powers of two in 16..128."""
    return all(side in BLOCK_SIDES for side in weight.block_shape)


def pack_bsr(weight, bias: torch.Tensor | None, device: torch.device) -> BsrPacked:
    """Move a BsrFormat (and bias [out]) to `device`, blocks transposed to [nblocks, c, r]."""
    if not bsr_supports(weight, device):
        raise ValueError(
            f"bsr_linear: expected block sides in {list(BLOCK_SIDES)}, got block_shape {tuple(weight.block_shape)}"
        )
    return BsrPacked(
        shape=tuple(weight.shape),
        block_shape=tuple(weight.block_shape),
        device=device,
        block_row_offsets=weight.block_row_offsets.to(device),
        block_column_indices=weight.block_column_indices.to(device),
        blocks=DtypeCopies(weight.blocks.transpose(1, 2).contiguous().to(device)),
        bias=None if bias is None else DtypeCopies(bias.detach().to(device)),
    )


def bsr_linear(x: torch.Tensor, packed: BsrPacked, options: BsrOptions) -> torch.Tensor:
    """x: [..., in] on packed.device -> y: [..., out] in x's dtype."""
    out_features, in_features = packed.shape
    block_r, block_c = packed.block_shape
    rows = rows_of(x, in_features, packed.device, "bsr_linear")
    batch = rows.shape[0]
    if options.SPLIT_K > 1:
        # the SPLIT_K programs of a tile add their partial sums into a zeroed fp32 buffer
        y = torch.zeros((batch, out_features), dtype=torch.float32, device=x.device)
    else:
        y = torch.empty((batch, out_features), dtype=x.dtype, device=x.device)
    if batch > 0:
        blocks = packed.blocks(x.dtype)
        bias = packed.bias(x.dtype) if packed.bias is not None else blocks
        block_rows = packed.block_row_offsets.shape[0] - 1
        grid = lambda meta: (block_rows, triton.cdiv(batch, meta["BLOCK_M"]), meta["SPLIT_K"])
        runnable(_bsr_linear_kernel, x.device)[grid](
            rows, blocks, packed.block_row_offsets, packed.block_column_indices, bias, y,
            batch, in_features, out_features,
            rows.stride(0), rows.stride(1), y.stride(0), y.stride(1),
            HAS_BIAS=packed.bias is not None, BLOCK_R=block_r, BLOCK_C=block_c,
            BLOCK_M=pow2_at_most(batch, options.BLOCK_M, floor=16), SPLIT_K=options.SPLIT_K,
            INPUT_PRECISION=dot_precision(x.dtype),
            num_warps=options.num_warps, num_stages=options.num_stages,
        )
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


def bind_bsr(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind: pack once, return x -> bsr_linear(x)."""
    options = parse_options(BsrOptions, config)
    packed = pack_bsr(weight, bias, torch.device(device))
    return lambda x: bsr_linear(x, packed, options)


def bsr_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: each kept block times its slice of x, summed into its block row."""
    out_features, in_features = weight.shape
    block_r, block_c = weight.block_shape
    block_rows = weight.block_row_offsets.shape[0] - 1
    lead = x.shape[:-1]
    rows = x.reshape(-1, in_features)
    block_cols = -(-in_features // block_c)
    padded = torch.nn.functional.pad(rows, (0, block_cols * block_c - in_features))
    # x_blocks: [batch, nblocks, c] -> products: [batch, nblocks, r]
    x_blocks = padded.reshape(rows.shape[0], block_cols, block_c)[:, weight.block_column_indices.long().to(x.device)]
    products = torch.einsum("bnc,nrc->bnr", x_blocks, weight.blocks.to(x))
    owners = torch.repeat_interleave(
        torch.arange(block_rows, device=x.device), weight.block_row_offsets.diff().long().to(x.device)
    )
    y = torch.zeros(rows.shape[0], block_rows, block_r, dtype=x.dtype, device=x.device)
    y.index_add_(1, owners, products)
    y = y.reshape(rows.shape[0], block_rows * block_r)[:, :out_features].reshape(*lead, out_features)
    return y if bias is None else y + bias.to(x)
