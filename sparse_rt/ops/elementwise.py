"""Unary elementwise math: Abs, Exp, Sqrt, trigonometry, rounding, IsNaN/IsInf, Clip.

Every op maps a tensor to a tensor of the same shape (IsNaN/IsInf return bool).
Ops without attributes bind straight to the torch function, so the per-run call
is one torch call.
"""

from __future__ import annotations

import torch

from sparse_rt.ir.graph import Node
from sparse_rt.ops.common import constant_input, has_input, is_static
from sparse_rt.ops.registry import BindContext, register_op

_UNARY = {
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Erf": torch.erf,
    "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,  # half to even, as ONNX specifies
    "Sign": torch.sign,
    "IsNaN": torch.isnan,
}


def _bind_unary(fn):
    def bind(node: Node, ctx: BindContext):
        return fn

    return bind


for _op_type, _fn in _UNARY.items():
    register_op(_op_type)(_bind_unary(_fn))


_SIGNED_VIEW = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}


@register_op("BitwiseNot", since_version=18)
def bind_bitwise_not(node: Node, ctx: BindContext):
    """BitwiseNot: ~x; wide unsigned types go through a same-width signed view (bit-exact)."""

    def bitwise_not(x):
        signed = _SIGNED_VIEW.get(x.dtype)
        if signed is None:
            return torch.bitwise_not(x)
        return torch.bitwise_not(x.view(signed)).view(x.dtype)

    return bitwise_not


@register_op("IsInf", since_version=10)
def bind_isinf(node: Node, ctx: BindContext):
    """IsInf: x -> bool; detect_negative/detect_positive (default 1) pick the signs reported."""
    negative = bool(node.attributes.get("detect_negative", 1))
    positive = bool(node.attributes.get("detect_positive", 1))
    if negative and positive:
        return torch.isinf
    if positive:
        return torch.isposinf
    if negative:
        return torch.isneginf
    return lambda x: torch.zeros(x.shape, dtype=torch.bool, device=x.device)


@register_op("Clip", since_version=1)
def bind_clip_attributes(node: Node, ctx: BindContext):
    """Clip-1/6: bounds from attributes `min`/`max` (default: unbounded)."""
    low = node.attributes.get("min")
    high = node.attributes.get("max")
    if low is None and high is None:
        return lambda x: x
    return lambda x: torch.clamp(x, low, high)


@register_op("Clip", since_version=11)
def bind_clip(node: Node, ctx: BindContext):
    """Clip-11+: bounds from optional scalar inputs `min` and `max` (omitted: unbounded)."""
    if is_static(node, ctx, 1) and is_static(node, ctx, 2):
        low, high = (
            constant_input(node, ctx, i).reshape(-1)[0].item() if has_input(node, i) else None
            for i in (1, 2)
        )
        if low is None and high is None:
            return lambda x, *bounds: x
        return lambda x, *bounds: torch.clamp(x, low, high)

    def clip(x, low=None, high=None):
        if low is None and high is None:
            return x
        return torch.clamp(x, low, high)

    return clip
