"""Quantized ONNX models back to float linear layers, which conversion then re-quantizes.

onnxruntime's quantizers write a linear layer three ways; each becomes a MatMul with a
constant float weight (the dequantized int8 weight), which lowering turns into a
SparseLinear and the scheduler into an int8 format (per-channel symmetric, re-quantized
from that weight) where the error tolerance allows:

  quantize_dynamic:  DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q, x_zp, W_zp) -> Cast
                     -> Mul(., Mul(x_scale, W_scale))           => MatMul(x, (W_q - W_zp) * W_scale)
  QDQ (static):      QuantizeLinear -> DequantizeLinear on x, DequantizeLinear on the weight
                     (folded to a float constant at import) -> MatMul / Gemm
                                                                => MatMul(Clip(x), W): the activation's
                     quantize-dequantize pair becomes a Clip to its range (quantize_static folds a
                     ReLU into a zero point of 0), its rounding is left to the int8 kernels,
                     which quantize per token
  QOperator static:  QLinearMatMul(a_q, ..., W_q const, ...)   => DequantizeLinear -> MatMul(W)
                                                                  -> QuantizeLinear
Whatever else is quantized runs as the ONNX ops of `sparse_rt.ops.quantize_ops`.
"""

from __future__ import annotations

import numpy as np

from sparse_rt.ir.graph import Graph, Node

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul"}
_LINEAR = ("MatMul", "Gemm")


def is_quantized(graph: Graph) -> bool:
    """Whether the graph holds any of ONNX's quantization ops."""
    return any(not node.domain and node.op_type in QUANTIZED_OPS for node in graph.nodes)


def dequantize_linear_layers(graph: Graph) -> int:
    """Rewrite the quantized linear layers of `graph` (after constant folding) as float MatMuls;
    returns how many were rewritten."""
    rewritten = _matmul_integer(graph) + _qdq_activations(graph) + _qlinear_matmul(graph)
    if rewritten:
        graph.prune_unused()
        graph.toposort()
        graph.validate()
    return rewritten


def _producers(graph: Graph) -> dict[str, Node]:
    return {out: node for node in graph.nodes for out in node.outputs if out}


def _dequantized(graph: Graph, q: str, scale: str, zero_point: str | None, axis: int) -> np.ndarray | None:
    """(q - zero_point) * scale for constant operands, float32 [K, N] (scale per column or scalar)."""
    names = [q, scale] + ([zero_point] if zero_point else [])
    if not all(n in graph.constants for n in names):
        return None
    values = graph.constants[q].astype(np.float32)
    if values.ndim != 2:
        return None
    zp = graph.constants[zero_point].astype(np.float32) if zero_point else np.float32(0)
    s = graph.constants[scale].astype(np.float32)
    if s.size > 1:
        shape = [1, 1]
        shape[axis] = s.size
        s, zp = s.reshape(shape), (zp.reshape(shape) if np.size(zp) > 1 else zp)
    return np.ascontiguousarray((values - zp) * s, dtype=np.float32)


def _matmul_integer(graph: Graph) -> int:
    producers, consumers = _producers(graph), graph.consumers()
    replaced: dict[int, Node] = {}
    dropped: set[int] = set()
    for node in graph.nodes:
        if node.op_type != "MatMulInteger" or node.domain:
            continue
        quantize = producers.get(node.inputs[0])
        users = consumers.get(node.outputs[0], [])
        if quantize is None or quantize.op_type != "DynamicQuantizeLinear" or len(users) != 1 or users[0].op_type != "Cast":
            continue
        cast = users[0]
        muls = consumers.get(cast.outputs[0], [])
        if len(muls) != 1 or muls[0].op_type != "Mul":
            continue
        mul = muls[0]
        other = producers.get(mul.inputs[1] if mul.inputs[0] == cast.outputs[0] else mul.inputs[0])
        if other is None or other.op_type != "Mul" or quantize.outputs[1] not in other.inputs:
            continue
        w_scale = other.inputs[1] if other.inputs[0] == quantize.outputs[1] else other.inputs[0]
        b_zero = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
        weight = _dequantized(graph, node.inputs[1], w_scale, b_zero, axis=1)
        if weight is None:
            continue
        name = graph.fresh_name(f"{node.inputs[1]}_dequantized")
        graph.constants[name] = weight
        replaced[id(node)] = Node("MatMul", [quantize.inputs[0], name], [mul.outputs[0]], name=node.name or name)
        dropped.update((id(cast), id(mul)))
    graph.nodes = [replaced.get(id(n), n) for n in graph.nodes if id(n) not in dropped]
    return len(replaced)


