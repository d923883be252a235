"""Tensor sources and conversions: Constant, ConstantOfShape, Range, EyeLike, Cast, CastLike,
Dropout.

Constant (and ConstantOfShape / Range on constant inputs) build their tensor once
at bind time and return that same tensor on every run: consumers must not write
into it.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from sparse_rt.ir.graph import Node
from sparse_rt.ops.common import (
    constant_input,
    has_input,
    is_static,
    to_ints,
    to_torch,
    torch_dtype,
)
from sparse_rt.ops.registry import BindContext, register_op

_CONSTANT_ATTRIBUTES = ("value", "value_float", "value_floats", "value_int", "value_ints", "sparse_value")


def _sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(math.prod(dims), dtype=values.dtype)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), dims) if indices.size else indices.reshape(-1)
    dense[indices] = values
    return dense.reshape(dims)


def _constant_value(node: Node) -> np.ndarray:
    present = [name for name in node.attributes if name.startswith(("value", "sparse_value"))]
    if len(present) != 1:
        raise ValueError(f"expected exactly one value attribute of {list(_CONSTANT_ATTRIBUTES)}, got {present}")
    name = present[0]
    value = node.attributes[name]
    if name == "value_float":
        return np.array(value, dtype=np.float32)
    if name == "value_floats":
        return np.array(value, dtype=np.float32).reshape(-1)
    if name == "value_int":
        return np.array(value, dtype=np.int64)
    if name == "value_ints":
        return np.array(value, dtype=np.int64).reshape(-1)
    if name == "sparse_value":
        return _sparse_to_dense(value)
    if name == "value" and isinstance(value, np.ndarray) and value.dtype.kind not in "OUS":
        return value
    raise ValueError(f"attribute {name!r}: string tensors are not supported")


@register_op("Constant")
def bind_constant(node: Node, ctx: BindContext):
    """Constant: the tensor held by its one value attribute (value, value_float(s),
    value_int(s), sparse_value)."""
    tensor = to_torch(_constant_value(node), ctx.device)
    return lambda: tensor


def _fill_value(node: Node, ctx: BindContext) -> torch.Tensor:
    value = node.attributes.get("value")
    if value is None:
        return torch.zeros((), dtype=torch.float32, device=ctx.device)
    if value.size != 1:
        raise ValueError(f"attribute 'value': expected a one-element tensor, got shape {list(value.shape)}")
    return to_torch(value.reshape(()), ctx.device)


@register_op("ConstantOfShape", since_version=9)
def bind_constant_of_shape(node: Node, ctx: BindContext):
    """ConstantOfShape(shape: int64 [k]) -> tensor of that shape filled with `value`
    (a one-element tensor attribute; default float32 0)."""
    fill = _fill_value(node, ctx)
    static = constant_input(node, ctx, 0)
    if static is not None:
        tensor = fill.expand(to_ints(static)).contiguous()
        return lambda _shape=None: tensor
    return lambda shape: fill.expand(shape.tolist()).contiguous()


def _range(start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    # torch.arange has ONNX's length, ceil((limit - start) / delta), and values start + i * delta,
    # but refuses a limit behind the start (ONNX: an empty range)
    first, end, step = start.item(), limit.item(), delta.item()
    if step != 0 and (end - first) * step <= 0:
        return torch.empty(0, dtype=start.dtype, device=start.device)
    return torch.arange(first, end, step, dtype=start.dtype, device=start.device)


@register_op("Range", since_version=11)
def bind_range(node: Node, ctx: BindContext):
    """Range(start, limit, delta) -> [max(ceil((limit - start) / delta), 0)] of start's dtype,
    element i = start + i * delta."""
    if all(is_static(node, ctx, i) for i in range(3)):
        start, limit, delta = (to_torch(constant_input(node, ctx, i), ctx.device) for i in range(3))
        tensor = _range(start, limit, delta)
        return lambda *_inputs: tensor
    return _range


@register_op("EyeLike", since_version=9)
def bind_eye_like(node: Node, ctx: BindContext):
    """EyeLike: a 2-D tensor of the input's shape, ones on diagonal k (default 0), zeros elsewhere;
    dtype from the `dtype` attribute, else the input's."""
    k = int(node.attributes.get("k", 0))
    dtype = torch_dtype(node.attributes["dtype"], "dtype") if "dtype" in node.attributes else None

    def eye_like(x):
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
        cols = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        return (cols - rows == k).to(dtype or x.dtype)

    return eye_like


@register_op("Cast")
def bind_cast(node: Node, ctx: BindContext):
    """Cast: x converted to the element type `to` (floats to integers truncate); Cast-1
    names the type as a string ("FLOAT")."""
    to = node.attributes["to"]
    dtype = torch_dtype(onnx.TensorProto.DataType.Value(to) if isinstance(to, str) else to, "to")
    return lambda x: x.to(dtype)


@register_op("CastLike", since_version=15)
def bind_cast_like(node: Node, ctx: BindContext):
    """CastLike(x, like): x converted to like's dtype."""
    return lambda x, like: x.to(like.dtype)


def _wants_mask(node: Node) -> bool:
    return len(node.outputs) > 1 and bool(node.outputs[1])


def _inference_dropout(x: torch.Tensor, *_rest) -> tuple[torch.Tensor, torch.Tensor]:
    return x, torch.ones(x.shape, dtype=torch.bool, device=x.device)


@register_op("Dropout", since_version=1)
def bind_dropout_attributes(node: Node, ctx: BindContext):
    """Dropout-1..11: identity at inference; the optional mask (opset 10+: bool, before:
    x's dtype) is all true."""
    if not _wants_mask(node):
        return lambda x: x
    if ctx.opset >= 10:
        return _inference_dropout
    return lambda x: (x, torch.ones_like(x))


@register_op("Dropout", since_version=12)
def bind_dropout(node: Node, ctx: BindContext):
    """Dropout-12+: dropout(data[, ratio][, training_mode]) -> (output[, bool mask]).

    With training_mode false or omitted (inference) the output is the data and the
    mask all true; in training mode elements are zeroed with probability `ratio`
    (default 0.5) and the rest scaled by 1 / (1 - ratio).
    """
    want_mask = _wants_mask(node)
    inference = _inference_dropout if want_mask else (lambda x, *_rest: x)
    if not has_input(node, 2):
        return inference
    seed = node.attributes.get("seed")
    generator = torch.Generator(device=ctx.device)
    if seed is not None:
        generator.manual_seed(int(seed))

    def dropout(x, ratio=None, training_mode=None):
        if training_mode is None or not bool(training_mode.item()):
            return inference(x)
        p = 0.5 if ratio is None else float(ratio.item())
        if p == 0.0:
            return inference(x)
        mask = torch.rand(x.shape, generator=generator, device=x.device) >= p
        y = torch.where(mask, x / (1.0 - p), torch.zeros((), dtype=x.dtype, device=x.device))
        return (y, mask) if want_mask else y

    return dropout
