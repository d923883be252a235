"""Fused ops of domain ai.sparse_rt that conversion substitutes for exporter op chains."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from sparse_rt.ir.graph import SPARSE_DOMAIN
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.attention import native_attention, native_attention_applies
from sparse_rt.kernels.cpu.gathered_matmul import gathered_matmul, gathered_matmul_applies
from sparse_rt.kernels.cpu.gelu import gelu_erf
from sparse_rt.kernels.cpu.gelu_tanh import gelu_tanh
from sparse_rt.kernels.cpu.layernorm import add_layer_norm
from sparse_rt.kernels.cpu.rmsnorm import add_rms_norm, add_rms_norm_torch
from sparse_rt.kernels.cpu.rotary import rotary, rotary_torch
from sparse_rt.ops.common import broadcast_shape
from sparse_rt.ops.conv import bind_conv_activation
from sparse_rt.ops.indexing import wrap_negative
from sparse_rt.ops.registry import register_op
from sparse_rt.ops.shape_ops import _reshape_target


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
        if mask is not None and _widens(mask, q, k_t):  # a mask of no inferred shape: the chain as exported
            weights = torch.softmax(torch.matmul(q, k_t) * scale + mask, dim=-1)
            return torch.matmul(weights.nan_to_num(nan=0.0) if nan_to_zero else weights, v)
        if native_attention_applies(q, k_t, v, mask):
            out = native_attention(q, k_t, v, mask, scale)
        else:
            # torch's CPU kernel wants k with unit stride on E: given the view of kT it ran 1.4x
            # slower at batch 1 and 2.8x at batch 8 (BERT-base heads, 128 tokens) than after this copy
            k = k_t.transpose(-1, -2).contiguous()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return out.nan_to_num_(nan=0.0, posinf=float("inf"), neginf=float("-inf")) if nan_to_zero else out

    return attention


def _widens(mask: torch.Tensor, q: torch.Tensor, k_t: torch.Tensor) -> bool:
    """Whether adding `mask` widens the scores q @ kT [..., L, S] (or does not broadcast to them)."""
    lead = broadcast_shape(q.shape[:-2], k_t.shape[:-2])
    scores = None if lead is None else (*lead, q.shape[-2], k_t.shape[-1])
    return scores is None or broadcast_shape(mask.shape, scores) != scores


@register_op("MatMulGatherElements", domain=SPARSE_DOMAIN)
def bind_matmul_gather_elements(node, ctx):
    """(a [..., M, K], b [..., K, N], indices [..., M, J]) -> GatherElements(MatMul(a, b), indices,
    axis=-1) [..., M, J]. float32 cpu operands with equal leading dims compute only the kept
    entries (`kernels.cpu.gathered_matmul`); anything else takes the two ops through torch."""

    def matmul_gather_elements(a, b, indices):
        if b.dim() >= 2:
            index = wrap_negative(indices, b.shape[-1])
            if gathered_matmul_applies(a, b, index):
                return gathered_matmul(a, b, index)
        product = torch.matmul(a, b)
        return torch.gather(product, -1, wrap_negative(indices, product.shape[-1]))

    return matmul_gather_elements


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


@register_op("RMSNormalization", domain=SPARSE_DOMAIN)
@register_op("AddRMSNormalization", domain=SPARSE_DOMAIN)
def bind_rms_normalization(node, ctx):
    """RMSNormalization(x, weight [H]) or AddRMSNormalization(a, b, weight [H]) ->
    s / sqrt(mean(s^2) over the last axis + epsilon) * weight with s = x or a + b [, s] (the
    sum as a second output when the node has one), attribute epsilon. The native kernel takes
    float32 inputs of one shape; anything else goes through torch."""
    epsilon = float(node.attributes["epsilon"])
    native = ctx.device.type == "cpu" and native_available()
    with_total = len(node.outputs) > 1 and bool(node.outputs[1])

    def rms_normalization(*inputs):
        *terms, weight = inputs
        a, b = terms if len(terms) == 2 else (terms[0], None)
        if (native and a.dtype == weight.dtype == torch.float32 and a.device.type == "cpu"
                and (b is None or (b.shape == a.shape and b.dtype == torch.float32))
                and weight.shape == a.shape[-1:]):
            return add_rms_norm(a.contiguous(), None if b is None else b.contiguous(), weight.contiguous(),
                                epsilon, with_total)
        return add_rms_norm_torch(a, b, weight, epsilon, with_total)

    return rms_normalization


@register_op("RotaryEmbedding", domain=SPARSE_DOMAIN)
def bind_rotary_embedding(node, ctx):
    """(x [batch, heads, positions, head_dim], cos, sin broadcasting to x[, shape]) -> x * cos +
    rotate_half(x) * sin, rotate_half(x) = concat(-x[..., half:], x[..., :half]) over the last
    axis (head_dim even). With shape, x is Transpose(Reshape(x, shape), [0, 2, 1, 3]) first
    (a projection [batch, positions, heads * head_dim] split into heads), a view read in place.
    The native kernel takes float32 rank-4 x; anything else goes through torch."""
    native = ctx.device.type == "cpu" and native_available()

    def rotary_embedding(x, cos, sin, shape=None):
        if shape is not None:
            x = x.reshape(_reshape_target(x.shape, shape.tolist(), False)).transpose(1, 2)
        if x.shape[-1] % 2:
            raise ValueError(f"RotaryEmbedding: input 'x': expected an even last dim, got {list(x.shape)}")
        if (native and x.dim() == 4 and x.dtype == cos.dtype == sin.dtype == torch.float32
                and x.device.type == "cpu"):
            return rotary(x if x.stride(-1) == 1 else x.contiguous(), cos, sin)
        return rotary_torch(x, cos, sin)

    return rotary_embedding


@register_op("GroupedQueryAttention", domain=SPARSE_DOMAIN)
def bind_grouped_query_attention(node, ctx):
    """(q [B, H, L, E], k [B, Hkv, S, E], v [B, Hkv, S, Ev], mask [.., L or 1, S] float or absent)
    -> softmax(q kT * scale + mask) v [B, H, L, Ev], where each group of kv_repeats query heads
    (H = Hkv * kv_repeats) reads one key/value head (repeat_kv without the copies). Attribute
    nan_to_zero as in ScaledDotProductAttention. With shape, the output is
    Reshape(Transpose(out, [0, 2, 1, 3]), shape): the heads merged back, [B, L, H * Ev]."""
    scale = float(node.attributes["scale"])
    repeats = int(node.attributes.get("kv_repeats", 1))
    nan_to_zero = bool(node.attributes.get("nan_to_zero", 0))

    def grouped_query_attention(q, k, v, mask=None, shape=None):
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or q.shape[1] != k.shape[1] * repeats:
            raise ValueError(f"GroupedQueryAttention: expected q [B, {repeats} * Hkv, L, E], k and v [B, Hkv, S, E] "
                             f"(kv_repeats={repeats}), got q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=repeats > 1)
        if nan_to_zero:
            out = out.nan_to_num_(nan=0.0, posinf=float("inf"), neginf=float("-inf"))
        if shape is None:
            return out
        merged = out.transpose(1, 2)
        return merged.reshape(_reshape_target(merged.shape, shape.tolist(), False))

    return grouped_query_attention


@register_op("SiluMul", domain=SPARSE_DOMAIN)
def bind_silu_mul(node, ctx):
    """(gate, up) -> gate * sigmoid(gate) * up (the SiLU-gated MLP's glue), broadcasting as Mul."""

    def silu_mul(gate, up):
        if gate.shape == up.shape:
            return F.silu(gate).mul_(up)
        return F.silu(gate) * up

    return silu_mul


@register_op("FusedConv", domain=SPARSE_DOMAIN)
def bind_fused_conv(node, ctx):
    """(X, W, B or absent[, Z]) -> activation(Conv(X, W, B) + Z): Conv's inputs and
    attributes, a residual Z that broadcasts to the output (optional), plus activation "relu"
    or none (`sparse_rt.converters.conv_fusion`)."""
    return bind_conv_activation(node, ctx, node.attributes.get("activation"))


@register_op("AddRelu", domain=SPARSE_DOMAIN)
def bind_add_relu(node, ctx):
    """(a, b) -> Relu(a + b), numpy broadcasting: one pass for floating a and b of one dtype."""

    def add_relu(a, b):
        if a.dtype == b.dtype and a.dtype.is_floating_point:
            return torch.ops.aten._add_relu(a, b)
        return torch.relu(a + b)

    return add_relu
