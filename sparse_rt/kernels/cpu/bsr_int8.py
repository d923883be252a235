"""Int8 BSR (1x4 blocks) linear on the CPU: y = x @ W.T + b with W in BsrInt8Format.

`bsr_int8_linear` quantizes x per token in C into the quad tiles the int8 dense kernel
reads (each token's four consecutive inputs together), then each block of W is one 4-wide
int8 dot product with the quad of its inputs as it stands there: no gathering and
interleaving of columns, which int8 CSR pays for every four nonzeros. One token gathers
its quads as int32, eight blocks at a time. See `sparse_rt.kernels.int8` for the
arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats.bsr_int8 import quads_of
from sparse_rt.kernels.cpu import _int8_native as native
from sparse_rt.kernels.cpu._launch import (
    TaskSplit, bias_of, check_activation, check_cpu, pointer, rows_of, shaped_like, threads, tile_tasks,
)
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.configs import Int8CsrOptions, int8_csr_configs, parse_options
from sparse_rt.kernels.cpu.csr_int8 import ROW_OVERHEAD
from sparse_rt.kernels.cpu.gelu import gelu_erf
from sparse_rt.kernels.int8 import int8_linear_reference
from sparse_rt.kernels.registry import Config, Kernel, register_kernel


@dataclass(frozen=True)
class BsrInt8Packed:
    """An int8 BSR weight ready for the C kernels.

    block_offsets: int64 [out + 1]; block_columns: uint16 (quads <= 65536) or int32 [blocks]
    values:        int8 [blocks * 4]; row_sums: int32 [out], the row's sum of values
    scales:        float32 [out]; bias float32 [out] or None
    """

    shape: tuple[int, int]
    quads: int
    index: str
    block_offsets: torch.Tensor
    block_columns: torch.Tensor
    values: torch.Tensor
    row_sums: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None
    tasks: TaskSplit


def pack_bsr_int8(weight, bias: torch.Tensor | None, options: Int8CsrOptions) -> BsrInt8Packed:
    """Pack a BsrInt8Format (and bias [out]); tasks balance blocks across rows."""
    out_features, in_features = weight.shape
    quads = quads_of(in_features)
    index_dtype = torch.int32 if quads > 65536 else torch.uint16
    block_sums = weight.values.to(torch.int64).sum(dim=1)
    rows = torch.repeat_interleave(torch.arange(out_features), weight.row_offsets.diff().long())
    row_sums = torch.zeros(out_features, dtype=torch.int64).index_add_(0, rows, block_sums)
    return BsrInt8Packed(
        shape=(out_features, in_features),
        quads=quads,
        index="i32" if index_dtype == torch.int32 else "u16",
        block_offsets=weight.row_offsets.to(torch.int64).contiguous(),
        block_columns=weight.block_columns.to(torch.int32).to(index_dtype).contiguous(),
        values=weight.values.reshape(-1).contiguous(),
        row_sums=row_sums.to(torch.int32),
        scales=weight.scales.to(torch.float32).contiguous(),
        bias=bias_of(bias, out_features, "bsr_int8_linear"),
        tasks=TaskSplit(weight.row_offsets.diff().long() + ROW_OVERHEAD, options.tasks_per_thread),
    )


def bsr_int8_linear(x: torch.Tensor, packed: BsrInt8Packed, gelu: bool = False) -> torch.Tensor:
    """x float32 [..., in] -> y float32 [..., out] (GELU of it with gelu); see the module text."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, "bsr_int8_linear")
    batch = rows.shape[0]
    y = torch.empty(batch, out_features, dtype=torch.float32)
    if batch == 0:
        return shaped_like(y, x)
    num_threads = threads()
    split = packed.tasks(num_threads)
    if batch == 1:
        scale, zero, q8 = native.quantized_token(rows, -(-in_features // 32) * 32)
        native.bsr_gemv(packed.index)(
            num_threads, split.shape[0] - 1, pointer(split), pointer(packed.block_offsets),
            pointer(packed.block_columns), pointer(packed.values), pointer(packed.row_sums),
            pointer(packed.scales), pointer(packed.bias), out_features, pointer(scale), pointer(zero), pointer(q8),
            pointer(y),
        )
        return shaped_like(gelu_erf(y) if gelu else y, x)
    native.check_status(native.bsr_gemm(packed.index)(
        num_threads, *tile_tasks(split, batch, native.lanes(), num_threads), pointer(packed.block_offsets), pointer(packed.block_columns),
        pointer(packed.values), pointer(packed.row_sums), pointer(packed.scales), pointer(packed.bias), batch,
        in_features, packed.quads, out_features, pointer(rows), pointer(y), int(gelu),
    ), "bsr_int8_linear")
    return shaped_like(y, x)


def bind_bsr_int8(weight, bias: torch.Tensor | None, config: Config, device: torch.device,
                  activation: str | None = None):
    """Kernel.bind: pack once, return x -> bsr_int8_linear(x) (GELU'd for activation "gelu")."""
    check_cpu(device, "bsr_int8_linear")
    check_activation(activation, "bsr_int8_linear")
    packed = pack_bsr_int8(weight, bias, parse_options(Int8CsrOptions, config))
    gelu = activation == "gelu"
    return lambda x: bsr_int8_linear(x, packed, gelu)


def bsr_int8_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: the int8 product of the quantized x and the blocks' int8 values, dequantized."""
    return int8_linear_reference(x, weight.quantized(), weight.scales, bias)


BSR_INT8_CPU = register_kernel(
    Kernel(
        name="bsr_int8_cpu",
        format="bsr_int8",
        backend="cpu",
        bind=bind_bsr_int8,
        configs=int8_csr_configs,
        supports=lambda weight, device: native_available(),
        activations=("gelu",),
    )
)
