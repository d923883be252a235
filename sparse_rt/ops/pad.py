"""Pad and CenterCropPad.

Pad(data, pads[, constant_value][, axes]): pads is int64 [2 * k] laid out
[begin_0, ..., begin_(k-1), end_0, ..., end_(k-1)] over `axes` (default: all k
axes); a negative pad crops. Modes: constant (default, value 0), reflect
(mirror without repeating the edge), edge (repeat the edge), wrap (opset 19).
Before opset 11 pads, mode and value are attributes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparse_rt.ir.graph import Node
from sparse_rt.ops.common import (
    check_attribute,
    constant_input,
    has_input,
    is_static,
    normalize_axes,
    to_ints,
)
from sparse_rt.ops.registry import BindContext, register_op

_MODES = ("constant", "reflect", "edge", "wrap")


def _source_index(size: int, begin: int, end: int, mode: str, device) -> torch.Tensor:
    """For each output position along one axis, the input position it copies."""
    positions = torch.arange(-begin, size + end, device=device)
    if mode == "edge":
        return positions.clamp(0, size - 1)
    if mode == "wrap":
        return positions.remainder(size)
    period = 2 * (size - 1)
    if period == 0:
        return torch.zeros_like(positions)
    folded = positions.remainder(period)
    return torch.where(folded < size, folded, period - folded)


def _pad(x: torch.Tensor, pads: list[int], mode: str, value, axes: list[int] | None) -> torch.Tensor:
    rank = x.dim()
    axes = list(range(rank)) if axes is None else normalize_axes(axes, rank)
    if len(pads) != 2 * len(axes):
        raise ValueError(f"pads: expected {2 * len(axes)} values for {len(axes)} axes, got {len(pads)}")
    begins = dict(zip(axes, pads[: len(axes)]))
    ends = dict(zip(axes, pads[len(axes) :]))
    if mode == "constant":
        torch_pads: list[int] = []
        for axis in range(rank - 1, -1, -1):
            torch_pads += [begins.get(axis, 0), ends.get(axis, 0)]
        if value is None:
            value = 0
        elif isinstance(value, torch.Tensor):
            value = value.item()
        return F.pad(x, torch_pads, value=value)
    for axis in axes:
        if begins[axis] or ends[axis]:
            if x.shape[axis] == 0:
                raise ValueError(f"mode {mode!r}: cannot pad the empty axis {axis}")
            index = _source_index(x.shape[axis], begins[axis], ends[axis], mode, x.device)
            x = x.index_select(axis, index)
    return x


@register_op("Pad", since_version=1)
def bind_pad_attributes(node: Node, ctx: BindContext):
    """Pad-1/2: pads (`paddings` in Pad-1), mode and value attributes."""
    pads = [int(p) for p in node.attributes.get("pads", node.attributes.get("paddings", []))]
    mode = check_attribute("mode", node.attributes.get("mode", "constant"), _MODES[:3])
    value = float(node.attributes.get("value", 0.0))
    return lambda x: _pad(x, pads, mode, value, None)


@register_op("Pad", since_version=11)
def bind_pad(node: Node, ctx: BindContext):
    """Pad-11+: pads, constant_value (a scalar of data's dtype) and axes (opset 18) are inputs."""
    allowed = _MODES if ctx.opset >= 19 else _MODES[:3]
    mode = check_attribute("mode", node.attributes.get("mode", "constant"), allowed)
    if all(is_static(node, ctx, i) for i in (1, 2, 3)):
        pads = to_ints(constant_input(node, ctx, 1))
        value = constant_input(node, ctx, 2)
        value = value.reshape(-1)[0].item() if value is not None and value.size else None
        axes = to_ints(constant_input(node, ctx, 3)) if has_input(node, 3) else None
        return lambda x, *rest: _pad(x, pads, mode, value, axes)

    def pad(x, pads, value=None, axes=None):
        if value is not None and value.numel() == 0:
            value = None
        return _pad(x, pads.tolist(), mode, value, to_ints(axes))

    return pad


@register_op("CenterCropPad", since_version=18)
def bind_center_crop_pad(node: Node, ctx: BindContext):
    """CenterCropPad(data, shape): crop or zero-pad each of `axes` (default all) to shape[i],
    centered (an odd excess is cropped from / padded at the end)."""
    axes_attribute = node.attributes.get("axes")

    def center_crop_pad(x, shape):
        target = shape.tolist()
        axes = list(range(x.dim())) if axes_attribute is None else normalize_axes(axes_attribute, x.dim())
        pads = [0] * (2 * len(axes))
        for i, (axis, size) in enumerate(zip(axes, target)):
            excess = x.shape[axis] - size
            if excess >= 0:
                pads[i], pads[len(axes) + i] = -(excess // 2), -(excess - excess // 2)
            else:
                pads[i], pads[len(axes) + i] = (-excess) // 2, -excess - (-excess) // 2
        return _pad(x, pads, "constant", 0, axes)

    return center_crop_pad
