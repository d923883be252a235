"""Dense linear on the GPU path: y = x @ W.T + b by torch (cuBLAS on CUDA).

The baseline every sparse kernel has to beat. Two operand layouts are offered
to the tuner: "out_in" hands W [out, in] to F.linear; "in_out" keeps a
contiguous W.T [in, out] and calls addmm, which cuBLAS runs as a different GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.kernels.registry import Config
from sparse_rt.kernels.triton._launch import DtypeCopies, rows_of
from sparse_rt.kernels.triton.configs import DenseOptions, parse_options


@dataclass(frozen=True)
class DensePacked:
    """A dense weight on its device in the options' layout: [out, in] ("out_in") or [in, out] ("in_out")."""

    shape: tuple[int, int]
    layout: str
    device: torch.device
    weight: DtypeCopies
    bias: DtypeCopies | None


def pack_dense(weight, bias: torch.Tensor | None, device: torch.device, layout: str) -> DensePacked:
    """Move a DenseFormat (and bias [out]) to `device` in `layout`."""
    matrix = weight.weight if layout == "out_in" else weight.weight.t()
    return DensePacked(
        shape=tuple(weight.shape),
        layout=layout,
        device=device,
        weight=DtypeCopies(matrix.contiguous().to(device)),
        bias=None if bias is None else DtypeCopies(bias.detach().contiguous().to(device)),
    )


def dense_linear(x: torch.Tensor, packed: DensePacked) -> torch.Tensor:
    """x: [..., in] on packed.device -> y: [..., out] in x's dtype."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, packed.device, "dense_linear")
    matrix = packed.weight(x.dtype)
    bias = None if packed.bias is None else packed.bias(x.dtype)
    if packed.layout == "out_in":
        y = torch.nn.functional.linear(rows, matrix, bias)
    elif bias is None:
        y = torch.mm(rows, matrix)
    else:
        y = torch.addmm(bias, rows, matrix)
    return y.reshape(*x.shape[:-1], out_features)


def bind_dense(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind: pack once in the config's layout, return x -> dense_linear(x)."""
    options = parse_options(DenseOptions, config)
    packed = pack_dense(weight, bias, torch.device(device), options.layout)
    return lambda x: dense_linear(x, packed)


def dense_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: x @ W.T (+ b)."""
    y = x @ weight.weight.to(x).T
    return y if bias is None else y + bias.to(x)