def _qdq_activations(graph: Graph) -> int:
    """x -> QuantizeLinear -> DequantizeLinear -> MatMul/Gemm with a constant float weight: the
    linear layer reads Clip(x, range of the quantized type) instead (one Clip per x)."""
    producers = _producers(graph)
    clips: dict[str, str] = {}
    added: dict[int, Node] = {}  # id(QuantizeLinear) -> its Clip, placed right after it
    count = 0
    for node in graph.nodes:
        if node.op_type not in _LINEAR or node.domain or len(node.inputs) < 2:
            continue
        weight = graph.constants.get(node.inputs[1])
        dequantize = producers.get(node.inputs[0])
        if weight is None or weight.dtype != np.float32 or dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        quantize = producers.get(dequantize.inputs[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or not _constant_params(graph, quantize):
            continue
        if dequantize.outputs[0] not in clips:
            clips[dequantize.outputs[0]] = _clip(graph, quantize, added)
        node.inputs[0] = clips[dequantize.outputs[0]]
        count += 1
    graph.nodes = [m for n in graph.nodes for m in ([n, added[id(n)]] if id(n) in added else [n])]
    return count


def _constant_params(graph: Graph, quantize: Node) -> bool:
    scale, zero = quantize.inputs[1], (quantize.inputs[2] if len(quantize.inputs) > 2 else "")
    return scale in graph.constants and graph.constants[scale].size == 1 and (
        not zero or (zero in graph.constants and graph.constants[zero].size == 1))


def _clip(graph: Graph, quantize: Node, added: dict[int, Node]) -> str:
    """A Clip of QuantizeLinear's input to the float range its quantized type represents."""
    scale = float(graph.constants[quantize.inputs[1]].reshape(()))
    zero_name = quantize.inputs[2] if len(quantize.inputs) > 2 else ""
    zero = graph.constants[zero_name] if zero_name else np.zeros((), np.uint8)
    info = np.iinfo(zero.dtype)
    low, high = (info.min - float(zero.reshape(()))) * scale, (info.max - float(zero.reshape(()))) * scale
    base = quantize.name or quantize.outputs[0]
    names = [graph.fresh_name(f"{base}.clip_{s}") for s in ("min", "max", "out")]
    graph.constants[names[0]] = np.array(low, np.float32)
    graph.constants[names[1]] = np.array(high, np.float32)
    added[id(quantize)] = Node("Clip", [quantize.inputs[0], names[0], names[1]], [names[2]], name=f"{base}.clip")
    return names[2]


def _qlinear_matmul(graph: Graph) -> int:
    nodes: list[Node] = []
    count = 0
    for node in graph.nodes:
        if node.op_type != "QLinearMatMul" or node.domain:
            nodes.append(node)
            continue
        a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero = node.inputs
        weight = _dequantized(graph, b, b_scale, b_zero or None, axis=1)
        if weight is None:
            nodes.append(node)
            continue
        base = node.outputs[0]  # unique: names made from it are too
        w, x, y = (graph.fresh_name(f"{base}.{s}") for s in ("weight", "x", "y"))
        graph.constants[w] = weight
        nodes += [Node("DequantizeLinear", [a, a_scale, a_zero], [x], name=f"{base}.dequantize"),
                  Node("MatMul", [x, w], [y], name=node.name or f"{base}.matmul"),
                  Node("QuantizeLinear", [y, y_scale, y_zero], list(node.outputs), name=f"{base}.quantize")]
        count += 1
    graph.nodes = nodes
    return count
