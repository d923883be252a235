"""Registry of linear kernels: one entry per (format, backend, name).

A kernel computes y = x @ W.T + b for x of shape [..., in_features] with W held
by a weight format. It is *bound* once per layer (`bind` may repack the weight:
transpose it, pad it, move it to a device) and the bound callable is what the
runtime calls on every `run`.

Configs are JSON-serialisable dicts of ints/strings (they are saved in the ONNX
file as the node's `config` attribute). `configs(weight, device)` returns the
tuning space; its first entry is the heuristic default.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from sparse_rt.formats.base import WeightFormat

Config = dict[str, int | str]


class BoundLinear(Protocol):
    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in] -> y: [..., out]
        ...


@dataclass(frozen=True)
class Kernel:
    """A linear kernel for one weight format on one backend.

    name:     unique id, e.g. "csr_cpu_rowwise"
    format:   the WeightFormat.name it takes
    backend:  "cpu" or "triton"
    bind:     (weight, bias [out] or None, config, device) -> callable x -> y; kernels
              with `activations` also take activation= one of them, applied to y
    configs:  (weight, device) -> tuning space (first entry = heuristic default)
    supports: (weight, device) -> whether this kernel can run that weight there
    activations: the activations the kernel fuses into its output ("gelu")
    """

    name: str
    format: str
    backend: str
    bind: Callable[[WeightFormat, torch.Tensor | None, Config, torch.device], BoundLinear]
    configs: Callable[[WeightFormat, torch.device], list[Config]] = field(
        default=lambda weight, device: [{}]
    )
    supports: Callable[[WeightFormat, torch.device], bool] = field(
        default=lambda weight, device: True
    )
    activations: tuple[str, ...] = ()


KERNELS: dict[str, Kernel] = {}


def register_kernel(kernel: Kernel) -> Kernel:
    """Add a kernel to the registry (names are unique)."""
    if kernel.name in KERNELS:
        raise ValueError(f"kernel {kernel.name!r} is already registered")
    KERNELS[kernel.name] = kernel
    return kernel


def get_kernel(name: str) -> Kernel:
    """The kernel called `name`; the error lists the known ones."""
    _load_builtin_kernels("cpu")
    if name not in KERNELS:
        _load_builtin_kernels("triton")
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; known: {sorted(KERNELS)}") from None


def kernels_for(weight: WeightFormat, device: torch.device | str) -> list[Kernel]:
    """Every registered kernel that takes `weight` on `device`."""
    device = torch.device(device)
    backend = backend_for(device)
    _load_builtin_kernels(backend)
    return [
        k
        for k in KERNELS.values()
        if k.format == weight.name and k.backend == backend and k.supports(weight, device)
    ]


def backend_for(device: torch.device) -> str:
    """The kernel backend used on a device: triton on CUDA (or when forced), cpu otherwise."""
    import os

    if device.type == "cuda":
        return "triton"
    if os.environ.get("SPARSE_RT_BACKEND") == "triton":
        return "triton"
    return "cpu"


_loaded: set[str] = set()
_loading = threading.RLock()


def _load_builtin_kernels(backend: str) -> None:
    """Register the kernels of `backend` ("cpu" or "triton") by importing their package, once;
    other threads wait until it is imported. CPU sessions leave triton unimported (about 70 MiB
    of a process's memory)."""
    if backend in _loaded:
        return
    with _loading:
        if backend in _loaded:
            return
        if backend == "cpu":
            import sparse_rt.kernels.cpu  # noqa: F401  (registers the CPU kernels)
        else:
            import sparse_rt.kernels.triton  # noqa: F401  (registers the Triton kernels)
        _loaded.add(backend)
