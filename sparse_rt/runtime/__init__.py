"""Execution of graphs: InferenceSession and the ONNX backend adapter."""

from sparse_rt.ops.registry import UnsupportedOpError
from sparse_rt.runtime.session import InferenceSession, NodeArg

__all__ = ["InferenceSession", "NodeArg", "UnsupportedOpError"]
