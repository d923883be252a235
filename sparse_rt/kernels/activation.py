"""Bind a kernel with a fused activation: in its epilogue where it has one, else after it."""

from __future__ import annotations

import torch

from sparse_rt.formats.base import WeightFormat
from sparse_rt.kernels.cpu.gelu import gelu_erf
from sparse_rt.kernels.registry import BoundLinear, Config, Kernel

# activation -> the function applied to a kernel's fresh output when the kernel has no such epilogue
_AFTER = {"gelu": gelu_erf, "relu": torch.relu_}
ACTIVATIONS = tuple(_AFTER)


def bind_with_activation(kernel: Kernel, weight: WeightFormat, bias: torch.Tensor | None, config: Config,
                         device: torch.device, activation: str | None, **options) -> BoundLinear:
    """x -> activation(x @ W.T + b): fused when `activation` is in kernel.activations, else
    applied to the kernel's output after it (GELU erf form; ReLU in place). activation: None,
    "gelu" or "relu". options: further keyword arguments of the kernel's bind."""
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    if activation is None or activation in kernel.activations:
        return kernel.bind(weight, bias, config, device, **({"activation": activation} if activation else {}), **options)
    plain = kernel.bind(weight, bias, config, device, **options)
    after = _AFTER[activation]

    def linear(x: torch.Tensor) -> torch.Tensor:
        return after(plain(x))

    return linear
