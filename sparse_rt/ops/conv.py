"""Convolutions: Conv and ConvTranspose over 1-3 spatial dims.

X: [N, C, *spatial], W: Conv [M, C/group, *kernel], ConvTranspose [C, M/group, *kernel],
optional B: [M]. pads are [begin_0, ..., begin_(k-1), end_0, ..., end_(k-1)];
auto_pad SAME_UPPER/SAME_LOWER put an odd padding at the end/begin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparse_rt.formats.dense import DenseFormat
from sparse_rt.ir.graph import Node
from sparse_rt.ir.tensors import tensor_view
from sparse_rt.kernels.cpu import dense, depthwise, winograd
from sparse_rt.kernels.cpu._launch import channels_last_operands
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.configs import DenseOptions, dense_configs, parse_options
from sparse_rt.ops.common import broadcast_shape, check_attribute, constant_input
from sparse_rt.ops.registry import BindContext, register_op

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def spatial_rank(weight: torch.Tensor, table: dict) -> int:
    rank = weight.dim() - 2
    if rank not in table:
        raise ValueError(f"expected 1 to 3 spatial dims, got weight shape {list(weight.shape)}")
    return rank


def same_pads(sizes, kernel, strides, dilations, upper: bool) -> tuple[list[int], list[int]]:
    """(begins, ends) giving output size ceil(size / stride) along each spatial dim."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins, ends


def split_pads(pads: list[int]) -> tuple[list[int], list[int]]:
    half = len(pads) // 2
    return list(pads[:half]), list(pads[half:])


def torch_pad_list(begins, ends) -> list[int]:
    """ONNX (begins, ends) over spatial dims -> F.pad's last-dim-first list."""
    result: list[int] = []
    for begin, end in zip(reversed(begins), reversed(ends)):
        result += [begin, end]
    return result


@register_op("Conv")
def bind_conv(node: Node, ctx: BindContext):
    """Conv: Y [N, M, *out] = cross-correlation of X with W (+ B), with group, strides,
    dilations, pads / auto_pad."""
    return bind_conv_activation(node, ctx, None)


def bind_conv_activation(node: Node, ctx: BindContext, activation: str | None):
    """Conv, plus a residual when called with a 4th input z (same shape as the output), then
    `activation` (None, "relu", or "clip" between the node's attributes clip_min and clip_max):
    activation(Conv(x, w, b) + z). In the convolution's epilogue for a 2-D conv with a constant
    weight (`ConstantWeightConv2d`), else after it."""
    if activation is not None and activation not in CONV_ACTIVATIONS:
        raise ValueError(f"conv activation: expected None or one of {list(CONV_ACTIVATIONS)}, got {activation!r}")
    attributes = node.attributes
    bounds = None
    if activation == "clip":
        bounds = (attributes.get("clip_min"), attributes.get("clip_max"))
        if not all(isinstance(bound, (int, float)) for bound in bounds) or bounds[0] > bounds[1]:
            raise ValueError(f"conv activation 'clip': expected float attributes clip_min <= clip_max, got {bounds}")
        bounds = (float(bounds[0]), float(bounds[1]))
    winograd_from, gemm_from = attributes.get("winograd_from"), attributes.get("gemm_from")
    for name, value in (("winograd_from", winograd_from), ("gemm_from", gemm_from)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"attribute {name!r}: expected a batch size (an int >= 1), got {value!r}")
    group = int(attributes.get("group", 1))
    auto_pad = check_attribute("auto_pad", attributes.get("auto_pad", "NOTSET"), AUTO_PADS)
    strides = attributes.get("strides")
    dilations = attributes.get("dilations")
    pads = attributes.get("pads")

    def geometry(x, w):
        rank = spatial_rank(w, _CONV)
        kernel = w.shape[2:]
        stride = list(strides) if strides else [1] * rank
        dilation = list(dilations) if dilations else [1] * rank
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begins, ends = same_pads(x.shape[2:], kernel, stride, dilation, auto_pad == "SAME_UPPER")
        elif auto_pad == "VALID" or not pads:
            begins, ends = [0] * rank, [0] * rank
        else:
            begins, ends = split_pads(pads)
        return rank, stride, dilation, begins, ends

    kernel_shape = attributes.get("kernel_shape")
    weight = constant_input(node, ctx, 1)
    if auto_pad == "NOTSET" and weight is not None and weight.ndim == 4 and (not kernel_shape or len(kernel_shape) == 2):
        begins, ends = split_pads(pads) if pads else ([0, 0], [0, 0])
        padding = [min(b, e) for b, e in zip(begins, ends)]  # the rest, on one side, by F.pad
        extra = torch_pad_list([b - p for b, p in zip(begins, padding)], [e - p for e, p in zip(ends, padding)])
        return ConstantWeightConv2d(tensor_view(weight).to(ctx.device), list(strides) if strides else 1, padding,
                                    list(dilations) if dilations else 1, group, activation, winograd_from,
                                    bounds, extra, gemm_from)

    if auto_pad == "NOTSET" and (not pads or split_pads(pads)[0] == split_pads(pads)[1]):
        padding = split_pads(pads)[0] if pads else 0
        stride = list(strides) if strides else 1
        dilation = list(dilations) if dilations else 1
        fixed = _CONV.get(len(kernel_shape)) if kernel_shape else None
        if fixed is not None:
            return _then(lambda x, w, b=None: fixed(x, w, b, stride, padding, dilation, group), activation, bounds)

        def conv_symmetric(x, w, b=None):
            return _CONV[spatial_rank(w, _CONV)](x, w, b, stride, padding, dilation, group)

        return _then(conv_symmetric, activation, bounds)

    def conv(x, w, b=None):
        rank, stride, dilation, begins, ends = geometry(x, w)
        if begins == ends:
            return _CONV[rank](x, w, b, stride, begins, dilation, group)
        x = F.pad(x, torch_pad_list(begins, ends))
        return _CONV[rank](x, w, b, stride, 0, dilation, group)

    return _then(conv, activation, bounds)


