"""Butterfly linear on Triton: y = x @ W.T + b with W in ButterflyFormat.

Two schedules (configs say which). "fused": one kernel; each program keeps
BLOCK_M rows of activations, zero-padded to n, in registers through all log2(n)
stages (the config space offers it while n <= configs.MAX_FUSED_WIDTH).
"staged": one launch per stage over [BLOCK_M, BLOCK_P pairs] tiles, through an
fp32 work buffer [batch, n], for any n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from sparse_rt.formats.butterfly import butterfly_apply
from sparse_rt.kernels.registry import Config
from sparse_rt.kernels.triton._butterfly_kernels import (
    _butterfly_fused_kernel,
    _butterfly_stage_kernel,
)
from sparse_rt.kernels.triton._launch import pow2_at_most, rows_of, runnable
from sparse_rt.kernels.triton.configs import FusedOptions, StagedOptions, parse_schedule


@dataclass(frozen=True)
class ButterflyPacked:
    """A butterfly weight on its device: float32 twiddles [L, 4, n/2] (planar, see _butterfly_kernels)."""

    shape: tuple[int, int]
    device: torch.device
    twiddles: torch.Tensor
    bias: torch.Tensor | None


def pack_butterfly(weight, bias: torch.Tensor | None, device: torch.device) -> ButterflyPacked:
    """Move a ButterflyFormat (and bias [out]) to `device` with planar float32 twiddles.

    A 0-stage butterfly (n = 1) becomes one identity stage of width 2, the same map.
    """
    twiddles = weight.twiddles.float()
    if twiddles.shape[0] == 0:
        twiddles = torch.eye(2).reshape(1, 1, 2, 2)
    stages, half = twiddles.shape[:2]
    return ButterflyPacked(
        shape=tuple(weight.shape),
        device=device,
        twiddles=twiddles.permute(0, 2, 3, 1).reshape(stages, 4, half).contiguous().to(device),
        bias=None if bias is None else bias.detach().contiguous().to(device),
    )


def butterfly_linear(
    x: torch.Tensor, packed: ButterflyPacked, options: FusedOptions | StagedOptions
) -> torch.Tensor:
    """x: [..., in] on packed.device -> y: [..., out] in x's dtype."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, packed.device, "butterfly_linear")
    batch = rows.shape[0]
    y = torch.empty((batch, out_features), dtype=x.dtype, device=x.device)
    if batch > 0:
        if isinstance(options, FusedOptions):
            _launch_fused(rows, packed, options, y)
        else:
            _launch_staged(rows, packed, options, y)
    return y.reshape(*x.shape[:-1], out_features)


def _launch_fused(rows: torch.Tensor, packed: ButterflyPacked, options: FusedOptions, y: torch.Tensor) -> None:
    batch = rows.shape[0]
    stages, _, half = packed.twiddles.shape
    bias = packed.bias if packed.bias is not None else packed.twiddles
    grid = lambda meta: (triton.cdiv(batch, meta["BLOCK_M"]),)
    runnable(_butterfly_fused_kernel, rows.device)[grid](
        rows, packed.twiddles, bias, y,
        batch, packed.shape[1], packed.shape[0],
        rows.stride(0), rows.stride(1), y.stride(0), y.stride(1),
        N=2 * half, LOG_N=stages, HAS_BIAS=packed.bias is not None,
        BLOCK_M=pow2_at_most(batch, options.BLOCK_M), num_warps=options.num_warps,
    )


def _launch_staged(rows: torch.Tensor, packed: ButterflyPacked, options: StagedOptions, y: torch.Tensor) -> None:
    batch = rows.shape[0]
    stages, _, half = packed.twiddles.shape
    work = torch.empty((batch, 2 * half), dtype=torch.float32, device=rows.device) if stages > 1 else y
    block_p = pow2_at_most(half, options.BLOCK_P)
    block_m = pow2_at_most(batch, options.BLOCK_M)
    grid = (triton.cdiv(half, block_p), triton.cdiv(batch, block_m))
    kernel = runnable(_butterfly_stage_kernel, rows.device)
    for stage in range(stages):
        src, src_cols = (rows, packed.shape[1]) if stage == 0 else (work, 2 * half)
        last = stage == stages - 1
        dst, dst_cols = (y, packed.shape[0]) if last else (work, 2 * half)
        has_bias = last and packed.bias is not None
        kernel[grid](
            src, packed.twiddles[stage], packed.bias if has_bias else packed.twiddles, dst,
            batch, src_cols, dst_cols, half, 1 << stage,
            src.stride(0), src.stride(1), dst.stride(0), dst.stride(1),
            HAS_BIAS=has_bias, BLOCK_M=block_m, BLOCK_P=block_p, num_warps=options.num_warps,
        )


def bind_butterfly(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind: pack once, return x -> butterfly_linear(x)."""
    options = parse_schedule(config)
    packed = pack_butterfly(weight, bias, torch.device(device))
    return lambda x: butterfly_linear(x, packed, options)


def butterfly_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: pad x to n, apply the stages (formats.butterfly.butterfly_apply), keep out."""
    padded = torch.nn.functional.pad(x, (0, weight.n - weight.in_features))
    y = butterfly_apply(padded, weight.twiddles.to(x))[..., : weight.out_features]
    return y if bias is None else y + bias.to(x)
