"""ONNX's quantization ops, in plain torch: QuantizeLinear, DequantizeLinear,
DynamicQuantizeLinear, MatMulInteger, QLinearMatMul (8-bit integer types).

They run the parts of a quantized model (onnxruntime's quantize_dynamic / quantize_static
output) that conversion does not turn into int8 linear layers; see
`sparse_rt.converters.quantized` for the rewrite of the linear layers themselves.
Rounding is half to even and results saturate, as the ONNX specification says.
"""

from __future__ import annotations

import torch

from sparse_rt.ops.registry import register_op

_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.uint16: (0, 65535), torch.int16: (-32768, 32767)}


def _along(param: torch.Tensor, x: torch.Tensor, axis: int, block_size: int = 0) -> torch.Tensor:
    """A per-tensor (1 element), per-axis (1-D) or blocked (x's rank, one entry per `block_size`
    elements along `axis`) parameter, shaped to broadcast against x."""
    if param.numel() == 1:
        return param.reshape(())
    axis = axis % x.dim()
    if block_size:
        return param.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])
    shape = [1] * x.dim()
    shape[axis] = param.numel()
    return param.reshape(shape)


def quantize_linear(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, axis: int = 1,
                    block_size: int = 0, output_dtype: torch.dtype | None = None) -> torch.Tensor:
    """saturate(round(x / scale) + zero_point) in zero_point's dtype (else output_dtype, else uint8)."""
    dtype = zero_point.dtype if zero_point is not None else (output_dtype or torch.uint8)
    if dtype not in _RANGES:
        raise ValueError(f"QuantizeLinear: expected a zero point of {sorted(map(str, _RANGES))}, got {dtype}")
    low, high = _RANGES[dtype]
    zp = 0.0 if zero_point is None else _along(zero_point.to(torch.float32), x, axis, block_size)
    scale = _along(scale.to(torch.float32), x, axis, block_size)
    q = torch.round(x.to(torch.float32) / scale) + zp
    return q.clamp(low, high).to(torch.int32 if dtype == torch.uint16 else dtype).to(dtype)


def dequantize_linear(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, axis: int = 1,
                      block_size: int = 0) -> torch.Tensor:
    """(x - zero_point) * scale in scale's floating dtype."""
    zp = 0 if zero_point is None else _along(zero_point.to(torch.int64), x, axis, block_size)
    result = (x.to(torch.int64) - zp).to(torch.float32) * _along(scale.to(torch.float32), x, axis, block_size)
    return result.to(scale.dtype) if scale.is_floating_point() else result


def dynamic_quantize_linear(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uint8 y, scale, zero point): the range of x extended to hold 0 maps onto 0..255."""
    x = x.to(torch.float32)
    low = torch.clamp(x.min(), max=0.0) if x.numel() else torch.zeros(())
    high = torch.clamp(x.max(), min=0.0) if x.numel() else torch.zeros(())
    scale = (high - low) / 255.0
    safe = torch.where(scale > 0, scale, torch.ones(()))
    zero_point = torch.round(-low / safe).clamp(0, 255)
    y = (torch.round(x / safe) + zero_point).clamp(0, 255).to(torch.uint8)
    return y, scale.to(torch.float32), zero_point.to(torch.uint8)


def matmul_integer(a: torch.Tensor, b: torch.Tensor, a_zero_point: torch.Tensor | None,
                   b_zero_point: torch.Tensor | None) -> torch.Tensor:
    """(a - a_zp) @ (b - b_zp) exactly, as int32 (a_zp per row of a or scalar, b_zp per column or scalar)."""
    a64, b64 = a.to(torch.int64), b.to(torch.int64)
    if a_zero_point is not None:
        a64 = a64 - _along(a_zero_point.to(torch.int64), a64, -2)
    if b_zero_point is not None:
        b64 = b64 - _along(b_zero_point.to(torch.int64), b64, -1)
    # int64 matmul is not implemented for every layout in torch: exact in float64 up to 2^53
    return torch.matmul(a64.to(torch.float64), b64.to(torch.float64)).to(torch.int32)


_OUTPUT_DTYPES = {2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16}  # TensorProto element types


@register_op("QuantizeLinear", since_version=10)
def _bind_quantize(node, ctx):
    axis, block_size = node.attributes.get("axis", 1), node.attributes.get("block_size", 0)
    output_dtype = _OUTPUT_DTYPES.get(node.attributes.get("output_dtype", 0))
    return lambda x, scale, zero_point=None: quantize_linear(x, scale, zero_point, axis, block_size, output_dtype)


@register_op("DequantizeLinear", since_version=10)
def _bind_dequantize(node, ctx):
    axis, block_size = node.attributes.get("axis", 1), node.attributes.get("block_size", 0)
    return lambda x, scale, zero_point=None: dequantize_linear(x, scale, zero_point, axis, block_size)


@register_op("DynamicQuantizeLinear", since_version=11)
def _bind_dynamic_quantize(node, ctx):
    return dynamic_quantize_linear


@register_op("MatMulInteger", since_version=10)
def _bind_matmul_integer(node, ctx):
    return lambda a, b, a_zero_point=None, b_zero_point=None: matmul_integer(a, b, a_zero_point, b_zero_point)


@register_op("QLinearMatMul", since_version=10)
def _bind_qlinear_matmul(node, ctx):
    def run(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
        a_float = dequantize_linear(a, a_scale, a_zero_point, -2)
        b_float = dequantize_linear(b, b_scale, b_zero_point, -1)
        return quantize_linear(torch.matmul(a_float, b_float), y_scale, y_zero_point, -1)

    return run
