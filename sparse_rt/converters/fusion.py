"""Graph fusions applied at conversion: op chains exporters emit, replaced by one op.

  Erf GELU  x * 0.5 * (1 + erf(x / sqrt 2))  (Div or Mul, Erf, Add, Mul, Mul) -> ai.sparse_rt::Gelu

A chain is fused only when its intermediate values have no other consumer and
are not graph outputs, and its constants have the expected values.
"""

from __future__ import annotations

import math

from sparse_rt.ir.graph import SPARSE_DOMAIN, Graph, Node


def fuse_graph(graph: Graph) -> int:
    """Apply every fusion; returns the number of chains replaced."""
    return fuse_erf_gelu(graph)


def _scalar(graph: Graph, name: str) -> float | None:
    array = graph.constants.get(name)
    if array is None or array.size != 1 or array.dtype.kind != "f":
        return None
    return float(array.reshape(()))


def _other(node: Node, name: str) -> str | None:
    """The other input of a binary node, given one of them."""
    if len(node.inputs) != 2 or name not in node.inputs:
        return None
    return node.inputs[1] if node.inputs[0] == name else node.inputs[0]


def fuse_erf_gelu(graph: Graph) -> int:
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    producers = graph.producers()

    def only_user(value: str, op_type: str) -> Node | None:
        users = consumers.get(value, [])
        if value in outputs or len(users) != 1 or users[0].op_type != op_type or users[0].domain:
            return None
        return users[0]

    removed: set[int] = set()
    replacement: dict[int, Node] = {}
    for erf in graph.nodes:
        if erf.op_type != "Erf" or erf.domain:
            continue
        scale = producers.get(erf.inputs[0])
        if scale is None or scale.domain or scale.op_type not in ("Div", "Mul") or erf.inputs[0] in outputs:
            continue
        if len(consumers.get(erf.inputs[0], [])) != 1:
            continue
        x = scale.inputs[0]
        factor = _scalar(graph, scale.inputs[1])
        expected = math.sqrt(2.0) if scale.op_type == "Div" else 1.0 / math.sqrt(2.0)
        if factor is None or not math.isclose(factor, expected, rel_tol=1e-4):
            continue
        add = only_user(erf.outputs[0], "Add")
        if add is None or not _isclose(_scalar(graph, _other(add, erf.outputs[0]) or ""), 1.0):
            continue
        # (x * (1 + erf)) * 0.5,  (x * 0.5) * (1 + erf)  or  x * (0.5 * (1 + erf))
        mul = only_user(add.outputs[0], "Mul")
        if mul is None:
            continue
        partner = _other(mul, add.outputs[0])
        chain: list[Node]
        if _isclose(_scalar(graph, partner or ""), 0.5):
            outer = only_user(mul.outputs[0], "Mul")
            if outer is None or _other(outer, mul.outputs[0]) != x:
                continue
            chain, last = [scale, erf, add, mul, outer], outer
        elif partner == x:
            half = only_user(mul.outputs[0], "Mul")
            if half is None or not _isclose(_scalar(graph, _other(half, mul.outputs[0]) or ""), 0.5):
                continue
            chain, last = [scale, erf, add, mul, half], half
        else:
            halving = producers.get(partner or "")
            if (halving is None or halving.op_type != "Mul" or halving.domain or x not in halving.inputs
                    or not _isclose(_scalar(graph, _other(halving, x) or ""), 0.5)
                    or len(consumers.get(partner, [])) != 1 or partner in outputs):
                continue
            chain, last = [scale, erf, add, halving, mul], mul
        if any(id(n) in removed for n in chain):
            continue
        removed.update(id(n) for n in chain)
        replacement[id(last)] = Node("Gelu", [x], [last.outputs[0]], {"approximate": "none"},
                                     graph.fresh_name(f"{erf.label()}_gelu"), SPARSE_DOMAIN)
    graph.nodes = [replacement.get(id(n), n) for n in graph.nodes if id(n) not in removed or id(n) in replacement]
    graph.prune_unused()
    graph.validate()
    return len(replacement)


def _isclose(value: float | None, target: float) -> bool:
    return value is not None and math.isclose(value, target, rel_tol=1e-6)
