"""The op registry: one binder per (domain, op_type, since_version).

A binder is called once per node when a session is created. It reads the node's
attributes (and, through the context, constant inputs) and returns the callable
the runtime invokes on every run with the node's input tensors (None for an
omitted optional input). The callable returns a tensor or a tuple of tensors.

Users add ops without editing the package:

    @register_op("MyOp", domain="com.example")
    def my_op(node, ctx):
        alpha = node.attributes.get("alpha", 1.0)
        return lambda x: x * alpha
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from sparse_rt.ir.graph import Node

OpCallable = Callable[..., "torch.Tensor | tuple[torch.Tensor, ...]"]


@dataclass
class BindContext:
    """What a binder may look at: the device, the model's opset, constant inputs."""

    device: torch.device
    opset: int
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a constant input, or None if the input is computed at run time."""
        return self.constants.get(name) if name else None


Binder = Callable[[Node, BindContext], OpCallable]


@dataclass(frozen=True)
class OpSpec:
    op_type: str
    domain: str
    since_version: int
    bind: Binder


_REGISTRY: dict[tuple[str, str], list[OpSpec]] = {}


def register_op(op_type: str, domain: str = "", since_version: int = 1) -> Callable[[Binder], Binder]:
    """Decorator registering a binder for `op_type` from opset `since_version` on.

    Registering the same (domain, op_type, since_version) again replaces the
    previous binder, so users can override built-in ops.
    """

    def decorate(bind: Binder) -> Binder:
        specs = _REGISTRY.setdefault((domain, op_type), [])
        specs[:] = [s for s in specs if s.since_version != since_version]
        specs.append(OpSpec(op_type, domain, since_version, bind))
        specs.sort(key=lambda s: s.since_version)
        return bind

    return decorate


def lookup(op_type: str, domain: str, opset: int) -> OpSpec | None:
    """The binder for the newest version <= opset (ops of other domains ignore opset)."""
    _load_builtin_ops()
    specs = _REGISTRY.get((domain, op_type), [])
    if domain:
        return specs[-1] if specs else None
    usable = [s for s in specs if s.since_version <= opset]
    return usable[-1] if usable else None


class UnsupportedOpError(ValueError):
    """The graph holds ops the registry does not implement (all of them are listed)."""


def lookup_nodes(nodes: list[Node], opset: int) -> list[OpSpec]:
    """The binder of every node; UnsupportedOpError lists every missing op type, with node names."""
    specs: list[OpSpec] = []
    missing: dict[str, list[str]] = {}
    for node in nodes:
        spec = lookup(node.op_type, node.domain, opset)
        if spec is None:
            key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            missing.setdefault(key, []).append(node.label())
        specs.append(spec)
    if missing:
        listing = "; ".join(f"{op} (nodes: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                            for op, names in missing.items())
        raise UnsupportedOpError(f"{len(missing)} unsupported op type(s) at opset {opset}: {listing}")
    return specs


def supported_ops(domain: str = "") -> list[str]:
    """Names of the registered op types of a domain, sorted."""
    _load_builtin_ops()
    return sorted(op for (d, op) in _REGISTRY if d == domain)


_loaded = False


def _load_builtin_ops() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import sparse_rt.ops.builtin  # noqa: F401  (registers the standard ops)
        import sparse_rt.ops.fused  # noqa: F401  (registers the fused ops)
        import sparse_rt.ops.im2col  # noqa: F401  (registers Im2Col)
        import sparse_rt.ops.sparse_linear  # noqa: F401  (registers SparseLinear)
