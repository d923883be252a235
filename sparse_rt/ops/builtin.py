"""Registers the standard ONNX ops: importing each op module runs its @register_op decorators."""

from sparse_rt.ops import (  # noqa: F401
    activation,
    conv,
    elementwise,
    indexing,
    logic,
    math_ops,
    misc,
    normalization,
    pad,
    pool,
    quantize_ops,
    reduce,
    resize,
    shape_ops,
)
