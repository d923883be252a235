"""Int8 CSR linear on the CPU: y = x @ W.T + b with W in CsrInt8Format.

`pack_csr_int8` pads each row's nonzeros to groups of 4 (weight 0 on a valid column), the
unit of the kernels' 4-wide int8 dot products, and sums each row (for the activations'
zero points). `csr_int8_linear` quantizes x per token in C (fused with the
transposition into column tiles), runs the int32 kernel of `_int8_native` and
dequantizes, adds the bias and applies GELU in its epilogue. See `sparse_rt.kernels.int8`
for the arithmetic and `int8_linear_reference` for the plain torch version.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats.csr import CsrFormat
from sparse_rt.kernels.cpu import _int8_native as native
from sparse_rt.kernels.cpu._launch import (
    TaskSplit, bias_of, check_activation, check_cpu, pointer, rows_of, shaped_like, threads, tile_tasks,
)
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.configs import Int8CsrOptions, int8_csr_configs, parse_options
from sparse_rt.kernels.cpu.gelu import gelu_erf
from sparse_rt.kernels.int8 import int8_linear_reference
from sparse_rt.kernels.registry import Config, Kernel, register_kernel

# Cost of a row beyond its groups (set-up, epilogue, store), in groups, for the task split.
ROW_OVERHEAD = 4


@dataclass(frozen=True)
class CsrInt8Packed:
    """An int8 CSR weight ready for the C kernels.

    group_offsets: int64 [out + 1], row r holds groups group_offsets[r]:group_offsets[r+1]
    columns:       uint16 (in <= 65536) or int32 [groups * 4]
    values:        int8 [groups * 4]
    row_sums:      int32 [out], the row's sum of values
    scales:        float32 [out]; bias float32 [out] or None
    """

    shape: tuple[int, int]
    index: str
    group_offsets: torch.Tensor
    columns: torch.Tensor
    values: torch.Tensor
    row_sums: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None
    tasks: TaskSplit


def pack_csr_int8(weight, bias: torch.Tensor | None, options: Int8CsrOptions) -> CsrInt8Packed:
    """Pad the rows of a CsrInt8Format to groups of 4 and pack them (and bias [out])."""
    out_features, in_features = weight.shape
    lengths = weight.row_offsets.diff().long()
    groups = (lengths + 3) // 4
    group_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), groups.cumsum(0)])
    total = int(group_offsets[-1]) * 4
    rows = torch.repeat_interleave(torch.arange(out_features), lengths)
    within = torch.arange(weight.nnz) - weight.row_offsets.long()[:-1].repeat_interleave(lengths)
    slots = group_offsets[:-1].repeat_interleave(lengths) * 4 + within
    index_dtype = torch.int32 if in_features > 65536 else torch.uint16
    columns = torch.zeros(total, dtype=torch.int32)
    values = torch.zeros(total, dtype=torch.int8)
    columns[slots] = weight.column_indices.to(torch.int32)
    values[slots] = weight.values
    row_sums = torch.zeros(out_features, dtype=torch.int64).index_add_(0, rows, weight.values.to(torch.int64))
    return CsrInt8Packed(
        shape=(out_features, in_features),
        index="i32" if index_dtype == torch.int32 else "u16",
        group_offsets=group_offsets,
        columns=columns.to(index_dtype).contiguous(),
        values=values,
        row_sums=row_sums.to(torch.int32),
        scales=weight.scales.to(torch.float32).contiguous(),
        bias=bias_of(bias, out_features, "csr_int8_linear"),
        tasks=TaskSplit(groups + ROW_OVERHEAD, options.tasks_per_thread),
    )


def csr_int8_linear(x: torch.Tensor, packed: CsrInt8Packed, gelu: bool = False) -> torch.Tensor:
    """x float32 [..., in] -> y float32 [..., out] (GELU of it with gelu); see the module text."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, "csr_int8_linear")
    batch = rows.shape[0]
    y = torch.empty(batch, out_features, dtype=torch.float32)
    if batch == 0:
        return shaped_like(y, x)
    num_threads = threads()
    split = packed.tasks(num_threads)
    if batch == 1:
        scale, q = native.centred_token(rows)
        native.csr_gemv(packed.index)(
            num_threads, split.shape[0] - 1, pointer(split), pointer(packed.group_offsets), pointer(packed.columns),
            pointer(packed.values), pointer(packed.scales), pointer(packed.bias), in_features, out_features,
            pointer(scale), pointer(q), pointer(y),
        )
        return shaped_like(gelu_erf(y) if gelu else y, x)
    native.check_status(native.csr_gemm(packed.index)(
        num_threads, *tile_tasks(split, batch, native.lanes(), num_threads), pointer(packed.group_offsets), pointer(packed.columns),
        pointer(packed.values), pointer(packed.row_sums), pointer(packed.scales), pointer(packed.bias), batch,
        in_features, out_features, pointer(rows), pointer(y), int(gelu),
    ), "csr_int8_linear")
    return shaped_like(y, x)


def bind_csr_int8(weight, bias: torch.Tensor | None, config: Config, device: torch.device,
                  activation: str | None = None):
    """Kernel.bind: pack once, return x -> csr_int8_linear(x) (GELU'd for activation "gelu")."""
    check_cpu(device, "csr_int8_linear")
    check_activation(activation, "csr_int8_linear")
    packed = pack_csr_int8(weight, bias, parse_options(Int8CsrOptions, config))
    gelu = activation == "gelu"
    return lambda x: csr_int8_linear(x, packed, gelu)


def csr_int8_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: the int8 product of the quantized x and the CSR's int8 values, dequantized."""
    dense = CsrFormat(weight.shape, weight.row_offsets, weight.column_indices, weight.values).to_dense()  # int8
    return int8_linear_reference(x, dense, weight.scales, bias)


CSR_INT8_CPU = register_kernel(
    Kernel(
        name="csr_int8_cpu",
        format="csr_int8",
        backend="cpu",
        bind=bind_csr_int8,
        configs=int8_csr_configs,
        supports=lambda weight, device: native_available(),
        activations=("gelu",),
    )
)
