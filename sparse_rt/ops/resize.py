"""Resize and Upsample (nearest, linear, cubic; any rank; separable, one axis at a time).

Resize(X[, roi][, scales][, sizes]) -> Y. Per resized axis with input length n,
scale s and output length m (floor(n * s), or `sizes` with s = m / n), output
position y maps to the input coordinate x = T(y) of `coordinate_transformation_mode`
(half_pixel by default: (y + 0.5) / s - 0.5). Nearest picks round(x) per
`nearest_mode`; linear/cubic blend the 2/4 nearest inputs (edge-clamped; with
`antialias` the kernel widens by 1 / s when downsampling). tf_crop_and_resize
maps through `roi` and writes `extrapolation_value` outside the input.
Upsample (and Resize-10) is asymmetric with nearest = floor.

Per input shape, the binder builds once an index (nearest) or a weight matrix
[m, n] (linear/cubic) per axis, so a run is one gather or matmul per axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sparse_rt.ir.graph import Node
from sparse_rt.ops.common import check_attribute, constant_input, is_static, normalize_axes
from sparse_rt.ops.registry import BindContext, register_op

_MODES = ("nearest", "linear", "cubic")
_TRANSFORMS = (
    "half_pixel",
    "half_pixel_symmetric",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
)
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_CACHED_SHAPES = 64


@dataclass(frozen=True)
class ResizeAttributes:
    mode: str
    transform: str
    nearest_mode: str
    cubic_a: float
    exclude_outside: bool
    extrapolation_value: float
    antialias: bool
    keep_aspect_ratio_policy: str
    axes: tuple[int, ...] | None

    @classmethod
    def from_node(cls, node: Node, legacy: bool) -> "ResizeAttributes":
        attributes = node.attributes
        mode = attributes.get("mode", "nearest")
        mode = check_attribute("mode", "linear" if mode == "bilinear" else mode, _MODES)
        if legacy:
            return cls(mode, "asymmetric", "floor", -0.75, False, 0.0, False, "stretch", None)
        axes = attributes.get("axes")
        return cls(
            mode,
            check_attribute(
                "coordinate_transformation_mode",
                attributes.get("coordinate_transformation_mode", "half_pixel"),
                _TRANSFORMS,
            ),
            check_attribute("nearest_mode", attributes.get("nearest_mode", "round_prefer_floor"), _NEAREST_MODES),
            float(attributes.get("cubic_coeff_a", -0.75)),
            bool(attributes.get("exclude_outside", 0)),
            float(attributes.get("extrapolation_value", 0.0)),
            bool(attributes.get("antialias", 0)),
            check_attribute(
                "keep_aspect_ratio_policy",
                attributes.get("keep_aspect_ratio_policy", "stretch"),
                ("stretch", "not_larger", "not_smaller"),
            ),
            None if axes is None else tuple(int(a) for a in axes),
        )


# ---------------------------------------------------------------- 1-D interpolation weights


def _source_coordinates(attrs: ResizeAttributes, length: int, scale: float, out: int, roi) -> tuple[np.ndarray, np.ndarray | None]:
    """Input coordinate of each output position, and (tf_crop_and_resize) which fall outside."""
    y = np.arange(out, dtype=np.float64)
    extent = scale * length
    transform = attrs.transform
    if transform == "align_corners":
        return (np.zeros(out) if extent == 1 else y * (length - 1) / (extent - 1)), None
    if transform == "asymmetric":
        return y / scale, None
    if transform == "pytorch_half_pixel":
        return (np.full(out, -0.5) if extent == 1 else (y + 0.5) / scale - 0.5), None
    if transform == "half_pixel":
        return (y + 0.5) / scale - 0.5, None
    if transform == "half_pixel_symmetric":
        offset = length / 2 * (1 - out / extent)
        return offset + (y + 0.5) / scale - 0.5, None
    start, end = roi
    if extent == 1:
        x = np.full(out, (end - start) * (length - 1) / 2)
    else:
        x = y * (end - start) * (length - 1) / (extent - 1)
    x = x + start * (length - 1)
    return x, (x < 0) | (x > length - 1)


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _coefficients(attrs: ResizeAttributes, ratio: np.ndarray, scale: float) -> np.ndarray:
    """[m, taps] blending weights for the fractional positions `ratio` in (0, 1]."""
    if attrs.mode == "nearest":
        integer = ratio == 1
        if attrs.nearest_mode == "round_prefer_floor":
            right = ratio > 0.5
        elif attrs.nearest_mode == "round_prefer_ceil":
            right = ratio >= 0.5
        elif attrs.nearest_mode == "floor":
            right = np.zeros_like(ratio, dtype=bool)
        else:
            right = np.ones_like(ratio, dtype=bool)
        right = right | integer
        return np.stack([~right, right], axis=1).astype(np.float64)
    if not attrs.antialias:
        if attrs.mode == "linear":
            return np.stack([1 - ratio, ratio], axis=1)
        offsets = np.array([-1.0, 0.0, 1.0, 2.0])
        return _cubic(offsets[None, :] - ratio[:, None], attrs.cubic_a)
    shrink = min(scale, 1.0)
    if attrs.mode == "linear":
        start = int(np.floor(-1 / shrink) + 1)
        taps = np.arange(start, 2 - start, dtype=np.float64)
        weights = np.clip(1 - np.abs((taps[None, :] - ratio[:, None]) * shrink), 0, 1)
    else:
        start = int(np.floor(-2 / shrink) + 1)
        taps = np.arange(start, 2 - start, dtype=np.float64)
        weights = _cubic(shrink * (taps[None, :] - ratio[:, None]), attrs.cubic_a)
    return weights / weights.sum(axis=1, keepdims=True)


def _axis_weights(attrs: ResizeAttributes, length: int, scale: float, out: int, roi):
    """(neighbor indices [m, taps] clamped to the input, weights [m, taps], outside mask or None)."""
    x, outside = _source_coordinates(attrs, length, scale, out, roi)
    base = np.floor(x)
    ratio = np.where(x == base, 1.0, x - base)
    weights = _coefficients(attrs, ratio, scale)
    taps = weights.shape[1]
    pad = int(np.ceil(taps / 2))
    shifted = x + pad
    cell = np.floor(shifted).astype(np.int64)
    fraction = shifted - cell
    if taps % 2 == 0:
        offset = np.where(fraction == 0, -(taps // 2), -(taps // 2) + 1)
    else:
        offset = np.where(fraction <= 0.5, -((taps - 1) // 2), -((taps - 1) // 2) + 1)
    neighbors = (cell + offset)[:, None] + np.arange(taps)[None, :] - pad
    if attrs.exclude_outside:
        weights = np.where((neighbors < 0) | (neighbors >= length), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1.0, total)
    return np.clip(neighbors, 0, length - 1), weights, outside


@dataclass(frozen=True)
class AxisStep:
    """How one axis is resized: each element repeated `repeats` times (nearest, integer
    upscaling), a gather by `index`, or a matmul by `matrix` [m, n]."""

    axis: int
    index: torch.Tensor | None
    matrix: torch.Tensor | None
    outside: torch.Tensor | None
    repeats: int = 0


def _axis_step(attrs: ResizeAttributes, axis: int, rank: int, length: int, scale: float, out: int, roi, device) -> AxisStep:
    neighbors, weights, outside = _axis_weights(attrs, length, scale, out, roi)
    mask = None
    if outside is not None and outside.any():
        shape = [1] * rank
        shape[axis] = out
        mask = torch.from_numpy(outside.reshape(shape)).to(device)
    if attrs.mode == "nearest":
        picked = neighbors[np.arange(out), weights.argmax(axis=1)] if out else np.zeros(0, dtype=np.int64)
        repeats = out // length if length and out % length == 0 else 0
        if mask is None and repeats and np.array_equal(picked, np.arange(out) // repeats):
            return AxisStep(axis, None, None, None, repeats)
        return AxisStep(axis, torch.from_numpy(picked.astype(np.int64)).to(device), None, mask)
    matrix = np.zeros((out, length), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out), neighbors.shape[1]), neighbors.reshape(-1)), weights.reshape(-1))
    return AxisStep(axis, None, torch.from_numpy(matrix).to(device), mask)


# ---------------------------------------------------------------- the plan for one input shape


def _plan(attrs: ResizeAttributes, shape: tuple[int, ...], scales, sizes, roi, device) -> list[AxisStep]:
    rank = len(shape)
    axes = list(range(rank)) if attrs.axes is None else normalize_axes(attrs.axes, rank)
    if scales is not None and len(scales) != len(axes):
        raise ValueError(f"scales: expected {len(axes)} values, got {len(scales)}")
    if sizes is not None and len(sizes) != len(axes):
        raise ValueError(f"sizes: expected {len(axes)} values, got {len(sizes)}")
    factor = [1.0] * rank
    out = list(shape)
    if sizes is not None:
        for axis, size in zip(axes, sizes):
            factor[axis] = size / shape[axis] if shape[axis] else 1.0
            out[axis] = int(size)
        if attrs.keep_aspect_ratio_policy != "stretch":
            pick = min if attrs.keep_aspect_ratio_policy == "not_larger" else max
            common = pick(factor[a] for a in axes)
            for axis in axes:
                factor[axis] = common
                out[axis] = int(common * shape[axis] + 0.5)
    elif scales is not None:
        for axis, scale in zip(axes, scales):
            factor[axis] = float(scale)
            out[axis] = int(np.float64(scale) * shape[axis])
    else:
        raise ValueError("expected one of the inputs 'scales' or 'sizes', got neither")
    bounds = [(0.0, 1.0)] * rank
    if roi is not None and len(roi):
        if len(roi) != 2 * len(axes):
            raise ValueError(f"roi: expected {2 * len(axes)} values, got {len(roi)}")
        for i, axis in enumerate(axes):
            bounds[axis] = (float(roi[i]), float(roi[len(axes) + i]))
    steps = []
    for axis in axes:
        trivial_roi = attrs.transform != "tf_crop_and_resize" or bounds[axis] == (0.0, 1.0)
        if math.isclose(factor[axis], 1.0) and out[axis] == shape[axis] and trivial_roi:
            continue
        steps.append(_axis_step(attrs, axis, rank, shape[axis], factor[axis], out[axis], bounds[axis], device))
    return steps


def _apply(x: torch.Tensor, steps: list[AxisStep], extrapolation_value: float) -> torch.Tensor:
    blended = any(step.matrix is not None for step in steps)
    y = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32) if blended else x
    for step in steps:
        if step.repeats:
            y = y.repeat_interleave(step.repeats, dim=step.axis)
        elif step.index is not None:
            y = y.index_select(step.axis, step.index)
        else:
            y = torch.movedim(torch.movedim(y, step.axis, -1) @ step.matrix.to(y.dtype).t(), -1, step.axis)
        if step.outside is not None:
            y = y.masked_fill(step.outside, extrapolation_value)
    if y.dtype != x.dtype:
        if not x.is_floating_point():
            info = torch.iinfo(x.dtype)
            y = torch.round(y).clamp(info.min, info.max)
        y = y.to(x.dtype)
    return y


def _resizer(attrs: ResizeAttributes, device):
    """run(x, roi, scales, sizes) with the per-axis steps cached per input shape and parameters."""
    cache: dict[tuple, list[AxisStep]] = {}

    def run(x, roi=None, scales=None, sizes=None):
        key = (tuple(x.shape), roi, scales, sizes)
        steps = cache.get(key)
        if steps is None:
            if len(cache) >= _CACHED_SHAPES:
                cache.clear()
            steps = cache[key] = _plan(attrs, tuple(x.shape), scales, sizes, roi, device)
        return _apply(x, steps, attrs.extrapolation_value)

    return run


def _floats(tensor) -> tuple[float, ...] | None:
    """A 1-D numpy/torch tensor as a tuple of floats; None when omitted or empty."""
    if tensor is None:
        return None
    values = tensor.reshape(-1).tolist()
    return tuple(float(v) for v in values) if values else None


def _ints(tensor) -> tuple[int, ...] | None:
    floats = _floats(tensor)
    return None if floats is None else tuple(int(v) for v in floats)


@register_op("Resize", since_version=10)
def bind_resize_10(node: Node, ctx: BindContext):
    """Resize-10: resize(X, scales), asymmetric coordinates, nearest rounds down."""
    run = _resizer(ResizeAttributes.from_node(node, legacy=True), ctx.device)
    return lambda x, scales: run(x, None, _floats(scales), None)


@register_op("Resize", since_version=11)
def bind_resize(node: Node, ctx: BindContext):
    """Resize-11+: resize(X[, roi][, scales][, sizes]) (exactly one of scales/sizes non-empty)."""
    run = _resizer(ResizeAttributes.from_node(node, legacy=False), ctx.device)
    if all(is_static(node, ctx, i) for i in (1, 2, 3)):
        roi, scales = _floats(constant_input(node, ctx, 1)), _floats(constant_input(node, ctx, 2))
        sizes = _ints(constant_input(node, ctx, 3))
        return lambda x, *_rest: run(x, roi, scales, sizes)
    return lambda x, roi=None, scales=None, sizes=None: run(x, _floats(roi), _floats(scales), _ints(sizes))


@register_op("Upsample", since_version=7)
def bind_upsample_attribute(node: Node, ctx: BindContext):
    """Upsample-7: scales from the attribute."""
    run = _resizer(ResizeAttributes.from_node(node, legacy=True), ctx.device)
    scales = tuple(float(s) for s in node.attributes["scales"])
    return lambda x: run(x, None, scales, None)


@register_op("Upsample", since_version=9)
def bind_upsample(node: Node, ctx: BindContext):
    """Upsample-9: upsample(X, scales)."""
    run = _resizer(ResizeAttributes.from_node(node, legacy=True), ctx.device)
    return lambda x, scales: run(x, None, _floats(scales), None)
