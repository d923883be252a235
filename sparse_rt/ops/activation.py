"""Activations: Relu and its relatives, Gelu, Mish, and Softmax/LogSoftmax/Hardmax.

Each op maps x to a tensor of x's shape and dtype. Softmax-like ops before
opset 13 flatten the input to 2-D at `axis` (default 1) and normalize each row;
from opset 13 they normalize along `axis` (default -1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sparse_rt.ir.graph import Node
from sparse_rt.ops.common import check_attribute
from sparse_rt.ops.registry import BindContext, register_op

register_op("Relu")(lambda node, ctx: torch.relu)
register_op("Softsign")(lambda node, ctx: F.softsign)
register_op("Softplus")(lambda node, ctx: _softplus)
register_op("Mish", since_version=18)(lambda node, ctx: F.mish)
register_op("HardSwish", since_version=14)(lambda node, ctx: F.hardswish)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    # log(1 + exp(x)) without overflow for large x
    return torch.logaddexp(x, torch.zeros((), dtype=x.dtype, device=x.device))


@register_op("LeakyRelu")
def bind_leaky_relu(node: Node, ctx: BindContext):
    alpha = float(node.attributes.get("alpha", 0.01))
    return lambda x: F.leaky_relu(x, alpha)


@register_op("PRelu")
def bind_prelu(node: Node, ctx: BindContext):
    """PRelu: y = x if x >= 0 else slope * x; slope broadcasts to x (numpy rules)."""
    return lambda x, slope: torch.where(x < 0, x * slope, x)


@register_op("Elu")
def bind_elu(node: Node, ctx: BindContext):
    alpha = float(node.attributes.get("alpha", 1.0))
    return lambda x: F.elu(x, alpha)


@register_op("Selu")
def bind_selu(node: Node, ctx: BindContext):
    alpha = float(node.attributes.get("alpha", 1.67326319217681884765625))
    gamma = float(node.attributes.get("gamma", 1.05070102214813232421875))
    return lambda x: F.elu(x, alpha) * gamma


@register_op("Celu", since_version=12)
def bind_celu(node: Node, ctx: BindContext):
    alpha = float(node.attributes.get("alpha", 1.0))
    return lambda x: F.celu(x, alpha)


@register_op("HardSigmoid")
def bind_hard_sigmoid(node: Node, ctx: BindContext):
    """HardSigmoid: y = clamp(alpha * x + beta, 0, 1) (defaults alpha 0.2, beta 0.5)."""
    alpha = float(node.attributes.get("alpha", 0.2))
    beta = float(node.attributes.get("beta", 0.5))
    return lambda x: torch.clamp(x * alpha + beta, 0.0, 1.0)


@register_op("ThresholdedRelu", since_version=10)
def bind_thresholded_relu(node: Node, ctx: BindContext):
    alpha = float(node.attributes.get("alpha", 1.0))
    return lambda x: torch.where(x > alpha, x, torch.zeros((), dtype=x.dtype, device=x.device))


@register_op("Shrink", since_version=9)
def bind_shrink(node: Node, ctx: BindContext):
    """Shrink: x + bias if x < -lambd, x - bias if x > lambd, else 0."""
    bias = node.attributes.get("bias", 0.0)
    lambd = node.attributes.get("lambd", 0.5)

    def shrink(x):
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        shifted = torch.where(x < -lambd, x + bias, zero)
        return torch.where(x > lambd, x - bias, shifted).to(x.dtype)

    return shrink


@register_op("Gelu", since_version=20)
def bind_gelu(node: Node, ctx: BindContext):
    approximate = check_attribute("approximate", node.attributes.get("approximate", "none"), ("none", "tanh"))
    return lambda x: F.gelu(x, approximate=approximate)


@register_op("Swish", since_version=24)
def bind_swish(node: Node, ctx: BindContext):
    alpha = float(node.attributes.get("alpha", 1.0))
    if alpha == 1.0:
        return F.silu
    return lambda x: x * torch.sigmoid(x * alpha)


def _hardmax(x: torch.Tensor, axis: int) -> torch.Tensor:
    index = x.argmax(axis, keepdim=True)
    return torch.zeros_like(x).scatter_(axis, index, 1)


_SOFTMAX_FAMILY = {
    "Softmax": torch.softmax,
    "LogSoftmax": torch.log_softmax,
    "Hardmax": _hardmax,
}


def _bind_coerced_2d(fn):
    """Opset 1-12: y = fn(x reshaped to [prod(shape[:axis]), prod(shape[axis:])], dim 1)."""

    def bind(node: Node, ctx: BindContext):
        axis = int(node.attributes.get("axis", 1))

        def run(x):
            if x.dim() == 0:
                return fn(x.reshape(1, 1), 1).reshape(())
            start = axis + x.dim() if axis < 0 else axis
            rows = math.prod(x.shape[:start])
            return fn(x.reshape(rows, math.prod(x.shape[start:])), 1).reshape(x.shape)

        return run

    return bind


def _bind_along_axis(fn):
    """Opset 13+: y = fn(x, axis) (default axis -1)."""

    def bind(node: Node, ctx: BindContext):
        axis = int(node.attributes.get("axis", -1))
        return lambda x: fn(x, axis)

    return bind


for _op_type, _fn in _SOFTMAX_FAMILY.items():
    register_op(_op_type, since_version=1)(_bind_coerced_2d(_fn))
    register_op(_op_type, since_version=13)(_bind_along_axis(_fn))
