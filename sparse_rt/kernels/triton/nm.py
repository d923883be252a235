"""N:M linear on Triton: y = x @ W.T + b with W in NmFormat (2:4 and any other N:M).

One program computes a [BLOCK_B, BLOCK_O] output tile. It streams each row's
kept values and in-group positions, BLOCK_K at a time, and gathers the matching
input columns (k // n) * m + position: only kept columns are read, and only
kept values multiplied.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from sparse_rt.kernels.registry import Config
from sparse_rt.kernels.triton._launch import (
    DtypeCopies,
    pow2_at_most,
    rows_of,
    runnable,
)
from sparse_rt.kernels.triton._nm_kernels import _nm_linear_kernel
from sparse_rt.kernels.triton.configs import NmOptions, parse_options


@dataclass(frozen=True)
class NmPacked:
    """An N:M weight on its device: values [out, groups*n] and int8 indices of the same shape."""

    shape: tuple[int, int]
    n: int
    m: int
    device: torch.device
    values: DtypeCopies
    indices: torch.Tensor
    bias: DtypeCopies | None


def pack_nm(weight, bias: torch.Tensor | None, device: torch.device) -> NmPacked:
    """Move an NmFormat (and bias [out]) to `device`."""
    return NmPacked(
        shape=tuple(weight.shape),
        n=weight.n,
        m=weight.m,
        device=device,
        values=DtypeCopies(weight.values.contiguous().to(device)),
        indices=weight.indices.contiguous().to(device),
        bias=None if bias is None else DtypeCopies(bias.detach().to(device)),
    )


def nm_linear(x: torch.Tensor, packed: NmPacked, options: NmOptions) -> torch.Tensor:
    """x: [..., in] on packed.device -> y: [..., out] in x's dtype."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, packed.device, "nm_linear")
    batch = rows.shape[0]
    y = torch.empty((batch, out_features), dtype=x.dtype, device=x.device)
    values = packed.values(x.dtype)
    kept = values.shape[1]
    if batch > 0:
        bias = packed.bias(x.dtype) if packed.bias is not None else values
        grid = lambda meta: (triton.cdiv(out_features, meta["BLOCK_O"]), triton.cdiv(batch, meta["BLOCK_B"]))
        runnable(_nm_linear_kernel, x.device)[grid](
            rows, values, packed.indices, bias, y,
            batch, in_features, out_features, kept,
            rows.stride(0), rows.stride(1), values.stride(0), y.stride(0), y.stride(1),
            N=packed.n, M=packed.m, HAS_BIAS=packed.bias is not None,
            BLOCK_B=pow2_at_most(batch, options.BLOCK_B), BLOCK_O=options.BLOCK_O, BLOCK_K=options.BLOCK_K,
            num_warps=options.num_warps, num_stages=options.num_stages,
        )
    return y.reshape(*x.shape[:-1], out_features)


def bind_nm(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind: pack once, return x -> nm_linear(x)."""
    options = parse_options(NmOptions, config)
    packed = pack_nm(weight, bias, torch.device(device))
    return lambda x: nm_linear(x, packed, options)


def nm_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: gather x at column (k // n) * m + indices[o, k] and weight it by values[o, k]."""
    in_features = weight.shape[1]
    kept = weight.values.shape[1]
    groups = kept // weight.n
    cols = (torch.arange(kept) // weight.n * weight.m)[None, :] + weight.indices.long()
    padded = torch.nn.functional.pad(x, (0, groups * weight.m - in_features))
    # gathered: [..., out, kept]
    gathered = padded[..., cols.to(x.device)]
    y = (gathered * weight.values.to(x)).sum(-1)
    return y if bias is None else y + bias.to(x)
