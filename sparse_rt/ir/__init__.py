"""The IR: Graph, Node, Value, and their ONNX form on disk."""

from sparse_rt.ir.graph import SPARSE_DOMAIN, Graph, Node, Value
from sparse_rt.ir.onnx_io import ModelFormatError, graph_from_proto, graph_to_proto, load, save

__all__ = ["SPARSE_DOMAIN", "Graph", "Node", "Value", "ModelFormatError", "graph_from_proto", "graph_to_proto", "load", "save"]
