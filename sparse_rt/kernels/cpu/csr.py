"""CSR linear on the CPU: y = x @ W.T + b with W in CsrFormat.

`pack_csr` converts the arrays once per layer (int64 row offsets, float32 values,
column indices kept in their narrow int8/int16/int32 dtype, which the kernels widen
in registers) and splits the rows into tasks of about equal nonzeros. `csr_linear`
runs the C kernels of `_csr_native`: one input row takes the gather dot product
kernel; several take the transposed-input kernel, where each nonzero is a
contiguous batch-wide multiply-add.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.kernels.cpu._csr_native import csr_gemm, csr_gemv
from sparse_rt.kernels.cpu._launch import (
    TaskSplit,
    bias_of,
    check_activation,
    check_cpu,
    pointer,
    rows_of,
    shaped_like,
    threads,
)
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.configs import CsrOptions, csr_configs, parse_options, simd_width
from sparse_rt.kernels.cpu.gelu import gelu_float32
from sparse_rt.kernels.registry import Config, Kernel, register_kernel

INDEX_NAMES = {torch.int8: "i8", torch.int16: "i16", torch.int32: "i32"}
# Cost of a row beyond its nonzeros (loop set-up, reduction, store), in nonzeros, for the split.
ROW_OVERHEAD = 8


@dataclass(frozen=True)
class CsrPacked:
    """A CSR weight ready for the C kernels.

    row_offsets:    int64 [out + 1]
    column_indices: int8/int16/int32 [nnz] (named by `index`: "i8", "i16", "i32")
    values:         float32 [nnz]
    bias:           float32 [out] or None
    tasks:          row boundaries per thread count, balancing nonzeros
    """

    shape: tuple[int, int]
    index: str
    row_offsets: torch.Tensor
    column_indices: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor | None
    tasks: TaskSplit


def pack_csr_arrays(
    shape: tuple[int, int],
    row_offsets: torch.Tensor,
    column_indices: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    options: CsrOptions,
    what: str = "csr_linear",
) -> CsrPacked:
    """Pack raw CSR arrays (as in CsrFormat) and bias [out] for the kernels."""
    if column_indices.dtype not in INDEX_NAMES:
        raise ValueError(
            f"{what}: expected column_indices of dtype int8, int16 or int32, got {column_indices.dtype}"
        )
    out_features, in_features = shape
    row_offsets = row_offsets.to(torch.int64).contiguous()
    column_indices = column_indices.contiguous()
    values = values.to(torch.float32).contiguous()
    return CsrPacked(
        shape=(out_features, in_features),
        index=INDEX_NAMES[column_indices.dtype],
        row_offsets=row_offsets,
        column_indices=column_indices,
        values=values,
        bias=bias_of(bias, out_features, what),
        tasks=TaskSplit(row_offsets.diff() + ROW_OVERHEAD, options.tasks_per_thread),
    )


def pack_csr(weight, bias: torch.Tensor | None, options: CsrOptions) -> CsrPacked:
    """Pack a CsrFormat (and bias [out]) for the kernels."""
    return pack_csr_arrays(weight.shape, weight.row_offsets, weight.column_indices, weight.values, bias, options)


def csr_rows_linear(rows: torch.Tensor, packed: CsrPacked, options: CsrOptions, gelu: bool = False) -> torch.Tensor:
    """rows: contiguous float32 [batch, in] -> y: float32 [batch, out] (GELU of it with gelu)."""
    out_features, in_features = packed.shape
    batch = rows.shape[0]
    y = torch.empty(batch, out_features, dtype=torch.float32)
    if batch == 0:
        return y
    num_threads = threads()
    split = packed.tasks(num_threads)
    if batch == 1:
        csr_gemv(packed.index, options.unroll)(
            num_threads, split.shape[0] - 1, pointer(split), pointer(packed.row_offsets),
            pointer(packed.column_indices), pointer(packed.values), pointer(packed.bias), pointer(rows), pointer(y),
        )
        return gelu_float32(y) if gelu else y
    width = simd_width()
    # xT scratch: [in, batch padded to the SIMD width]
    transposed = torch.empty(in_features * (-(-batch // width) * width), dtype=torch.float32)
    csr_gemm(packed.index)(
        num_threads, split.shape[0] - 1, pointer(split), pointer(packed.row_offsets),
        pointer(packed.column_indices), pointer(packed.values), pointer(packed.bias), batch, in_features,
        out_features, pointer(rows), pointer(y), pointer(transposed), options.batch_vectors, int(gelu),
    )
    return y


def csr_linear(x: torch.Tensor, packed: CsrPacked, options: CsrOptions, gelu: bool = False) -> torch.Tensor:
    """x: float32 [..., in] -> y: float32 [..., out] (GELU of it with gelu)."""
    y = csr_rows_linear(rows_of(x, packed.shape[1], "csr_linear"), packed, options, gelu)
    return shaped_like(y, x)


def bind_csr(weight, bias: torch.Tensor | None, config: Config, device: torch.device, activation: str | None = None):
    """Kernel.bind: pack once, return x -> csr_linear(x) (GELU'd for activation "gelu")."""
    check_cpu(device, "csr_linear")
    check_activation(activation, "csr_linear")
    options = parse_options(CsrOptions, config)
    packed = pack_csr(weight, bias, options)
    gelu = activation == "gelu"
    return lambda x: csr_linear(x, packed, options, gelu)


def csr_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: scatter-add values[k] * x[..., column_indices[k]] into the row of entry k."""
    out_features, _ = weight.shape
    rows = torch.repeat_interleave(torch.arange(out_features), weight.row_offsets.diff().long())
    products = x[..., weight.column_indices.long()] * weight.values.to(x.dtype)
    y = torch.zeros(*x.shape[:-1], out_features, dtype=x.dtype)
    y.index_add_(-1, rows, products)
    return y if bias is None else y + bias.to(x.dtype)


CSR_CPU_ROWWISE = register_kernel(
    Kernel(
        name="csr_cpu_rowwise",
        format="csr",
        backend="cpu",
        bind=bind_csr,
        configs=csr_configs,
        supports=lambda weight, device: native_available() and weight.column_indices.dtype in INDEX_NAMES,
        activations=("gelu",),
    )
)
