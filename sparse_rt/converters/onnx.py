"""ONNX model -> IR: shape inference, checks, constant folding.

`import_onnx` accepts a path, bytes or ModelProto and returns a Graph in which
every node is supported by the op registry (all missing ops are reported at
once), constant subgraphs are folded into constants (Constant nodes, initializer
arithmetic such as weight_orig * weight_mask, Shape/Gather/Concat chains on
static dims), and unused nodes are gone. Lowering of linear layers is separate
(`sparse_rt.converters.lowering`).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import torch
from google.protobuf.message import EncodeError

from sparse_rt.ir.graph import SPARSE_DOMAIN, Graph, Node
from sparse_rt.ir.onnx_io import ModelFormatError, external_arrays, graph_from_proto, read_model_proto
from sparse_rt.ops.registry import BindContext, lookup, lookup_nodes

MIN_OPSET = 7
# ops whose result is not a function of their inputs: never folded
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
# folding a constant bigger than this (elements) is left to run time (e.g. huge Expand)
_MAX_FOLDED_ELEMENTS = 1 << 26


def import_onnx(model: str | os.PathLike | bytes | onnx.ModelProto) -> Graph:
    """Read, check, shape-infer and fold an ONNX model into a Graph. A file's external tensors
    are read after the checks, which see the graph only: models past protobuf's 2 GiB limit
    (torch.onnx.export writes their weights beside them) convert as any other."""
    proto = read_model_proto(model, external_data=False)
    _check(proto, model)
    proto = _infer_shapes(proto)
    graph = graph_from_proto(proto, external_arrays(proto, model))
    if graph.opset < MIN_OPSET:
        raise ModelFormatError(f"model opset {graph.opset} is too old: expected opset >= {MIN_OPSET}")
    lookup_nodes(graph.nodes, graph.opset)  # every missing op reported here, at conversion
    graph.toposort()
    graph.validate()
    fold_constants(graph)
    graph.prune_unused()
    return graph


def _check(proto: onnx.ModelProto, model: str | os.PathLike | bytes | onnx.ModelProto) -> None:
    """onnx's checker on the file (it finds the external data beside it), or on the proto."""
    if any(o.domain == SPARSE_DOMAIN for o in proto.opset_import):
        return  # the checker does not know our domain's schemas
    try:
        onnx.checker.check_model(str(model) if isinstance(model, (str, os.PathLike)) else proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFormatError(f"model is not valid ONNX: {first}") from None
    except EncodeError:
        raise ModelFormatError(
            "model: a ModelProto past protobuf's 2 GiB limit cannot be checked in memory: save it with its "
            "tensors as external data (onnx.save_model(model, path, save_as_external_data=True)) and pass the path"
        ) from None


def _infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:  # inference is an aid; models it cannot handle still run
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFormatError(f"ONNX shape inference failed: {first}") from None


def fold_constants(graph: Graph) -> None:
    """Evaluate every node whose inputs are all constant, and Shape of static shapes."""
    ctx = BindContext(device=torch.device("cpu"), opset=graph.opset, constants=graph.constants)
    kept: list[Node] = []
    for node in graph.nodes:
        folded = _fold_shape(graph, node) or _fold_node(graph, node, ctx)
        if folded is None:
            kept.append(node)
            continue
        for name, array in zip(node.outputs, folded):
            if name:
                graph.constants[name] = array
                graph.value_info.pop(name, None)
    graph.nodes = kept
    # a graph output that became constant still needs a producer at run time
    for value in graph.outputs:
        if value.name in graph.constants and not any(value.name in n.outputs for n in graph.nodes):
            source = graph.fresh_name(value.name + "_const")
            graph.constants[source] = graph.constants.pop(value.name)
            graph.nodes.append(Node("Identity", [source], [value.name], name=source + "_identity"))


def _fold_shape(graph: Graph, node: Node) -> list[np.ndarray] | None:
    if node.op_type != "Shape" or node.domain:
        return None
    value = graph.value(node.inputs[0])
    if value is None or value.shape is None:
        return None
    start = node.attributes.get("start", 0)
    end = node.attributes.get("end", None)
    dims = list(value.shape)[slice(start, end)]
    if not all(isinstance(d, int) for d in dims):
        return None
    return [np.array(dims, dtype=np.int64)]


def _fold_node(graph: Graph, node: Node, ctx: BindContext) -> list[np.ndarray] | None:
    if node.domain or node.op_type in _NONDETERMINISTIC:
        return None
    if not all((not name) or name in graph.constants for name in node.inputs):
        return None
    if node.op_type != "Constant" and not any(node.inputs):
        return None  # input-less ops other than Constant are left to run time
    spec = lookup(node.op_type, node.domain, graph.opset)
    args = [torch.from_numpy(np.array(graph.constants[n])) if n else None for n in node.inputs]
    try:
        with torch.inference_mode():
            result = spec.bind(node, ctx)(*args)
    except Exception as exc:
        raise ValueError(f"node {node.label()!r} ({node.op_type}): constant folding failed: {type(exc).__name__}: {exc}") from exc
    results = [result] if isinstance(result, torch.Tensor) else list(result)
    if any(r.numel() > _MAX_FOLDED_ELEMENTS for r in results):
        return None
    return [r.detach().cpu().numpy() for r in results]
