"""Bitmask linear on Triton: y = x @ W.T + b with W in BitmaskFormat.

One program computes a [BLOCK_B, BLOCK_O] output tile. It reads each row's mask BLOCK_K
columns at a time, finds every set bit's packed value (the row's running count plus a
prefix sum of the bits), and multiplies the contiguous x columns by the expanded values:
the weight streams as its own bytes (values and one bit per column).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from sparse_rt.kernels.registry import Config
from sparse_rt.kernels.triton._bitmask_kernels import _bitmask_linear_kernel
from sparse_rt.kernels.triton._launch import DtypeCopies, pow2_at_most, rows_of, runnable
from sparse_rt.kernels.triton.configs import BitmaskOptions, parse_options


@dataclass(frozen=True)
class BitmaskPacked:
    """A bitmask weight on its device: mask uint8 [out, row_bytes], row_offsets int64 [out + 1],
    values [nnz + padding] (the format's arrays)."""

    shape: tuple[int, int]
    device: torch.device
    mask: torch.Tensor
    row_offsets: torch.Tensor
    values: DtypeCopies
    bias: DtypeCopies | None


def pack_bitmask(weight, bias: torch.Tensor | None, device: torch.device) -> BitmaskPacked:
    """Move a BitmaskFormat (and bias [out]) to `device`."""
    return BitmaskPacked(
        shape=tuple(weight.shape),
        device=device,
        mask=weight.mask.contiguous().to(device),
        row_offsets=weight.row_offsets.to(torch.int64).contiguous().to(device),
        values=DtypeCopies(weight.values.contiguous().to(device)),
        bias=None if bias is None else DtypeCopies(bias.detach().to(device)),
    )


def bitmask_linear(x: torch.Tensor, packed: BitmaskPacked, options: BitmaskOptions) -> torch.Tensor:
    """x: [..., in] on packed.device -> y: [..., out] in x's dtype."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, packed.device, "bitmask_linear")
    batch = rows.shape[0]
    y = torch.empty((batch, out_features), dtype=x.dtype, device=x.device)
    if batch > 0:
        values = packed.values(x.dtype)
        bias = packed.bias(x.dtype) if packed.bias is not None else values
        grid = lambda meta: (triton.cdiv(out_features, meta["BLOCK_O"]), triton.cdiv(batch, meta["BLOCK_B"]))
        runnable(_bitmask_linear_kernel, x.device)[grid](
            rows, packed.mask, packed.row_offsets, values, bias, y,
            batch, in_features, out_features,
            rows.stride(0), rows.stride(1), packed.mask.stride(0), y.stride(0), y.stride(1),
            HAS_BIAS=packed.bias is not None,
            BLOCK_B=pow2_at_most(batch, options.BLOCK_B), BLOCK_O=options.BLOCK_O, BLOCK_K=options.BLOCK_K,
            num_warps=options.num_warps, num_stages=options.num_stages,
        )
    return y.reshape(*x.shape[:-1], out_features)


def bind_bitmask(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind: pack once, return x -> bitmask_linear(x)."""
    options = parse_options(BitmaskOptions, config)
    packed = pack_bitmask(weight, bias, torch.device(device))
    return lambda x: bitmask_linear(x, packed, options)


def bitmask_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: the dense weight rebuilt from mask and values (BitmaskFormat.to_dense), then x @ W.T + b."""
    y = x @ weight.to_dense().to(x).T
    return y if bias is None else y + bias.to(x)
