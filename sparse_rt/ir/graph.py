"""The intermediate representation: a graph of ONNX-style nodes over named values.

A `Graph` has typed inputs and outputs (shapes may hold symbolic dims such as
"batch"), constant tensors (numpy arrays) and nodes in topological order. A node
is an ONNX op: op_type, domain, input and output value names, attributes. The
empty string as an input name means an omitted optional input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

Dim = int | str | None
"""A dimension: a static size, a symbolic name such as "batch", or unknown (None)."""

SPARSE_DOMAIN = "ai.sparse_rt"


@dataclass
class Value:
    """A typed value: dtype is a numpy dtype name ("float32"), shape may be None (unknown rank)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None = None

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.dtype} [?]"
        return f"{self.dtype} [{', '.join('?' if d is None else str(d) for d in self.shape)}]"


@dataclass
class Node:
    """One op application. Attributes are python values (int, float, str, list, ndarray)."""

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""

    def label(self) -> str:
        """How errors refer to the node: its name, else its first output."""
        return self.name or (self.outputs[0] if self.outputs else self.op_type)


@dataclass
class Graph:
    """A whole model. `opset` is the version of the default ONNX domain."""

    inputs: list[Value]
    outputs: list[Value]
    nodes: list[Node]
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    value_info: dict[str, Value] = field(default_factory=dict)
    opset: int = 17
    name: str = "sparse_rt_graph"

    def producers(self) -> dict[str, Node]:
        """Map value name -> the node that produces it."""
        return {out: node for node in self.nodes for out in node.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        """Map value name -> nodes reading it, in graph order."""
        users: dict[str, list[Node]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    def validate(self) -> None:
        """Check that every value is defined once and every input is defined before use.

        Raises ValueError naming the offending value and node. Nodes must already be
        in topological order (see `toposort`).
        """
        defined: set[str] = set()
        for value in self.inputs:
            _define(defined, value.name, "graph input")
        for name in self.constants:
            _define(defined, name, "constant")
        for node in self.nodes:
            for name in node.inputs:
                if name and name not in defined:
                    raise ValueError(
                        f"node {node.label()!r} ({node.op_type}): input {name!r} is not defined "
                        "by a graph input, a constant or an earlier node"
                    )
            for name in node.outputs:
                if name:
                    _define(defined, name, f"output of node {node.label()!r} ({node.op_type})")
        for value in self.outputs:
            if value.name not in defined:
                raise ValueError(f"graph output {value.name!r} is not produced by any node")

    def toposort(self) -> None:
        """Reorder nodes topologically (stable); raises ValueError on a cycle."""
        available = {v.name for v in self.inputs} | set(self.constants) | {""}
        remaining = list(self.nodes)
        ordered: list[Node] = []
        while remaining:
            ready = [n for n in remaining if all(i in available for i in n.inputs)]
            if not ready:
                stuck = ", ".join(repr(n.label()) for n in remaining[:5])
                missing = sorted({i for n in remaining for i in n.inputs if i not in available})
                raise ValueError(
                    f"graph has a cycle or undefined inputs: nodes {stuck} wait on {missing[:5]}"
                )
            ready_ids = {id(n) for n in ready}
            ordered.extend(ready)
            remaining = [n for n in remaining if id(n) not in ready_ids]
            for node in ready:
                available.update(node.outputs)
        self.nodes = ordered

    def prune_unused(self) -> None:
        """Drop nodes and constants that no graph output depends on."""
        needed = {v.name for v in self.outputs}
        kept: list[Node] = []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.outputs):
                kept.append(node)
                needed.update(i for i in node.inputs if i)
        self.nodes = kept[::-1]
        self.constants = {k: v for k, v in self.constants.items() if k in needed}
        self.value_info = {k: v for k, v in self.value_info.items() if k in needed}

    def value(self, name: str) -> Value | None:
        """The declared type of a value, if known."""
        for v in self.inputs:
            if v.name == name:
                return v
        for v in self.outputs:
            if v.name == name:
                return v
        if name in self.constants:
            array = self.constants[name]
            return Value(name, array.dtype.name, tuple(array.shape))
        return self.value_info.get(name)

    def op_types(self) -> list[tuple[str, str]]:
        """Distinct (domain, op_type) pairs in graph order."""
        seen: dict[tuple[str, str], None] = {}
        for node in self.nodes:
            seen[(node.domain, node.op_type)] = None
        return list(seen)

    def fresh_name(self, base: str, taken: Iterable[str] = ()) -> str:
        """A value name not used anywhere in the graph (nor in `taken`)."""
        used = set(taken) | set(self.constants) | {v.name for v in self.inputs}
        used |= {o for n in self.nodes for o in n.outputs} | {n.name for n in self.nodes}
        name, k = base, 0
        while name in used:
            k += 1
            name = f"{base}_{k}"
        return name


def _define(defined: set[str], name: str, what: str) -> None:
    if name in defined:
        raise ValueError(f"value {name!r} is defined more than once (again as {what})")
    defined.add(name)
