"""Shape manipulation: Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Shape, Size, Concat,
Split, Expand, Tile, Identity, DepthToSpace, SpaceToDepth.

Shapes travel as int64 tensors. When a shape/axes input is a constant the
binder parses it once; otherwise it is read with `.tolist()` on each run.
Results may be views of their input (torch semantics); no op writes in place.
"""

from __future__ import annotations

import math

import torch

from sparse_rt.ir.graph import Node
from sparse_rt.ops.common import (
    check_attribute,
    constant_input,
    is_static,
    normalize_axes,
    to_ints,
)
from sparse_rt.ops.registry import BindContext, register_op

register_op("Identity")(lambda node, ctx: lambda x: x)


def _reshape_target(x_shape: torch.Size, shape: list[int], allowzero: bool) -> list[int]:
    """ONNX target shape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    if not allowzero:
        if len(shape) > len(x_shape) and 0 in shape[len(x_shape):]:
            raise ValueError(
                f"shape {shape}: a 0 at position >= the input rank {len(x_shape)} has no dim to copy"
            )
        shape = [x_shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return shape


@register_op("Reshape", since_version=1)
def bind_reshape_attribute(node: Node, ctx: BindContext):
    """Reshape-1: target shape from the `shape` attribute."""
    shape = [int(s) for s in node.attributes.get("shape", [])]
    return lambda x: x.reshape(_reshape_target(x.shape, shape, False))


@register_op("Reshape", since_version=5)
def bind_reshape(node: Node, ctx: BindContext):
    """Reshape-5+: reshape(data, shape: int64 [k]); allowzero (opset 14) keeps 0 as a size."""
    allowzero = bool(node.attributes.get("allowzero", 0))
    static = constant_input(node, ctx, 1)
    if static is not None:
        shape = to_ints(static)
        if allowzero or 0 not in shape:
            return lambda x, _shape=None: x.reshape(shape)
        return lambda x, _shape=None: x.reshape(_reshape_target(x.shape, shape, allowzero))
    return lambda x, shape: x.reshape(_reshape_target(x.shape, shape.tolist(), allowzero))


@register_op("Flatten")
def bind_flatten(node: Node, ctx: BindContext):
    """Flatten: [d0..dn] -> [prod(d0..d(axis-1)), prod(d(axis)..dn)] (axis default 1)."""
    axis = int(node.attributes.get("axis", 1))

    def flatten(x):
        start = axis + x.dim() if axis < 0 else axis
        if not 0 <= start <= x.dim():
            raise ValueError(f"axis: expected a value in [{-x.dim()}, {x.dim()}], got {axis}")
        return x.reshape(math.prod(x.shape[:start]), math.prod(x.shape[start:]))

    return flatten


@register_op("Transpose")
def bind_transpose(node: Node, ctx: BindContext):
    """Transpose: permute dims by `perm` (default: reverse them)."""
    perm = node.attributes.get("perm")
    if perm is None:
        return lambda x: x.permute(tuple(range(x.dim() - 1, -1, -1)))
    perm = tuple(int(p) for p in perm)
    return lambda x: x.permute(perm)


def _squeeze(x: torch.Tensor, axes: list[int] | None) -> torch.Tensor:
    if not axes:
        return x.squeeze()
    y = x.squeeze(tuple(axes))  # torch takes negative dims and rejects out-of-range ones
    if y.dim() != x.dim() - len(axes):
        raise ValueError(f"axes {list(axes)}: expected dims of size 1, got shape {list(x.shape)}")
    return y


def _unsqueezer(axes: list[int]):
    """x -> x with size-1 dims inserted at `axes` (positions in the output)."""
    if all(a >= 0 for a in axes):
        positions = sorted(axes)

        def unsqueeze_static(x, _axes=None):
            shape = list(x.shape)
            for d in positions:
                shape.insert(d, 1)
            return x.reshape(shape)

        return unsqueeze_static

    def unsqueeze(x, _axes=None):
        shape = list(x.shape)
        for d in sorted(normalize_axes(axes, x.dim() + len(axes))):
            shape.insert(d, 1)
        return x.reshape(shape)

    return unsqueeze


@register_op("Squeeze", since_version=1)
def bind_squeeze_attribute(node: Node, ctx: BindContext):
    """Squeeze-1/11: drop the size-1 dims listed in `axes` (default: all size-1 dims)."""
    axes = node.attributes.get("axes")
    return lambda x: _squeeze(x, axes)


@register_op("Squeeze", since_version=13)
def bind_squeeze(node: Node, ctx: BindContext):
    """Squeeze-13+: axes from the optional int64 input."""
    if is_static(node, ctx, 1):
        axes = to_ints(constant_input(node, ctx, 1))
        return lambda x, _axes=None: _squeeze(x, axes)
    return lambda x, axes=None: _squeeze(x, to_ints(axes))


@register_op("Unsqueeze", since_version=1)
def bind_unsqueeze_attribute(node: Node, ctx: BindContext):
    """Unsqueeze-1/11: insert size-1 dims at `axes` (positions in the output)."""
    return _unsqueezer([int(a) for a in node.attributes.get("axes", [])])


@register_op("Unsqueeze", since_version=13)
def bind_unsqueeze(node: Node, ctx: BindContext):
    """Unsqueeze-13+: axes from the int64 input."""
    static = constant_input(node, ctx, 1)
    if static is not None:
        return _unsqueezer(to_ints(static))
    return lambda x, axes: _unsqueezer(axes.tolist())(x)


@register_op("Shape")
def bind_shape(node: Node, ctx: BindContext):
    """Shape: int64 [k] of the input's dims[start:end] (start/end from opset 15, clamped)."""
    start = node.attributes.get("start", 0)
    end = node.attributes.get("end")
    device = ctx.device
    return lambda x: torch.tensor(x.shape[start:end], dtype=torch.int64, device=device)


