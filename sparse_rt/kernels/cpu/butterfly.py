"""Butterfly linear on the CPU: y = x @ W.T + b with W in ButterflyFormat.

`pack_butterfly` folds the first log2(block) stages (block = min(VL, n); they mix
entries only within aligned blocks) into one dense block x block matrix per block,
and lays the remaining stages' twiddles out as planes (see `_butterfly_native`).
`butterfly_linear` then runs every input row through all stages in one C call,
rows split over the threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats.butterfly import butterfly_apply, butterfly_stages
from sparse_rt.kernels.cpu._butterfly_native import butterfly_rows
from sparse_rt.kernels.cpu._launch import bias_of, check_cpu, pointer, rows_of, shaped_like, threads
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.configs import RowsOptions, parse_options, rows_configs, simd_width
from sparse_rt.kernels.registry import Config, Kernel, register_kernel


@dataclass(frozen=True)
class ButterflyPacked:
    """A butterfly weight ready for the C kernel.

    block:  entries per fused block, min(VL, n)
    fused:  float32 [n / block, block, block]; fused[b, j] is column j of block b's matrix
            (the product of the first log2(block) stages restricted to that block)
    stages: float32 [L - log2(block), 4, n / 2]; stages[s, q, p] = twiddles[log2(block) + s,
            p, q // 2, q % 2]
    """

    shape: tuple[int, int]
    n: int
    block: int
    fused: torch.Tensor
    stages: torch.Tensor
    bias: torch.Tensor | None


def pack_butterfly(weight, bias: torch.Tensor | None) -> ButterflyPacked:
    """Pack a ButterflyFormat (and bias [out]) for the kernel."""
    twiddles = weight.twiddles.to(torch.float64)
    stages, n = twiddles.shape[0], weight.n
    block = min(simd_width(), n)
    folded = block.bit_length() - 1
    # row j: the unit vector at offset j of every block; after the folded stages, entry
    # b * block + i of row j is M_b[i, j]
    probes = torch.eye(block, dtype=torch.float64).repeat(1, n // block)
    columns = butterfly_stages(probes, twiddles, folded)  # [block (j), n]
    fused = columns.reshape(block, n // block, block).permute(1, 0, 2)
    later = twiddles[folded:].reshape(stages - folded, n // 2, 4).permute(0, 2, 1)
    return ButterflyPacked(
        shape=tuple(weight.shape),
        n=n,
        block=block,
        fused=fused.to(torch.float32).contiguous(),
        stages=later.to(torch.float32).contiguous(),
        bias=bias_of(bias, weight.shape[0], "butterfly_linear"),
    )


def butterfly_linear(x: torch.Tensor, packed: ButterflyPacked, options: RowsOptions) -> torch.Tensor:
    """x: float32 [..., in] -> y: float32 [..., out]."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, "butterfly_linear")
    y = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    if rows.shape[0]:
        butterfly_rows()(
            threads(), rows.shape[0], options.rows_per_task, packed.n, packed.block, pointer(packed.fused),
            packed.stages.shape[0], pointer(packed.stages), pointer(packed.bias), in_features, out_features,
            pointer(rows), pointer(y),
        )
    return shaped_like(y, x)


def bind_butterfly(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind: pack once, return x -> butterfly_linear(x)."""
    check_cpu(device, "butterfly_linear")
    options = parse_options(RowsOptions, config)
    packed = pack_butterfly(weight, bias)
    return lambda x: butterfly_linear(x, packed, options)


def butterfly_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: zero-pad x to n, apply the stages (butterfly_apply), keep `out` entries."""
    padded = torch.nn.functional.pad(x, (0, weight.n - weight.in_features))
    y = butterfly_apply(padded, weight.twiddles.to(x.dtype))[..., : weight.out_features]
    return y if bias is None else y + bias.to(x.dtype)


BUTTERFLY_CPU_STAGES = register_kernel(
    Kernel(
        name="butterfly_cpu_stages",
        format="butterfly",
        backend="cpu",
        bind=bind_butterfly,
        configs=rows_configs,
        supports=lambda weight, device: native_available(),
    )
)
