"""Deterministic, timing-free choice of format and kernel for a linear layer.

On the CPU backend the choice comes from the CPU kernels' own measured rules
(`sparse_rt.kernels.cpu.heuristic`); elsewhere a density rule picks the format
and the first registered kernel with its default config runs it.
"""

from __future__ import annotations

import torch

from sparse_rt.converters.lowering import Choice, LinearLayer
from sparse_rt.formats import get_format
from sparse_rt.formats.base import WeightFormat
from sparse_rt.kernels.cpu.heuristic import pick_cpu_kernel
from sparse_rt.kernels.registry import backend_for, kernels_for

# Non-CPU backends: CSR below this density, dense above.
SPARSE_MAX_DENSITY = 0.3


def heuristic_choice(layer: LinearLayer, device: torch.device, structured: WeightFormat | None = None,
                     batch: int = 1) -> Choice:
    """The format, kernel and config for `layer` at `batch` rows per call, without timing."""
    weight = torch.from_numpy(layer.weight)
    if structured is not None:
        fmt = structured
    elif backend_for(device) == "cpu":
        return Choice(*pick_cpu_kernel(weight, batch=batch))
    else:
        density = float((weight != 0).float().mean()) if weight.numel() else 0.0
        fmt = get_format("csr" if density <= SPARSE_MAX_DENSITY else "dense").from_dense(weight)
    kernels = kernels_for(fmt, device)
    if not kernels:
        fmt = get_format("dense").from_dense(weight)
        kernels = kernels_for(fmt, device)
    return Choice(fmt, kernels[0].name, kernels[0].configs(fmt, device)[0])
