"""Pooling: MaxPool (with optional Indices), AveragePool, LpPool and their Global forms.

X: [N, C, *spatial] (1-3 spatial dims) -> Y: [N, C, *out]. Along each spatial dim,
with effective kernel e = (kernel - 1) * dilation + 1 and explicit pads (b, f):
out = floor((in + b + f - e) / stride) + 1, or with ceil_mode the ceiling, minus
one if that last window would start past the input and its begin pad. Windows
reaching past the end padding (ceil_mode) only cover the elements that exist.
AveragePool divides by the number of covered input elements, or also counts the
explicit pads with count_include_pad=1. auto_pad SAME_* gives out = ceil(in / stride).

Shapes that torch's pooling takes directly (symmetric pads of at most half the
kernel) run on torch's kernels; others pad explicitly first.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparse_rt.ir.graph import Node
from sparse_rt.ops.common import check_attribute
from sparse_rt.ops.conv import AUTO_PADS, same_pads, split_pads, torch_pad_list
from sparse_rt.ops.registry import BindContext, register_op

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass(frozen=True)
class PoolWindow:
    """The window attributes of a pooling node."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    auto_pad: str
    ceil_mode: bool

    @classmethod
    def from_node(cls, node: Node) -> "PoolWindow":
        attributes = node.attributes
        if "kernel_shape" not in attributes:
            raise ValueError("attribute 'kernel_shape': required, not found")
        kernel = tuple(int(k) for k in attributes["kernel_shape"])
        rank = len(kernel)
        if rank not in _MAX_POOL:
            raise ValueError(f"kernel_shape: expected 1 to 3 spatial dims, got {list(kernel)}")
        strides = tuple(int(s) for s in attributes.get("strides") or [1] * rank)
        dilations = tuple(int(d) for d in attributes.get("dilations") or [1] * rank)
        pads = tuple(int(p) for p in attributes.get("pads") or [0] * (2 * rank))
        auto_pad = check_attribute("auto_pad", attributes.get("auto_pad", "NOTSET"), AUTO_PADS)
        return cls(kernel, strides, dilations, pads, auto_pad, bool(attributes.get("ceil_mode", 0)))

    @property
    def rank(self) -> int:
        return len(self.kernel)

    def padding(self, sizes) -> tuple[list[int], list[int], list[int]]:
        """(begins, ends, overhang) for an input of spatial `sizes`: the pads, and how far
        the last ceil_mode window reaches past the end pad (cached per sizes)."""
        return _padding(self, tuple(sizes))

    def compute_padding(self, sizes: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begins, ends = same_pads(sizes, self.kernel, self.strides, self.dilations, self.auto_pad == "SAME_UPPER")
            return begins, ends, [0] * self.rank
        if self.auto_pad == "VALID":
            return [0] * self.rank, [0] * self.rank, [0] * self.rank
        begins, ends = split_pads(list(self.pads))
        overhang = []
        for size, k, s, d, b, f in zip(sizes, self.kernel, self.strides, self.dilations, begins, ends):
            extent = (k - 1) * d + 1
            span = size + b + f - extent
            if self.ceil_mode:
                out = -(-span // s) + 1
                if (out - 1) * s >= size + b:
                    out -= 1
            else:
                out = span // s + 1
            overhang.append(max((out - 1) * s + extent - (size + b + f), 0))
        return begins, ends, overhang

    def native_padding(self, begins, ends, dilation_ok: bool) -> list[int] | None:
        """The symmetric padding torch's pooling accepts for these pads, or None."""
        if begins != ends or not dilation_ok:
            return None
        for pad, k, d in zip(begins, self.kernel, self.dilations):
            if 2 * pad > (k - 1) * d + 1:
                return None
        return begins


@functools.lru_cache(maxsize=256)
def _padding(window: PoolWindow, sizes: tuple[int, ...]) -> tuple[list[int], list[int], list[int]]:
    return window.compute_padding(sizes)


def sum_pool(x: torch.Tensor, window: PoolWindow) -> torch.Tensor:
    """Window sums over an already padded x [N, C, *spatial] (a depthwise conv with ones)."""
    n, c = x.shape[:2]
    ones = torch.ones((1, 1, *window.kernel), dtype=x.dtype, device=x.device)
    y = _CONV[window.rank](x.reshape(n * c, 1, *x.shape[2:]), ones, None, window.strides, 0, window.dilations)
    return y.reshape(n, c, *y.shape[2:])


def _float_compute(fn):
    """fn evaluated in float32 for dtypes torch's CPU pooling lacks (float16, integers)."""

    def run(x, *rest):
        if x.dtype in (torch.float32, torch.float64):
            return fn(x, *rest)
        result = fn(x.to(torch.float32), *rest)
        if isinstance(result, tuple):
            return (result[0].to(x.dtype), *result[1:])
        return result.to(x.dtype)

    return run


def _onnx_indices(indices, padded_shape, begins, shape, column_major: bool) -> torch.Tensor:
    """torch pooling indices (row-major within one padded [*spatial] plane) -> ONNX indices
    (flat over the whole unpadded [N, C, *spatial] tensor, spatial part row- or column-major)."""
    if list(padded_shape) != list(shape) or column_major:
        coords = []
        remainder = indices
        for size in reversed(padded_shape):
            coords.append(remainder % size)
            remainder = remainder // size
        coords = [c - b for c, b in zip(reversed(coords), begins)]
        order = range(len(shape) - 1, -1, -1) if column_major else range(len(shape))
        indices = torch.zeros_like(indices)
        for i in order:
            indices = indices * shape[i] + coords[i]
    n, c = indices.shape[:2]
    plane = math.prod(shape)
    base = torch.arange(n * c, device=indices.device).reshape(n, c, *([1] * len(shape))) * plane
    return indices + base


@register_op("MaxPool")
def bind_max_pool(node: Node, ctx: BindContext):
    """MaxPool: Y = window maxima; the optional second output Indices (int64, Y's shape) holds
    each maximum's flat index into X (storage_order 1: spatial dims column-major)."""
    window = PoolWindow.from_node(node)
    with_indices = len(node.outputs) > 1 and bool(node.outputs[1])
    column_major = bool(node.attributes.get("storage_order", 0))
    pool = _MAX_POOL[window.rank]
    ceil_mode = window.ceil_mode and window.auto_pad == "NOTSET"

    def max_pool(x):
        if window.rank == 2 and not with_indices and x.dim() == 4:
            # torch's channels-last 2-D max pool is vectorised over channels: 128x32x32 with a
            # 2x2 window took 0.11 ms with both layout changes, against 0.26 ms in NCHW. The
            # result keeps x's layout: channels-last after a conv (ResNet-50's stem pool feeds
            # two lowered 1x1 convs, which then read it as [N, H, W, C] rows without a copy)
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                return pooled(x)
            return pooled(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return pooled(x)

    def pooled(x):
        sizes = x.shape[2:]
        begins, ends, overhang = window.padding(sizes)
        padding = window.native_padding(begins, ends, True)
        if padding is not None:
            result = pool(x, window.kernel, window.strides, padding, window.dilations, ceil_mode, with_indices)
            padded_sizes = sizes
        else:
            ends = [e + o for e, o in zip(ends, overhang)]
            x = F.pad(x, torch_pad_list(begins, ends), value=float("-inf"))
            result = pool(x, window.kernel, window.strides, 0, window.dilations, False, with_indices)
            padded_sizes = x.shape[2:]
        if not with_indices:
            return result
        values, indices = result
        return values, _onnx_indices(indices, padded_sizes, begins if padding is None else [0] * window.rank, sizes, column_major)

    return _float_compute(max_pool)


@register_op("AveragePool")
def bind_average_pool(node: Node, ctx: BindContext):
    """AveragePool: Y = window means (count_include_pad: divide by the window's extent within
    the padded input, else by the number of input elements it covers)."""
    window = PoolWindow.from_node(node)
    include_pad = bool(node.attributes.get("count_include_pad", 0))
    pool = _AVG_POOL[window.rank]
    ceil_mode = window.ceil_mode and window.auto_pad == "NOTSET"
    dilation_ok = all(d == 1 for d in window.dilations)

    def average_pool(x):
        sizes = x.shape[2:]
        begins, ends, overhang = window.padding(sizes)
        padding = window.native_padding(begins, ends, dilation_ok)
        if padding is not None:
            return pool(x, window.kernel, window.strides, padding, ceil_mode, include_pad)
        full_ends = [e + o for e, o in zip(ends, overhang)]
        sums = sum_pool(F.pad(x, torch_pad_list(begins, full_ends)), window)
        ones = torch.ones((1, 1, *sizes), dtype=x.dtype, device=x.device)
        if include_pad:
            counted = F.pad(F.pad(ones, torch_pad_list(begins, ends), value=1.0), torch_pad_list([0] * window.rank, overhang))
        else:
            counted = F.pad(ones, torch_pad_list(begins, full_ends))
        return sums / sum_pool(counted, window)

    return _float_compute(average_pool)


@register_op("LpPool")
def bind_lp_pool(node: Node, ctx: BindContext):
    """LpPool: Y = (sum over the window of |x|^p) ^ (1/p), p default 2; pads count as zeros."""
    window = PoolWindow.from_node(node)
    p = float(node.attributes.get("p", 2))

    def lp_pool(x):
        begins, ends, overhang = window.padding(x.shape[2:])
        ends = [e + o for e, o in zip(ends, overhang)]
        powered = F.pad(torch.abs(x) ** p, torch_pad_list(begins, ends))
        return sum_pool(powered, window) ** (1.0 / p)

    return _float_compute(lp_pool)


def _spatial_dims(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, x.dim()))




@register_op("GlobalAveragePool")
def bind_global_average_pool(node: Node, ctx: BindContext):
    """x [N, C, *spatial] -> [N, C, 1, ...]. float32 sums accumulate in float64: torch's float32
    mean takes a different summation order per channel when x is channels-last (a lowered 1x1
    conv's output), so channels holding the same values could pool to results an ulp apart,
    which a following Softmax over large logits turns into different classes."""

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return torch.mean(x, _spatial_dims(x), keepdim=True, dtype=torch.float64).to(torch.float32)
        return torch.mean(x, _spatial_dims(x), keepdim=True)

    return run


register_op("GlobalMaxPool")(lambda node, ctx: lambda x: torch.amax(x, _spatial_dims(x), keepdim=True))


@register_op("GlobalLpPool", since_version=2)
def bind_global_lp_pool(node: Node, ctx: BindContext):
    p = float(node.attributes.get("p", 2))
    return lambda x: torch.linalg.vector_norm(x, p, _spatial_dims(x), keepdim=True)
