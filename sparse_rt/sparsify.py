"""`sparsify(module)`: swap nn.Linear (and structured layers) for modules running sparse_rt kernels.

For users who stay in PyTorch: the model keeps its Python forward, and each
linear layer's matmul runs the kernel the scheduler picks for its weight. Like
torchao's `sparsify_(model, config, filter_fn)`, the swap is in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from sparse_rt.converters.lowering import Choice, LinearLayer
from sparse_rt.kernels.registry import get_kernel
from sparse_rt.scheduler.plan import make_chooser

ModuleFilter = Callable[[nn.Module, str], bool]


@dataclass(frozen=True)
class SparsifyConfig:
    """batch_size: rows per call (tokens for sequence models) to choose kernels for;
    tune: time the candidates (else the heuristic); device: where the kernels run."""

    batch_size: int = 1
    tune: bool = False
    device: str = "cpu"


class SparseLinear(nn.Module):
    """y = x @ W.T + b through a bound sparse_rt kernel; x: float32 [..., in] -> [..., out].

    Inference only: the weight is frozen in its format (`choice`); gradients do not flow.
    """

    def __init__(self, choice: Choice, bias: torch.Tensor | None, device: torch.device):
        super().__init__()
        self.choice = choice
        self.in_features = choice.weight.shape[1]
        self.out_features = choice.weight.shape[0]
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._run = get_kernel(choice.kernel).bind(choice.weight, self.bias, choice.config, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise TypeError(f"SparseLinear input: expected float32 [..., {self.in_features}], got {x.dtype}")
        if x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear input: expected [..., {self.in_features}], got {list(x.shape)}")
        return self._run(x)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.choice.weight.name}, kernel={self.choice.kernel}")


def _is_target(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or callable(getattr(module, "to_format", None))


def sparsify(module: nn.Module, config: SparsifyConfig | None = None,
             filter_fn: ModuleFilter | None = None) -> nn.Module:
    """Replace, in place, every nn.Linear and structured layer (anything with `to_format()`)
    chosen by `filter_fn(module, qualified_name)` with a `SparseLinear`; returns `module`.

    Pruned weights are read as the layer computes them (masks of torch.nn.utils.prune,
    torch.ao.pruning or sparse_rt.pruning applied). A structured layer whose
    `to_format()` raises (e.g. the nonlinear PermutedBlockLinear) is left alone.
    """
    config = config or SparsifyConfig()
    device = torch.device(config.device)
    chooser = make_chooser(device, (config.batch_size,), tune=config.tune)
    targets = [(name, sub) for name, sub in module.named_modules()
               if name and _is_target(sub) and (filter_fn is None or filter_fn(sub, name))]
    for name, sub in targets:
        replacement = _sparse_linear(name, sub, chooser, device)
        if replacement is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, replacement)
    return module


def _sparse_linear(name: str, layer: nn.Module, chooser, device: torch.device) -> SparseLinear | None:
    bias = getattr(layer, "bias", None)
    bias = None if bias is None else bias.detach().to(torch.float32).cpu()
    if isinstance(layer, nn.Linear):
        weight = layer.weight.detach().to(torch.float32).cpu()
        choice = chooser(LinearLayer(name, np.array(weight.numpy(), copy=True),
                                     None if bias is None else np.array(bias.numpy(), copy=True)))
        return SparseLinear(choice, bias, device)
    try:
        fmt = layer.to_format()
    except ValueError:
        return None
    from sparse_rt.kernels.registry import kernels_for

    kernel = kernels_for(fmt, device)[0]
    return SparseLinear(Choice(fmt, kernel.name, kernel.configs(fmt, device)[0]), bias, device)
