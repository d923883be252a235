"""Arithmetic: binary ops with numpy broadcasting, variadic Sum/Mean/Max/Min, MatMul, Gemm,
Einsum, CumSum/CumProd, Det.

Binary ops take two tensors of one dtype (Pow: any numeric exponent) and return
the broadcast result in that dtype. uint16/uint32/uint64 tensors, for which
torch's CPU kernels are missing, are computed in int64 and cast back (wrapping
like the unsigned type; uint64 values must stay below 2**63).
"""

from __future__ import annotations

import functools

import torch

from sparse_rt.ir.graph import Node
from sparse_rt.ops.common import check_attribute, constant_input, to_ints
from sparse_rt.ops.registry import BindContext, register_op

WIDE_UNSIGNED = (torch.uint16, torch.uint32, torch.uint64)


def widened(fn):
    """`fn` on tensors; for wide unsigned inputs, computed in int64 and cast back if integer."""

    def run(*tensors):
        dtype = tensors[0].dtype
        if dtype not in WIDE_UNSIGNED:
            return fn(*tensors)
        result = fn(*(t.to(torch.int64) for t in tensors))
        return result.to(dtype) if result.dtype == torch.int64 else result

    return run


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point():
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")


def _pow(base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    y = torch.pow(base, exponent)
    return y if y.dtype == base.dtype else y.to(base.dtype)


_BINARY = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
}


def _bind_binary(fn):
    wide = widened(fn)

    def bind(node: Node, ctx: BindContext):
        return wide

    return bind


for _op_type, _fn in _BINARY.items():
    register_op(_op_type, since_version=7)(_bind_binary(_fn))

register_op("Pow", since_version=7)(lambda node, ctx: widened(_pow))


@register_op("Mod", since_version=10)
def bind_mod(node: Node, ctx: BindContext):
    """Mod: fmod=0 takes the divisor's sign (integers), fmod=1 the dividend's (C fmod)."""
    fmod = check_attribute("fmod", int(node.attributes.get("fmod", 0)), (0, 1))
    return widened(torch.fmod if fmod else torch.remainder)


@register_op("BitShift", since_version=11)
def bind_bit_shift(node: Node, ctx: BindContext):
    """BitShift: x << y or x >> y for unsigned integers (`direction` LEFT or RIGHT)."""
    direction = check_attribute("direction", node.attributes.get("direction"), ("LEFT", "RIGHT"))
    shift = torch.bitwise_left_shift if direction == "LEFT" else torch.bitwise_right_shift
    bits = {torch.uint16: 16, torch.uint32: 32}

    def run(x, y):
        if x.dtype not in WIDE_UNSIGNED:
            return shift(x, y)
        wide = shift(x.to(torch.int64), y.to(torch.int64))
        if x.dtype in bits:
            wide = wide & ((1 << bits[x.dtype]) - 1)
        return wide.to(x.dtype)

    return run


def _variadic(fn):
    def run(*tensors):
        return functools.reduce(fn, tensors)

    return widened(run)


register_op("Sum")(lambda node, ctx: _variadic(torch.add))
register_op("Max")(lambda node, ctx: _variadic(torch.maximum))
register_op("Min")(lambda node, ctx: _variadic(torch.minimum))


@register_op("Mean")
def bind_mean(node: Node, ctx: BindContext):
    total = _variadic(torch.add)
    return lambda *tensors: total(*tensors) / len(tensors)


register_op("MatMul")(lambda node, ctx: torch.matmul)
register_op("Det", since_version=11)(lambda node, ctx: torch.linalg.det)


@register_op("Gemm", since_version=7)
def bind_gemm(node: Node, ctx: BindContext):
    """Gemm: Y = alpha * A' @ B' + beta * C, A' = A.T if transA, B' = B.T if transB.

    A: [M, K] (or [K, M]), B: [K, N] (or [N, K]), C broadcastable to [M, N], optional.
    """
    alpha = float(node.attributes.get("alpha", 1.0))
    beta = float(node.attributes.get("beta", 1.0))
    trans_a = bool(node.attributes.get("transA", 0))
    trans_b = bool(node.attributes.get("transB", 0))

    def gemm(a, b, c=None):
        if trans_a:
            a = a.t()
        if trans_b:
            b = b.t()
        if c is not None and beta != 0.0 and a.is_floating_point():
            return torch.addmm(c, a, b, beta=beta, alpha=alpha)
        y = a @ b
        if alpha != 1.0:
            y = (y * alpha).to(y.dtype)
        if c is not None and beta != 0.0:
            y = y + (c if beta == 1.0 else (c * beta).to(c.dtype))
        return y

    return gemm


@register_op("Einsum", since_version=12)
def bind_einsum(node: Node, ctx: BindContext):
    equation = node.attributes.get("equation", "").replace(" ", "")
    return lambda *operands: torch.einsum(equation, *operands)


def _bind_cumulative(fn, identity: int):
    """CumSum/CumProd: scan along the axis input; `exclusive` shifts in the identity,
    `reverse` scans from the end."""

    def bind(node: Node, ctx: BindContext):
        exclusive = bool(node.attributes.get("exclusive", 0))
        reverse = bool(node.attributes.get("reverse", 0))
        static_axis = constant_input(node, ctx, 1)
        fixed_axis = None if static_axis is None else to_ints(static_axis)[0]

        def run(x, axis_tensor=None):
            axis = fixed_axis if fixed_axis is not None else to_ints(axis_tensor)[0]
            if reverse:
                x = x.flip(axis)
            y = fn(x, axis, dtype=x.dtype)
            if exclusive:
                first = torch.full_like(x.narrow(axis, 0, min(1, x.shape[axis])), identity)
                y = torch.cat([first, y.narrow(axis, 0, max(x.shape[axis] - 1, 0))], axis)
            return y.flip(axis) if reverse else y

        return run

    return bind


register_op("CumSum", since_version=11)(_bind_cumulative(torch.cumsum, 0))
register_op("CumProd", since_version=26)(_bind_cumulative(torch.cumprod, 1))
