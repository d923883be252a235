"""Reductions: ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare, ArgMax/ArgMin.

ReduceX(data[, axes]) reduces `data` over `axes` (default: all axes), keeping the
reduced dims as 1 when keepdims=1 (the default). The axes move from an attribute
to an optional int64 input at opset 13 (ReduceSum) or 18 (the others); with
that input empty, noop_with_empty_axes=1 returns the data unchanged. A reduction
over an empty set gives the op's identity (0 for sums, 1 for products, -inf or
the dtype's minimum for max, +inf or the maximum for min). The result has the
input's dtype (integer means truncate).
"""

from __future__ import annotations

import torch

from sparse_rt.ir.graph import Node
from sparse_rt.ops.common import constant_input, has_input, normalize_axis, to_ints
from sparse_rt.ops.math_ops import WIDE_UNSIGNED
from sparse_rt.ops.registry import BindContext, register_op


def _all_dims(x: torch.Tensor, dims) -> tuple[int, ...]:
    return tuple(range(x.dim())) if dims is None else dims


def _sum(x, dims, keepdim):
    return torch.sum(x, dims, keepdim, dtype=x.dtype)


def _mean(x, dims, keepdim):
    if x.is_floating_point():
        return torch.mean(x, dims, keepdim)
    return torch.mean(x.to(torch.float64), dims, keepdim).to(x.dtype)


def _prod(x, dims, keepdim):
    reduced = x
    for d in _all_dims(x, dims):
        reduced = torch.prod(reduced, d, keepdim=True, dtype=x.dtype)
    return reduced if keepdim else reduced.squeeze(_all_dims(x, dims))


def _extreme(fn, empty_value):
    def run(x, dims, keepdim):
        if x.numel() == 0 and any(x.shape[d] == 0 for d in _all_dims(x, dims)):
            shape = [1 if d in _normalized(x, dims) else n for d, n in enumerate(x.shape)]
            y = torch.full(shape, empty_value(x.dtype), dtype=x.dtype, device=x.device)
            return y if keepdim else y.squeeze(_all_dims(x, dims))
        return fn(x, _all_dims(x, dims), keepdim)

    return run


def _normalized(x, dims) -> set[int]:
    return {d % x.dim() for d in _all_dims(x, dims)}


def _lowest(dtype: torch.dtype):
    if dtype == torch.bool:
        return False
    return float("-inf") if dtype.is_floating_point else torch.iinfo(dtype).min


def _highest(dtype: torch.dtype):
    if dtype == torch.bool:
        return True
    return float("inf") if dtype.is_floating_point else torch.iinfo(dtype).max


def _in_float(fn):
    """fn computed in float64 for integer inputs, cast back to the input dtype."""

    def run(x, dims, keepdim):
        if x.is_floating_point():
            return fn(x, dims, keepdim)
        return fn(x.to(torch.float64), dims, keepdim).to(x.dtype)

    return run


_REDUCERS = {
    "ReduceSum": (_sum, 13),
    "ReduceMean": (_mean, 18),
    "ReduceProd": (_prod, 18),
    "ReduceMax": (_extreme(torch.amax, _lowest), 18),
    "ReduceMin": (_extreme(torch.amin, _highest), 18),
    "ReduceL1": (lambda x, dims, keepdim: _sum(torch.abs(x), dims, keepdim), 18),
    "ReduceL2": (_in_float(lambda x, dims, keepdim: torch.sqrt(_sum(x * x, dims, keepdim))), 18),
    "ReduceSumSquare": (lambda x, dims, keepdim: _sum(x * x, dims, keepdim), 18),
    "ReduceLogSum": (_in_float(lambda x, dims, keepdim: torch.log(_sum(x, dims, keepdim))), 18),
    "ReduceLogSumExp": (
        _in_float(lambda x, dims, keepdim: torch.logsumexp(x, _all_dims(x, dims), keepdim)),
        18,
    ),
}


def _on_wide_unsigned(reduce):
    def run(x, dims, keepdim):
        if x.dtype in WIDE_UNSIGNED:
            return reduce(x.to(torch.int64), dims, keepdim).to(x.dtype)
        return reduce(x, dims, keepdim)

    return run


def _bind_axes_attribute(reduce):
    """Opsets before the axes input: `axes` attribute, default all."""

    def bind(node: Node, ctx: BindContext):
        keepdim = bool(node.attributes.get("keepdims", 1))
        axes = node.attributes.get("axes")
        dims = tuple(int(a) for a in axes) if axes else None
        return lambda x: reduce(x, dims, keepdim)

    return bind


def _bind_axes_input(reduce):
    """Opsets with the optional int64 `axes` input and noop_with_empty_axes."""

    def bind(node: Node, ctx: BindContext):
        keepdim = bool(node.attributes.get("keepdims", 1))
        noop = bool(node.attributes.get("noop_with_empty_axes", 0))
        constant_axes = constant_input(node, ctx, 1)
        if not has_input(node, 1) or constant_axes is not None:
            axes = to_ints(constant_axes) or []
            if not axes and noop:
                return lambda x, *rest: x
            dims = tuple(axes) if axes else None
            return lambda x, *rest: reduce(x, dims, keepdim)

        def run(x, axes_tensor=None):
            axes = to_ints(axes_tensor) or []
            if not axes and noop:
                return x
            return reduce(x, tuple(axes) if axes else None, keepdim)

        return run

    return bind


for _op_type, (_reduce, _input_since) in _REDUCERS.items():
    _reduce = _on_wide_unsigned(_reduce)
    register_op(_op_type, since_version=1)(_bind_axes_attribute(_reduce))
    register_op(_op_type, since_version=_input_since)(_bind_axes_input(_reduce))


def _bind_arg(fn):
    """ArgMax/ArgMin: int64 index of the first extreme along `axis` (default 0), or the
    last with select_last_index=1; keepdims (default 1) keeps `axis` as size 1."""

    def bind(node: Node, ctx: BindContext):
        axis = int(node.attributes.get("axis", 0))
        keepdim = bool(node.attributes.get("keepdims", 1))
        last = bool(node.attributes.get("select_last_index", 0))

        def run(x):
            if x.dtype == torch.bool or x.dtype in WIDE_UNSIGNED:
                x = x.to(torch.int64)
            if not last:
                return fn(x, axis, keepdim)
            dim = normalize_axis(axis, x.dim())
            return x.shape[dim] - 1 - fn(x.flip(dim), dim, keepdim)

        return run

    return bind


register_op("ArgMax")(_bind_arg(torch.argmax))
register_op("ArgMin")(_bind_arg(torch.argmin))
