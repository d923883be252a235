"""Normalizations: BatchNormalization, InstanceNormalization, LayerNormalization,
GroupNormalization, RMSNormalization, LRN, LpNormalization, MeanVarianceNormalization.

X: [N, C, *spatial] for the channel-wise ones; LayerNormalization and
RMSNormalization normalize over the dims from `axis` (default -1) to the end.
stash_type=1 (the default) computes statistics in float32 for float16/bfloat16 input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparse_rt.ir.graph import Node
from sparse_rt.ops.registry import BindContext, register_op


def _channel_shaped(param: torch.Tensor, rank: int) -> torch.Tensor:
    """A per-channel [C] (or [C, *spatial] for spatial=0) parameter broadcastable to [N, C, ...]."""
    if param.dim() == 1:
        return param.reshape(-1, *([1] * (rank - 2)))
    return param


@register_op("BatchNormalization")
def bind_batch_normalization(node: Node, ctx: BindContext):
    """BatchNormalization(X, scale, B, input_mean, input_var): Y = (X - mean) / sqrt(var + epsilon)
    * scale + B per channel. With training_mode=1 (opset 14+) the batch statistics are used and
    the outputs are (Y, running_mean, running_var), running = input * momentum + batch * (1 - momentum)."""
    epsilon = float(node.attributes.get("epsilon", 1e-5))
    momentum = float(node.attributes.get("momentum", 0.9))
    training = bool(node.attributes.get("training_mode", 0)) and ctx.opset >= 14

    if training:

        def batch_norm_training(x, scale, bias, mean, var):
            dims = (0, *range(2, x.dim()))
            batch_mean = x.mean(dims)
            batch_var = x.var(dims, unbiased=False)
            y = F.batch_norm(x, batch_mean, batch_var, scale, bias, False, 0.0, epsilon)
            return y, mean * momentum + batch_mean * (1 - momentum), var * momentum + batch_var * (1 - momentum)

        return batch_norm_training

    def batch_norm(x, scale, bias, mean, var, *_unused):
        if scale.dim() == 1 and x.dim() >= 2 and x.is_floating_point() and x.dtype != torch.float16:
            dtype = x.dtype
            return F.batch_norm(x, mean.to(dtype), var.to(dtype), scale.to(dtype), bias.to(dtype), False, 0.0, epsilon)
        rank = x.dim()
        inverse = torch.rsqrt(_channel_shaped(var, rank).to(torch.float32) + epsilon)
        y = (x.to(torch.float32) - _channel_shaped(mean, rank)) * inverse * _channel_shaped(scale, rank)
        return (y + _channel_shaped(bias, rank)).to(x.dtype)

    return batch_norm


@register_op("InstanceNormalization")
def bind_instance_normalization(node: Node, ctx: BindContext):
    """InstanceNormalization(X, scale [C], B [C]): normalize each (n, c) plane over its spatial dims."""
    epsilon = float(node.attributes.get("epsilon", 1e-5))

    def instance_norm(x, scale, bias):
        if x.dtype == torch.float16:
            return F.instance_norm(x.float(), None, None, scale.float(), bias.float(), eps=epsilon).half()
        return F.instance_norm(x, None, None, scale, bias, eps=epsilon)

    return instance_norm


_NATIVE_LAYER_NORM = (torch.float32, torch.float64)


def _stash_dtype(x: torch.Tensor, stash_type: int) -> torch.dtype:
    if stash_type == 1 and x.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return x.dtype


@register_op("LayerNormalization", since_version=17)
def bind_layer_normalization(node: Node, ctx: BindContext):
    """LayerNormalization(X, Scale[, B]) -> (Y[, Mean][, InvStdDev]): normalize over dims
    axis.. (default -1); Mean/InvStdDev keep those dims as 1."""
    axis = int(node.attributes.get("axis", -1))
    epsilon = float(node.attributes.get("epsilon", 1e-5))
    stash_type = int(node.attributes.get("stash_type", 1))
    with_statistics = sum(1 for name in node.outputs if name) > 1

    def layer_norm(x, scale, bias=None):
        normalized = x.shape[axis:]
        if (
            not with_statistics
            and scale.shape == normalized
            and (bias is None or bias.shape == normalized)
            and x.dtype in _NATIVE_LAYER_NORM
        ):
            return F.layer_norm(x, normalized, scale, bias, epsilon)
        dims = tuple(range(x.dim() - len(normalized), x.dim()))
        stash = _stash_dtype(x, stash_type)
        stashed = x.to(stash)
        mean = stashed.mean(dims, keepdim=True)
        centered = stashed - mean
        inverse = torch.rsqrt((centered * centered).mean(dims, keepdim=True) + epsilon)
        y = centered * inverse * scale.to(stash)
        if bias is not None:
            y = y + bias.to(stash)
        y = y.to(x.dtype)
        if not with_statistics:
            return y
        return y, mean, inverse

    return layer_norm


def _bind_group_normalization(per_channel_parameters: bool):
    def bind(node: Node, ctx: BindContext):
        epsilon = float(node.attributes.get("epsilon", 1e-5))
        if "num_groups" not in node.attributes:
            raise ValueError("attribute 'num_groups': required, not found")
        groups = int(node.attributes["num_groups"])
        stash_type = int(node.attributes.get("stash_type", 1))

        def group_norm(x, scale, bias):
            channels = x.shape[1]
            if not per_channel_parameters:
                scale = scale.repeat_interleave(channels // groups)
                bias = bias.repeat_interleave(channels // groups)
            stash = _stash_dtype(x, stash_type)
            y = F.group_norm(x.to(stash), groups, scale.to(stash), bias.to(stash), epsilon)
            return y.to(x.dtype)

        return group_norm

    return bind


register_op("GroupNormalization", since_version=18)(_bind_group_normalization(per_channel_parameters=False))
register_op("GroupNormalization", since_version=21)(_bind_group_normalization(per_channel_parameters=True))


@register_op("RMSNormalization", since_version=23)
def bind_rms_normalization(node: Node, ctx: BindContext):
    """RMSNormalization(X, scale): Y = X / sqrt(mean(X^2 over dims axis..) + epsilon) * scale."""
    axis = int(node.attributes.get("axis", -1))
    epsilon = float(node.attributes.get("epsilon", 1e-5))
    stash_type = int(node.attributes.get("stash_type", 1))

    def rms_norm(x, scale):
        start = axis + x.dim() if axis < 0 else axis
        dims = tuple(range(start, x.dim()))
        stashed = x.to(_stash_dtype(x, stash_type))
        inverse = torch.rsqrt((stashed * stashed).mean(dims, keepdim=True) + epsilon)
        return (stashed * inverse * scale.to(stashed.dtype)).to(x.dtype)

    return rms_norm


@register_op("LRN")
def bind_lrn(node: Node, ctx: BindContext):
    """LRN: Y = X / (bias + alpha / size * sum of X^2 over the channel window)^beta; the window
    of channel c spans c - floor((size-1)/2) .. c + ceil((size-1)/2)."""
    size = int(node.attributes["size"])
    alpha = float(node.attributes.get("alpha", 1e-4))
    beta = float(node.attributes.get("beta", 0.75))
    bias = float(node.attributes.get("bias", 1.0))
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2

    def lrn(x):
        n, c = x.shape[:2]
        squares = (x * x).reshape(n, 1, c, -1)
        padded = F.pad(squares, (0, 0, before, after))
        window = F.avg_pool2d(padded, (size, 1), stride=1) * size
        scale = (window.reshape(x.shape) * (alpha / size) + bias) ** beta
        return x / scale

    return lrn


@register_op("LpNormalization")
def bind_lp_normalization(node: Node, ctx: BindContext):
    """LpNormalization: X divided by its Lp norm (p = 1 or 2, default 2) along `axis` (default -1);
    zero norms give zeros."""
    axis = int(node.attributes.get("axis", -1))
    p = int(node.attributes.get("p", 2))
    if p not in (1, 2):
        raise ValueError(f"attribute 'p': expected 1 or 2, got {p}")

    def lp_normalization(x):
        norm = torch.linalg.vector_norm(x, p, axis, keepdim=True)
        return torch.where(norm == 0, torch.zeros((), dtype=x.dtype), x / norm)

    return lp_normalization


@register_op("MeanVarianceNormalization", since_version=9)
def bind_mean_variance_normalization(node: Node, ctx: BindContext):
    """MeanVarianceNormalization: (X - E[X]) / (sqrt(E[X^2] - E[X]^2) + 1e-9) over `axes`
    (default [0, 2, 3])."""
    axes = tuple(int(a) for a in node.attributes.get("axes", [0, 2, 3]))

    def mean_variance_normalization(x):
        mean = x.mean(axes, keepdim=True)
        variance = (x * x).mean(axes, keepdim=True) - mean * mean
        return (x - mean) / (torch.sqrt(variance) + 1e-9)

    return mean_variance_normalization

