"""Fused ops of domain ai.sparse_rt that conversion substitutes for exporter op chains."""

from __future__ import annotations

from torch.nn import functional as F

from sparse_rt.ir.graph import SPARSE_DOMAIN
from sparse_rt.ops.registry import register_op


@register_op("Gelu", domain=SPARSE_DOMAIN)
def bind_gelu(node, ctx):
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Gelu: expected approximate 'none' or 'tanh', got {approximate!r}")
    return lambda x: F.gelu(x, approximate=approximate)
