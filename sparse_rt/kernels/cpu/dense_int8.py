"""Int8 dense linear on the CPU: y = x @ W.T + b with W in DenseInt8Format.

`pack_dense_int8` pads the rows of W to a multiple of 32 columns with zeros and sums each
row (for the activations' zero points). Batched, x is quantized per token straight
into quad tiles (each row's 4 consecutive columns together), which the kernel multiplies
4 output rows x 16 batch rows at a time; one token runs a dot product per output row.
See `sparse_rt.kernels.int8` for the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.kernels.cpu import _int8_native as native
from sparse_rt.kernels.cpu._launch import bias_of, check_activation, check_cpu, pointer, rows_of, shaped_like, threads
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.configs import Int8DenseOptions, int8_dense_configs, parse_options
from sparse_rt.kernels.cpu.gelu import gelu_erf
from sparse_rt.kernels.int8 import int8_linear_reference
from sparse_rt.kernels.registry import Config, Kernel, register_kernel


@dataclass(frozen=True)
class DenseInt8Packed:
    """weight int8 [out, in32] (zeros past in), row_sums int32 [out],
    scales float32 [out], bias float32 [out] or None."""

    shape: tuple[int, int]
    in4: int
    in32: int
    weight: torch.Tensor
    row_sums: torch.Tensor
    scales: torch.Tensor
    bias: torch.Tensor | None
    rows_per_task: int


def pack_dense_int8(weight, bias: torch.Tensor | None, options: Int8DenseOptions) -> DenseInt8Packed:
    out_features, in_features = weight.shape
    in32 = -(-in_features // 32) * 32
    padded = torch.zeros(out_features, in32, dtype=torch.int8)
    padded[:, :in_features] = weight.weight
    row_sums = weight.weight.to(torch.int64).sum(dim=1)
    return DenseInt8Packed(
        shape=(out_features, in_features), in4=-(-in_features // 4) * 4, in32=in32, weight=padded,
        row_sums=row_sums.to(torch.int32), scales=weight.scales.to(torch.float32).contiguous(),
        bias=bias_of(bias, out_features, "dense_int8_linear"), rows_per_task=options.rows_per_task,
    )


def dense_int8_linear(x: torch.Tensor, packed: DenseInt8Packed, gelu: bool = False) -> torch.Tensor:
    """x float32 [..., in] -> y float32 [..., out] (GELU of it with gelu)."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, "dense_int8_linear")
    batch = rows.shape[0]
    y = torch.empty(batch, out_features, dtype=torch.float32)
    if batch == 0:
        return shaped_like(y, x)
    num_threads = threads()
    if batch == 1:
        scale, zero, q8 = native.quantized_token(rows, packed.in32)
        native.dense_gemv()(num_threads, packed.rows_per_task, pointer(packed.weight), pointer(packed.row_sums),
                            pointer(packed.scales), pointer(packed.bias), packed.in32, out_features, pointer(scale),
                            pointer(zero), pointer(q8), pointer(y))
        return shaped_like(gelu_erf(y) if gelu else y, x)
    native.check_status(native.dense_gemm()(
        num_threads, packed.rows_per_task, pointer(packed.weight), pointer(packed.row_sums), pointer(packed.scales),
        pointer(packed.bias), batch, in_features, packed.in4, packed.in32, out_features, pointer(rows), pointer(y),
        int(gelu),
    ), "dense_int8_linear")
    return shaped_like(y, x)


def bind_dense_int8(weight, bias: torch.Tensor | None, config: Config, device: torch.device,
                    activation: str | None = None):
    """Kernel.bind: pack once, return x -> dense_int8_linear(x) (GELU'd for activation "gelu")."""
    check_cpu(device, "dense_int8_linear")
    check_activation(activation, "dense_int8_linear")
    packed = pack_dense_int8(weight, bias, parse_options(Int8DenseOptions, config))
    gelu = activation == "gelu"
    return lambda x: dense_int8_linear(x, packed, gelu)


def dense_int8_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: the int8 product of the quantized x and W's int8 values, dequantized."""
    return int8_linear_reference(x, weight.weight, weight.scales, bias)


DENSE_INT8_CPU = register_kernel(
    Kernel(
        name="dense_int8_cpu",
        format="dense_int8",
        backend="cpu",
        bind=bind_dense_int8,
        configs=int8_dense_configs,
        supports=lambda weight, device: native_available(),
        activations=("gelu",),
    )
)
