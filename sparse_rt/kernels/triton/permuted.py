"""Permuted-block linear on Triton: y = x @ W.T + b with W in PermutedFormat.

Two schedules (configs say which). "fused": one kernel; each program keeps
BLOCK_M rows of activations, zero-padded to a power-of-two width, in registers
through all L layers (tl.gather by the layer's permutation, then the 2x2 blocks);
the config space offers it while that width <= configs.MAX_GATHER_WIDTH.
"staged": one launch per layer over [BLOCK_M, BLOCK_P pairs] tiles, gathering
from global memory between two fp32 work buffers [batch, n], for any n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from sparse_rt.formats.base import narrowest_index_dtype
from sparse_rt.formats.permuted import permuted_apply
from sparse_rt.kernels.registry import Config
from sparse_rt.kernels.triton._launch import pow2_at_most, rows_of, runnable
from sparse_rt.kernels.triton._permuted_kernels import (
    _permuted_fused_kernel,
    _permuted_layer_kernel,
)
from sparse_rt.kernels.triton.configs import FusedOptions, StagedOptions, parse_schedule


@dataclass(frozen=True)
class PermutedPacked:
    """A permuted-block weight on its device, padded to width N = next_power_of_2(n):
    permutations [L, N] (identity past n), float32 blocks [L, 4, N/2] planar (zero past n/2)."""

    shape: tuple[int, int]
    n: int
    device: torch.device
    permutations: torch.Tensor
    blocks: torch.Tensor
    bias: torch.Tensor | None


def pack_permuted(weight, bias: torch.Tensor | None, device: torch.device) -> PermutedPacked:
    """Move a PermutedFormat (and bias [out]) to `device`, padded to a power-of-two width.

    A 0-layer network (G = identity) becomes one identity layer, the same map.
    """
    permutations, blocks = weight.permutations.long(), weight.blocks.float()
    layers, n = permutations.shape
    if layers == 0:
        permutations = torch.arange(n)[None, :]
        blocks = torch.eye(2).expand(1, n // 2, 2, 2)
        layers = 1
    width = triton.next_power_of_2(n)
    padded_permutations = torch.arange(width).repeat(layers, 1)
    padded_permutations[:, :n] = permutations
    padded_blocks = torch.zeros(layers, 4, width // 2)
    padded_blocks[:, :, : n // 2] = blocks.permute(0, 2, 3, 1).reshape(layers, 4, n // 2)
    return PermutedPacked(
        shape=tuple(weight.shape),
        n=n,
        device=device,
        permutations=padded_permutations.to(narrowest_index_dtype(width - 1)).to(device),
        blocks=padded_blocks.to(device),
        bias=None if bias is None else bias.detach().contiguous().to(device),
    )


def permuted_linear(
    x: torch.Tensor, packed: PermutedPacked, options: FusedOptions | StagedOptions
) -> torch.Tensor:
    """x: [..., in] on packed.device -> y: [..., out] in x's dtype."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, packed.device, "permuted_linear")
    batch = rows.shape[0]
    y = torch.empty((batch, out_features), dtype=x.dtype, device=x.device)
    if batch > 0:
        if isinstance(options, FusedOptions):
            _launch_fused(rows, packed, options, y)
        else:
            _launch_staged(rows, packed, options, y)
    return y.reshape(*x.shape[:-1], out_features)


def _launch_fused(rows: torch.Tensor, packed: PermutedPacked, options: FusedOptions, y: torch.Tensor) -> None:
    batch = rows.shape[0]
    layers, width = packed.permutations.shape
    bias = packed.bias if packed.bias is not None else packed.blocks
    grid = lambda meta: (triton.cdiv(batch, meta["BLOCK_M"]),)
    runnable(_permuted_fused_kernel, rows.device)[grid](
        rows, packed.permutations, packed.blocks, bias, y,
        batch, packed.shape[1], packed.shape[0], layers,
        rows.stride(0), rows.stride(1), y.stride(0), y.stride(1),
        N=width, HAS_BIAS=packed.bias is not None,
        BLOCK_M=pow2_at_most(batch, options.BLOCK_M), num_warps=options.num_warps,
    )


def _launch_staged(rows: torch.Tensor, packed: PermutedPacked, options: StagedOptions, y: torch.Tensor) -> None:
    batch = rows.shape[0]
    layers = packed.permutations.shape[0]
    half = packed.n // 2
    # a layer gathers from anywhere in its source, so layers alternate between two fp32 buffers
    work = [torch.empty((batch, packed.n), dtype=torch.float32, device=rows.device) for _ in range(min(layers - 1, 2))]
    block_p = pow2_at_most(half, options.BLOCK_P)
    block_m = pow2_at_most(batch, options.BLOCK_M)
    grid = (triton.cdiv(half, block_p), triton.cdiv(batch, block_m))
    kernel = runnable(_permuted_layer_kernel, rows.device)
    src, src_cols = rows, packed.shape[1]
    for layer in range(layers):
        last = layer == layers - 1
        dst, dst_cols = (y, packed.shape[0]) if last else (work[layer % 2], packed.n)
        has_bias = last and packed.bias is not None
        kernel[grid](
            src, packed.permutations[layer], packed.blocks[layer], packed.bias if has_bias else packed.blocks, dst,
            batch, src_cols, dst_cols, half, packed.blocks.shape[2],
            src.stride(0), src.stride(1), dst.stride(0), dst.stride(1),
            HAS_BIAS=has_bias, BLOCK_M=block_m, BLOCK_P=block_p, num_warps=options.num_warps,
        )
        src, src_cols = dst, dst_cols


def bind_permuted(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind: pack once, return x -> permuted_linear(x)."""
    options = parse_schedule(config)
    packed = pack_permuted(weight, bias, torch.device(device))
    return lambda x: permuted_linear(x, packed, options)


def permuted_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: pad x to n, apply the layers (formats.permuted.permuted_apply), keep out."""
    padded = torch.nn.functional.pad(x, (0, weight.n - weight.in_features))
    y = permuted_apply(padded, weight.permutations.to(x.device), weight.blocks.to(x))[..., : weight.out_features]
    return y if bias is None else y + bias.to(x)