def _then(conv, activation: str | None, bounds: tuple[float, float] | None):
    """conv, plus the residual z when given, then `activation`, both in place on the fresh output."""

    def conv_then(x, w, b=None, z=None):
        y = conv(x, w, b)
        if z is not None:
            y = _add_residual(y, z)
        return _activate_(y, activation, bounds)

    return conv_then


def _activate_(y: torch.Tensor, activation: str | None, bounds: tuple[float, float] | None) -> torch.Tensor:
    """activation (None, "relu" or "clip" to `bounds`) applied to y in place."""
    if activation == "relu":
        return torch.relu_(y)
    if activation == "clip":
        return y.clamp_(*bounds)
    return y


def _add_residual(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """y + z, in place on y where z broadcasts to y's shape."""
    if broadcast_shape(y.shape, z.shape) == tuple(y.shape) and z.dtype == y.dtype:
        return y.add_(z)
    return y + z


CONV_ACTIVATIONS = ("relu", "clip")


class ConstantWeightConv2d:
    """x [N, C, H, W] -> activation(conv2d(x, weight) + b (+ z)) [N, M, H', W'] in
    channels-last memory, for a constant weight [M, C/group, kh, kw]; z, the residual,
    broadcasts to the output. padding: the pads on both sides; extra_pads (F.pad's order: left,
    right, top, bottom), what an uneven padding adds on one side, is padded onto x first
    (TensorFlow-style SAME, as MobileNet's stride-2 convs export: else the conv ran on NCHW
    through torch's conv2d, and the depthwise conv after the stem took 0.34 against 0.08 ms on
    its NCHW output).

    With oneDNN on the CPU the weight is reordered once, at the first call, into oneDNN's
    blocked format for that input shape (it serves other shapes too), x goes in as it comes
    (NCHW or channels-last) and the ReLU runs in the convolution's epilogue: ResNet-50's 3x3
    convs at 512 channels took 2.3 against 3.6 ms on one thread with torch's conv2d, which
    reorders the weight on every call, and its 7x7 stem on the NCHW image 3.1 ms, against 4.7
    ms on a channels-last copy (3 channels). Else torch's conv2d runs on channels-last x and
    weight. The channels-last output lets lowered 1x1 convs read [N, H, W, C] rows in place.
    A residual z of the output's shape is added in the same epilogue, before the activation
    (oneDNN's binary post-op): ResNet-50's 1x1 expansion conv and its Add at [8, 64, 56, 56]
    took 5.7 against 7.0 ms with torch's add-relu after the convolution, two threads.
    activation: None, "relu", or "clip" to `bounds` (min, max; ReLU6 as oneDNN's hardtanh
    post-op). winograd_from: a 3x3, stride-1, ungrouped float32 conv runs as
    Winograd F(4x4, 3x3) on the CPU (`sparse_rt.kernels.cpu.winograd`) at batches of at least
    this many images; gemm_from: a 1x1 one (stride 1, no padding) as the native dense GEMM over
    its channels-last rows (`sparse_rt.kernels.cpu.dense`), residual and activation in the GEMM's
    epilogue, which spends about 5 us a call where oneDNN spends 30 (both chosen by
    `sparse_rt.converters.conv_algorithms`). The GEMM packs the weight and the bias (a constant
    of the graph) at its first call. A 3x3 depthwise float32 conv runs on the CPU as
    `sparse_rt.kernels.cpu.depthwise`.
    """

    def __init__(self, weight: torch.Tensor, stride, padding, dilation, group: int, activation: str | None,
                 winograd_from: int | None = None, bounds: tuple[float, float] | None = None,
                 extra_pads: list[int] | None = None, gemm_from: int | None = None) -> None:
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.group, self.activation, self.bounds = group, activation, bounds
        self.extra_pads = list(extra_pads) if extra_pads and any(extra_pads) else None
        # oneDNN's post-op for the activation: (name, scalars)
        self.unary = {"relu": ("relu", []), "clip": ("hardtanh", list(bounds or ()))}.get(activation, ("none", []))
        self.weight = weight  # kept as given (a view of the graph's constant): oneDNN packs from it
        cpu_float32 = weight.device.type == "cpu" and weight.dtype == torch.float32
        self.prepack = cpu_float32 and torch.backends.mkldnn.is_available()
        self.packed: torch.Tensor | None = None
        self.channels_last: torch.Tensor | None = None if self.prepack else weight.contiguous(
            memory_format=torch.channels_last)
        self.depthwise = None
        if cpu_float32 and depthwise.supports(weight.shape, group) and native_available():
            left, right, top, bottom = self.extra_pads or (0, 0, 0, 0)
            pads = (self.padding[0] + top, self.padding[1] + left, self.padding[0] + bottom, self.padding[1] + right)
            self.depthwise = depthwise.DepthwiseConv2d(weight, self.stride, self.dilation, pads)
        # the GEMM's packed weight and bias are made at the first call that runs it
        self.gemm: dense.DensePacked | None = None
        self.gemm_bias: torch.Tensor | None = None
        self.gemm_from = gemm_from if (
            gemm_from is not None and cpu_float32 and tuple(weight.shape[2:]) == (1, 1) and self.stride == [1, 1]
            and self.padding == [0, 0] and self.extra_pads is None and group == 1 and native_available()) else None
        self.gemm_options = parse_options(DenseOptions, dense_configs(weight, weight.device)[0]) if self.gemm_from else None
        # Winograd's transformed weight (4x the weight) is made at the first call that runs it
        self.winograd: winograd.WinogradConv3x3 | None = None
        self.winograd_from = winograd_from if (
            winograd_from is not None and cpu_float32
            and winograd.supports(weight.shape, self.stride, self.dilation, group) and native_available()) else None

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
                 z: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"conv2d: expected x [N, C, H, W], got shape {list(x.shape)}")
        cpu_float32 = x.dtype == torch.float32 and x.device.type == "cpu"
        if self.depthwise is not None and cpu_float32:
            n, c, h, w_in = x.shape
            if z is None or _in_epilogue(z, (n, c, *self.depthwise.output_size(h, w_in))):
                return self.depthwise(x, b, z, self.activation, self.bounds)
            return _activate_(_add_residual(self.depthwise(x, b), z), self.activation, self.bounds)
        if self.gemm_from is not None and x.shape[0] >= self.gemm_from and cpu_float32:
            return self._gemm(x, b, z)
        if self.extra_pads is not None:
            x = F.pad(x, self.extra_pads)
        if self.winograd_from is not None and x.shape[0] >= self.winograd_from and cpu_float32:
            if self.winograd is None:
                top, left = self.padding
                self.winograd = winograd.WinogradConv3x3(self.weight, (top, left, top, left))
            relu = self.activation == "relu"
            if z is None or _in_epilogue(z, self.output_shape(x)):
                return _activate_(self.winograd(x, b, z, relu), None if relu else self.activation, self.bounds)
            y = _add_residual(self.winograd(x, b), z)
            return _activate_(y, self.activation, self.bounds)
        if self.prepack and cpu_float32:
            if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
                x = x.contiguous(memory_format=torch.channels_last)
            if self.packed is None:
                self.packed = torch.ops.mkldnn._reorder_convolution_weight(
                    self.weight.contiguous(), self.padding, self.stride, self.dilation, self.group, list(x.shape))
            unary, scalars = self.unary
            if z is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, self.packed, b, self.padding, self.stride, self.dilation, self.group, unary, scalars, None)
            if _in_epilogue(z, self.output_shape(x)):
                # oneDNN's binary fusion takes ReLU after the add but not hardtanh
                fused = unary if unary == "relu" else None
                y = torch.ops.mkldnn._convolution_pointwise.binary(
                    x, z, self.packed, b, self.padding, self.stride, self.dilation, self.group,
                    "add", None, fused, scalars if fused else [], None)
                return y if fused or self.activation is None else _activate_(y, self.activation, self.bounds)
            y = torch.ops.mkldnn._convolution_pointwise(
                x, self.packed, b, self.padding, self.stride, self.dilation, self.group, "none", [], None)
        else:
            x = x.contiguous(memory_format=torch.channels_last)
            if self.channels_last is None:  # torch's conv2d on an input oneDNN does not take
                self.channels_last = self.weight.contiguous(memory_format=torch.channels_last)
            y = F.conv2d(x, self.channels_last, b, self.stride, self.padding, self.dilation, self.group)
        if z is not None:
            y = _add_residual(y, z)
        return _activate_(y, self.activation, self.bounds)

    def _gemm(self, x: torch.Tensor, b: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
        """The 1x1 conv as y [N*H*W, K] = activation(x rows [N*H*W, C] @ W.T + b (+ z rows)),
        channels-last in and out; a residual that only broadcasts is added after."""
        n, c, h, w_in = x.shape
        k = self.weight.shape[0]
        if self.gemm is None or self.gemm_bias is not b:
            self.gemm = dense.pack_dense(DenseFormat.from_dense(self.weight.reshape(k, c)), b)
            self.gemm_bias = b
        in_kernel = z is None or _in_epilogue(z, (n, k, h, w_in))
        rows, _, residual = channels_last_operands(x, c, None, z if in_kernel else None, "1x1 conv")
        y = dense.dense_linear(rows.view(-1, c), self.gemm, self.gemm_options,
                               self.activation if in_kernel else None,
                               None if residual is None else residual.view(-1, k), self.bounds)
        y = y.view(n, h, w_in, k).permute(0, 3, 1, 2)
        return y if in_kernel else _activate_(_add_residual(y, z), self.activation, self.bounds)

    def output_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """(N, M, H', W') for x [N, C, H, W] (already carrying extra_pads)."""
        sizes = [(size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
                 for size, pad, dilation, kernel, stride in zip(x.shape[2:], self.padding, self.dilation,
                                                                self.weight.shape[2:], self.stride)]
        return (x.shape[0], self.weight.shape[0], *sizes)


def _in_epilogue(z: torch.Tensor, shape: tuple[int, ...]) -> bool:
    """Whether a CPU kernel adds the residual z in its epilogue: float32 on the cpu, of the
    output's shape (else it is added after, broadcasting)."""
    return z.dtype == torch.float32 and z.device.type == "cpu" and tuple(z.shape) == tuple(shape)


def _pair(value) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * 2


@register_op("ConvTranspose")
def bind_conv_transpose(node: Node, ctx: BindContext):
    """ConvTranspose: Y [N, M, *out], out = stride * (in - 1) + output_padding
    + (kernel - 1) * dilation + 1 - pad_begin - pad_end; output_shape (when given) fixes
    `out` and the pads are derived from it (SAME_UPPER: the odd pad at the end)."""
    attributes = node.attributes
    group = int(attributes.get("group", 1))
    auto_pad = check_attribute("auto_pad", attributes.get("auto_pad", "NOTSET"), AUTO_PADS)
    strides = attributes.get("strides")
    dilations = attributes.get("dilations")
    pads = attributes.get("pads")
    output_padding = attributes.get("output_padding")
    output_shape = attributes.get("output_shape")

    def conv_transpose(x, w, b=None):
        rank = spatial_rank(w, _CONV_TRANSPOSE)
        kernel = w.shape[2:]
        sizes = x.shape[2:]
        stride = list(strides) if strides else [1] * rank
        dilation = list(dilations) if dilations else [1] * rank
        extra = list(output_padding) if output_padding else [0] * rank
        full = [s * (n - 1) + (k - 1) * d + 1 for n, k, s, d in zip(sizes, kernel, stride, dilation)]
        target = None
        if output_shape:
            target = list(output_shape)[-rank:]
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = [n * s for n, s in zip(sizes, stride)]
        if target is not None:
            begins, ends = [], []
            for length, pad_extra, out in zip(full, extra, target):
                total = length + pad_extra - out
                begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
                begins.append(begin)
                ends.append(total - begin)
        elif auto_pad == "VALID" or not pads:
            begins, ends = [0] * rank, [0] * rank
        else:
            begins, ends = split_pads(pads)
        fn = _CONV_TRANSPOSE[rank]
        if begins == ends and min(begins) >= 0 and all(e < max(s, d) for e, s, d in zip(extra, stride, dilation)):
            return fn(x, w, b, stride, begins, extra, group, dilation)
        y = fn(x, w, None, stride, 0, 0, group, dilation)
        y = F.pad(y, torch_pad_list([-p for p in begins], [e - p for e, p in zip(extra, ends)]))
        if b is not None:
            y = y + b.reshape(-1, *([1] * rank))
        return y

    return conv_transpose

