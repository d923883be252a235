"""Fused ops of domain ai.sparse_rt that conversion substitutes for exporter op chains."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from sparse_rt.ir.graph import SPARSE_DOMAIN
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.gelu import gelu_erf
from sparse_rt.kernels.cpu.gelu_tanh import gelu_tanh
from sparse_rt.kernels.cpu.layernorm import add_layer_norm
from sparse_rt.ops.conv import bind_conv_activation
from sparse_rt.ops.registry import register_op


@register_op("Gelu", domain=SPARSE_DOMAIN)
def bind_gelu(node, ctx):
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Gelu: expected approximate 'none' or 'tanh', got {approximate!r}")
    return gelu_erf if approximate == "none" else gelu_tanh


@register_op("ScaledDotProductAttention", domain=SPARSE_DOMAIN)
def bind_attention(node, ctx):
    """(q [..., L, E], kT [..., E, S], v [..., S, Ev], mask [.., L or 1, S] float or absent)
    -> softmax(q kT * scale + mask) v [..., L, Ev]. Attribute nan_to_zero: a softmax row that is
    NaN (all of it masked with -inf) weighs v by zeros, so its output row is zero."""
    scale = float(node.attributes["scale"])
    nan_to_zero = bool(node.attributes.get("nan_to_zero", 0))

    def attention(q, k_t, v, mask=None):
        # torch's CPU kernel wants k with unit stride on E: given the view of kT it ran 1.4x slower
        # at batch 1 and 2.8x at batch 8 (29.5 against 10.7 ms, BERT-base heads, 128 tokens, one
        # thread) than after this copy
        k = k_t.transpose(-1, -2).contiguous()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return out.nan_to_num_(nan=0.0, posinf=float("inf"), neginf=float("-inf")) if nan_to_zero else out

    return attention


@register_op("AddLayerNormalization", domain=SPARSE_DOMAIN)
def bind_add_layer_normalization(node, ctx):
    """(a, b, scale [H], bias [H] or absent) -> LayerNormalization(a + b) over the last axis
    [, a + b] (the sum as a second output when the node has one), attribute epsilon. The native
    kernel takes equal-shaped float32 a and b; anything else (broadcasting, other dtypes, other
    devices) goes through torch."""
    epsilon = float(node.attributes.get("epsilon", 1e-5))
    native = ctx.device.type == "cpu" and native_available()
    with_total = len(node.outputs) > 1 and bool(node.outputs[1])

    def add_layer_normalization(a, b, scale, bias=None):
        if (native and a.shape == b.shape and a.dtype == b.dtype == scale.dtype == torch.float32
                and (bias is None or bias.dtype == torch.float32) and a.device.type == "cpu"):
            return add_layer_norm(a.contiguous(), b.contiguous(), scale.contiguous(),
                                  None if bias is None else bias.contiguous(), epsilon, with_total)
        total = a + b
        y = F.layer_norm(total, total.shape[-1:], scale, bias, epsilon)
        return (y, total) if with_total else y

    return add_layer_normalization


@register_op("FusedConv", domain=SPARSE_DOMAIN)
def bind_fused_conv(node, ctx):
    """(X, W, B or absent) -> activation(Conv(X, W, B)): Conv's inputs and attributes, plus
    activation "relu" (`sparse_rt.converters.conv_fusion`)."""
    return bind_conv_activation(node, ctx, node.attributes.get("activation"))


@register_op("AddRelu", domain=SPARSE_DOMAIN)
def bind_add_relu(node, ctx):
    """(a, b) -> Relu(a + b), numpy broadcasting: one pass for floating a and b of one dtype."""

    def add_relu(a, b):
        if a.dtype == b.dtype and a.dtype.is_floating_point:
            return torch.ops.aten._add_relu(a, b)
        return torch.relu(a + b)

    return add_relu
