"""Int8 CSR, BSR (1x4) and dense linear on Triton: y = x @ W.T + b with W in CsrInt8Format,
BsrInt8Format or DenseInt8Format.

`quantize_rows` quantizes x per token (8 bits with a zero point) into a transposed int8
[in, batch] tensor holding q - 128, its scales and zero points (one program per token); the
CSR kernel then runs one row of W against a batch tile per program (a 1x4 block is four
consecutive entries of its row there), the dense kernel int8 `tl.dot` tiles, both
accumulating in int32, adding the zero point's correction (128 - zero) * sum(w) and
dequantizing in the epilogue. The arithmetic, and the reference these are tested
against, is `sparse_rt.kernels.int8`. GELU, where fused, runs after the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from sparse_rt.kernels.int8 import ACTIVATION_LEVELS
from sparse_rt.kernels.registry import Config
from sparse_rt.kernels.options import config_space, parse_options
from sparse_rt.kernels.triton._int8_kernels import _csr_int8_rows_kernel, _dense_int8_kernel, _quantize_rows_kernel
from sparse_rt.kernels.triton._launch import pow2_at_most, rows_of, runnable


@dataclass(frozen=True)
class Int8Options:
    """CSR: BLOCK_B batch rows x one row of W per program, BLOCK_K nonzeros a step.
    Dense: BLOCK_M batch rows x BLOCK_N outputs per program, BLOCK_K inputs a step."""

    BLOCK_B: int
    BLOCK_K: int
    BLOCK_M: int
    BLOCK_N: int
    num_warps: int

    def __post_init__(self) -> None:
        for name, low, high in (("BLOCK_B", 1, 256), ("BLOCK_K", 16, 256), ("BLOCK_M", 16, 256),
                                ("BLOCK_N", 16, 256), ("num_warps", 1, 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value & (value - 1) or not low <= value <= high:
                raise ValueError(f"Int8Options: expected {name} a power of two in [{low}, {high}], got {value!r}")


def int8_configs(weight, device: torch.device) -> list[Config]:
    """Tile sizes of both kernels (tl.dot needs tiles of at least 16)."""
    default = Int8Options(BLOCK_B=32, BLOCK_K=32, BLOCK_M=32, BLOCK_N=64, num_warps=4)
    return config_space(default, {"BLOCK_K": [32, 64], "BLOCK_N": [32, 64], "num_warps": [4, 8]})


def quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rows [batch, in] float -> (q - 128 int8 [in, batch], scales float32 [batch], zero points
    int32 [batch]): `quantize_activations` bit for bit, q transposed and shifted into int8."""
    batch, in_features = rows.shape
    q = torch.empty(in_features, batch, dtype=torch.int8, device=rows.device)
    scales = torch.empty(batch, dtype=torch.float32, device=rows.device)
    zeros = torch.empty(batch, dtype=torch.int32, device=rows.device)
    if batch:
        runnable(_quantize_rows_kernel, rows.device)[(batch,)](
            rows, q, scales, zeros, in_features, rows.stride(0), rows.stride(1), q.stride(0), q.stride(1),
            LEVELS=ACTIVATION_LEVELS, BLOCK_K=pow2_at_most(in_features, 1024, 16), enable_fp_fusion=False,
        )
    return q, scales, zeros


@dataclass(frozen=True)
class Int8Packed:
    """The weight on its device: int8 values (CSR arrays, or [out, in] and its int32 row sums),
    float32 scales and bias."""

    shape: tuple[int, int]
    arrays: dict[str, torch.Tensor]
    scales: torch.Tensor
    bias: torch.Tensor | None


def _csr_arrays(row_offsets: torch.Tensor, column_indices: torch.Tensor, values: torch.Tensor) -> dict[str, torch.Tensor]:
    lengths = row_offsets.diff()
    return {"row_order": torch.argsort(lengths, descending=True, stable=True).to(torch.int32),
            "row_offsets": row_offsets, "column_indices": column_indices, "values": values}


def _bsr_as_csr(weight) -> dict[str, torch.Tensor]:
    """A 1x4-block weight as the CSR kernel's arrays: each block four consecutive entries (the
    inputs past in_features of a last partial block hold 0 and read the last input)."""
    in_features = weight.shape[1]
    columns = weight.block_columns.to(torch.int64)[:, None] * 4 + torch.arange(4)
    columns = columns.clamp(max=in_features - 1).reshape(-1).to(torch.int32)
    return _csr_arrays(weight.row_offsets.to(torch.int64) * 4, columns, weight.values.reshape(-1))


def pack_int8(weight, bias: torch.Tensor | None, device: torch.device) -> Int8Packed:
    if weight.name == "csr_int8":
        arrays = _csr_arrays(weight.row_offsets, weight.column_indices, weight.values)
    elif weight.name == "bsr_int8":
        arrays = _bsr_as_csr(weight)
    else:
        arrays = {"weight": weight.weight, "row_sums": weight.weight.sum(dim=1, dtype=torch.int32)}
    return Int8Packed(
        shape=tuple(weight.shape), arrays={k: v.contiguous().to(device) for k, v in arrays.items()},
        scales=weight.scales.to(device=device, dtype=torch.float32),
        bias=None if bias is None else bias.detach().to(device=device, dtype=torch.float32),
    )


def int8_linear(x: torch.Tensor, packed: Int8Packed, options: Int8Options) -> torch.Tensor:
    """x [..., in] on the packed device -> y [..., out] in x's dtype."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, packed.scales.device, "int8_linear")
    batch = rows.shape[0]
    y = torch.empty(batch, out_features, dtype=x.dtype, device=x.device)
    if batch == 0:
        return y.reshape(*x.shape[:-1], out_features)
    q, scales, zeros = quantize_rows(rows)
    bias = packed.bias if packed.bias is not None else packed.scales
    arrays = packed.arrays
    if "weight" in arrays:
        grid = (triton.cdiv(batch, options.BLOCK_M), triton.cdiv(out_features, options.BLOCK_N))
        runnable(_dense_int8_kernel, x.device)[grid](
            q, scales, zeros, arrays["weight"], arrays["row_sums"], packed.scales, bias, y, batch, out_features,
            in_features, q.stride(0), arrays["weight"].stride(0), y.stride(0), y.stride(1),
            HAS_BIAS=packed.bias is not None, BLOCK_M=options.BLOCK_M, BLOCK_N=options.BLOCK_N,
            BLOCK_K=options.BLOCK_K, num_warps=options.num_warps,
        )
    else:
        block_b = pow2_at_most(batch, options.BLOCK_B)
        grid = (out_features, triton.cdiv(batch, block_b))
        runnable(_csr_int8_rows_kernel, x.device)[grid](
            q, scales, zeros, arrays["row_order"], arrays["row_offsets"], arrays["column_indices"], arrays["values"],
            packed.scales, bias, y, batch, q.stride(0), y.stride(0), y.stride(1), HAS_BIAS=packed.bias is not None,
            BLOCK_B=block_b, BLOCK_K=options.BLOCK_K, num_warps=options.num_warps,
        )
    return y.reshape(*x.shape[:-1], out_features)


def bind_int8(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind for csr_int8, bsr_int8 and dense_int8: pack once, return x -> int8_linear(x)."""
    options = parse_options(Int8Options, config)
    packed = pack_int8(weight, bias, torch.device(device))
    return lambda x: int8_linear(x, packed, options)
