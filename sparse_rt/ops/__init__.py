"""Implementations of ONNX ops (and SparseLinear), bound to nodes once per session."""

from sparse_rt.ops.registry import BindContext, register_op, supported_ops

__all__ = ["BindContext", "register_op", "supported_ops"]
