"""sparse_rt: a sparse inference runtime for pruned and structured models.

    graph = sparse_rt.convert("model.onnx", batch_sizes=(1, 8))
    sparse_rt.save(graph, "model.sparse.onnx")
    session = sparse_rt.InferenceSession("model.sparse.onnx")
    outputs = session.run(None, {"input": x})

    sparse_rt.sparsify(module)   # or stay in PyTorch: nn.Linear -> sparse kernels, in place
"""

from sparse_rt.api import convert, load, save
from sparse_rt.ir.graph import Graph, Node, Value
from sparse_rt.ops.registry import register_op
from sparse_rt.runtime.session import InferenceSession
from sparse_rt.sparsify import SparsifyConfig, sparsify

__all__ = ["convert", "load", "save", "InferenceSession", "Graph", "Node", "Value", "register_op",
           "sparsify", "SparsifyConfig"]
__version__ = "0.1.0"
