"""Execution of graphs: InferenceSession and the ONNX backend adapter."""

from sparse_rt.runtime.session import InferenceSession, NodeArg, UnsupportedOpError

__all__ = ["InferenceSession", "NodeArg", "UnsupportedOpError"]