@register_op("Size")
def bind_size(node: Node, ctx: BindContext):
    """Size: int64 scalar, the number of elements."""
    device = ctx.device
    return lambda x: torch.tensor(x.numel(), dtype=torch.int64, device=device)


@register_op("Concat")
def bind_concat(node: Node, ctx: BindContext):
    """Concat: join the inputs along `axis` (required from opset 4)."""
    if "axis" not in node.attributes and ctx.opset >= 4:
        raise ValueError("attribute 'axis': required, not found")
    axis = int(node.attributes.get("axis", 1))
    return lambda *tensors: torch.cat(tensors, axis)


def _split_sizes(dim: int, count: int, even_tail: bool) -> list[int]:
    """Sizes of `count` parts of a `dim`-long axis: equal parts, or (opset 18 num_outputs)
    ceil(dim / count) with a smaller last part."""
    if even_tail:
        part = -(-dim // count)
        return [min(part, max(dim - i * part, 0)) for i in range(count)]
    if dim % count:
        raise ValueError(f"expected an axis divisible into {count} equal parts, got length {dim}")
    return [dim // count] * count


def _bind_split(split_from_input: bool):
    def bind(node: Node, ctx: BindContext):
        axis = int(node.attributes.get("axis", 0))
        count = len(node.outputs)
        num_outputs = node.attributes.get("num_outputs")
        if num_outputs is not None and int(num_outputs) != count:
            raise ValueError(f"num_outputs: expected {count} (the number of outputs), got {num_outputs}")
        even_tail = num_outputs is not None
        if split_from_input and not is_static(node, ctx, 1):
            def split_dynamic(x, split=None):
                sizes = split.tolist() if split is not None and split.numel() else None
                if sizes is None:
                    sizes = _split_sizes(x.shape[axis], count, even_tail)
                return torch.split(x, sizes, axis)

            return split_dynamic
        if split_from_input:
            sizes = to_ints(constant_input(node, ctx, 1)) or None
        else:
            sizes = node.attributes.get("split") or None
        if sizes is not None:
            sizes = [int(s) for s in sizes]
            return lambda x, *rest: torch.split(x, sizes, axis)
        return lambda x, *rest: torch.split(x, _split_sizes(x.shape[axis], count, even_tail), axis)

    return bind


register_op("Split", since_version=1)(_bind_split(split_from_input=False))
register_op("Split", since_version=13)(_bind_split(split_from_input=True))


def _expand(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    rank = max(x.dim(), len(shape))
    dims = [1] * (rank - x.dim()) + list(x.shape)
    target = [1] * (rank - len(shape)) + list(shape)
    result = []
    for d, t in zip(dims, target):
        # numpy broadcasting: a size-1 dim of either side takes the other's size
        if d != t and d != 1 and t != 1:
            raise ValueError(f"shape {list(shape)}: cannot broadcast an input of shape {list(x.shape)} to it")
        result.append(t if d == 1 else d)
    return x.expand(result)


@register_op("Expand", since_version=8)
def bind_expand(node: Node, ctx: BindContext):
    """Expand: broadcast x against `shape` (numpy rules: the result may be larger than `shape`)."""
    static = constant_input(node, ctx, 1)
    if static is not None:
        shape = to_ints(static)
        return lambda x, _shape=None: _expand(x, shape)
    return lambda x, shape: _expand(x, shape.tolist())


@register_op("Tile", since_version=6)
def bind_tile(node: Node, ctx: BindContext):
    """Tile: repeat x `repeats[i]` times along each axis i (repeats: int64 [rank])."""
    static = constant_input(node, ctx, 1)
    if static is not None:
        repeats = to_ints(static)
        return lambda x, _repeats=None: _tile(x, repeats)
    return lambda x, repeats: _tile(x, repeats.tolist())


def _tile(x: torch.Tensor, repeats: list[int]) -> torch.Tensor:
    """x tiled, or x itself where every repeat is 1 (an exporter's `repeat(batch, 1, 1)` at batch 1)."""
    if len(repeats) == x.dim() and all(r == 1 for r in repeats):
        return x
    return x.repeat(repeats)


@register_op("DepthToSpace")
def bind_depth_to_space(node: Node, ctx: BindContext):
    """DepthToSpace: [N, C, H, W] -> [N, C/b^2, H*b, W*b]; mode DCR (default) or CRD."""
    block = int(node.attributes["blocksize"])
    mode = check_attribute("mode", node.attributes.get("mode", "DCR"), ("DCR", "CRD"))

    def depth_to_space(x):
        n, c, h, w = x.shape
        if mode == "DCR":
            y = x.reshape(n, block, block, c // (block * block), h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(n, c // (block * block), block, block, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // (block * block), h * block, w * block)

    return depth_to_space


@register_op("SpaceToDepth")
def bind_space_to_depth(node: Node, ctx: BindContext):
    """SpaceToDepth: [N, C, H, W] -> [N, C*b^2, H/b, W/b]; mode DCR (default) puts the block
    offsets before the channel, CRD (opset 28) after it."""
    block = int(node.attributes["blocksize"])
    mode = check_attribute("mode", node.attributes.get("mode", "DCR"), ("DCR", "CRD"))
    order = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)

    def space_to_depth(x):
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // block, block, w // block, block).permute(order)
        return y.reshape(n, c * block * block, h // block, w // block)

    return space_to_depth
