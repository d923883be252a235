"""Permuted-block linear on the CPU: y = x @ W.T + b with W in PermutedFormat.

`pack_permuted` lays each layer's 2x2 blocks out as a diagonal and a cross plane
(see `_permuted_native`), so a layer on a SIMD register is one gather by the
permutation, one pair swap and two multiply-adds. `permuted_linear` runs every
input row through all layers in one C call, rows split over the threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats.permuted import permuted_apply
from sparse_rt.kernels.cpu._launch import bias_of, check_cpu, pointer, rows_of, shaped_like, threads
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu._permuted_native import permuted_rows
from sparse_rt.kernels.cpu.configs import RowsOptions, parse_options, rows_configs
from sparse_rt.kernels.registry import Config, Kernel, register_kernel


@dataclass(frozen=True)
class PermutedPacked:
    """A permuted-block weight ready for the C kernel.

    permutations: int32 [L, n]
    diagonal:     float32 [L, n]; [l, 2p] = blocks[l, p, 0, 0], [l, 2p + 1] = blocks[l, p, 1, 1]
    cross:        float32 [L, n]; [l, 2p] = blocks[l, p, 0, 1], [l, 2p + 1] = blocks[l, p, 1, 0]
    """

    shape: tuple[int, int]
    n: int
    permutations: torch.Tensor
    diagonal: torch.Tensor
    cross: torch.Tensor
    bias: torch.Tensor | None


def pack_permuted(weight, bias: torch.Tensor | None) -> PermutedPacked:
    """Pack a PermutedFormat (and bias [out]) for the kernel."""
    blocks = weight.blocks.to(torch.float32)
    layers, n = weight.permutations.shape
    diagonal = torch.stack([blocks[..., 0, 0], blocks[..., 1, 1]], dim=-1).reshape(layers, n)
    cross = torch.stack([blocks[..., 0, 1], blocks[..., 1, 0]], dim=-1).reshape(layers, n)
    return PermutedPacked(
        shape=tuple(weight.shape),
        n=n,
        permutations=weight.permutations.to(torch.int32).contiguous(),
        diagonal=diagonal.contiguous(),
        cross=cross.contiguous(),
        bias=bias_of(bias, weight.shape[0], "permuted_linear"),
    )


def permuted_linear(x: torch.Tensor, packed: PermutedPacked, options: RowsOptions) -> torch.Tensor:
    """x: float32 [..., in] -> y: float32 [..., out]."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, "permuted_linear")
    y = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    if rows.shape[0]:
        permuted_rows()(
            threads(), rows.shape[0], options.rows_per_task, packed.n, packed.permutations.shape[0],
            pointer(packed.permutations), pointer(packed.diagonal), pointer(packed.cross), pointer(packed.bias),
            in_features, out_features, pointer(rows), pointer(y),
        )
    return shaped_like(y, x)


def bind_permuted(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind: pack once, return x -> permuted_linear(x)."""
    check_cpu(device, "permuted_linear")
    options = parse_options(RowsOptions, config)
    packed = pack_permuted(weight, bias)
    return lambda x: permuted_linear(x, packed, options)


def permuted_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: zero-pad x to n, apply the layers (permuted_apply), keep `out` entries."""
    padded = torch.nn.functional.pad(x, (0, weight.n - weight.in_features))
    y = permuted_apply(padded, weight.permutations, weight.blocks.to(x.dtype))[..., : weight.out_features]
    return y if bias is None else y + bias.to(x.dtype)


PERMUTED_CPU_LAYERS = register_kernel(
    Kernel(
        name="permuted_cpu_layers",
        format="permuted",
        backend="cpu",
        bind=bind_permuted,
        configs=rows_configs,
        supports=lambda weight, device: native_available(),
    )
)
