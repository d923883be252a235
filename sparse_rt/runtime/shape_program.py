"""Shape nodes run as plain Python in a run whose input shapes the session has not seen.

A session keeps the values computed from shapes alone (`runtime.shapes`) per input-shape
signature. A decoder's signature changes every step (the past grows by one), so every
step computes them again: in a Llama export about 600 nodes, ~4 us each as torch ops.
Here each run of consecutive shape nodes is one `ShapeSegment` computing on the
canonical forms of `runtime.shape_forms` (ints and tuples of ints, numpy otherwise), a
few tenths of a microsecond a node; a shape value that a data node reads becomes a
tensor once, and is the same tensor as last time when its value has not changed.

A node whose form meets a case it does not mirror runs its torch op on tensors made
from its inputs instead, its result taken back in canonical form: the same values
always, and the torch op's error where it has one.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Sequence

import numpy as np
import torch

from sparse_rt.ir.graph import Graph
from sparse_rt.ops.registry import OpCallable
from sparse_rt.runtime.shape_forms import FORMS, NoForm, as_array, canonical

# Tensors of shape values that the segments of a plan keep for reuse (all dropped when full).
TENSOR_CACHE_ENTRIES = 1024


def form_name(name: str) -> tuple[str, str]:
    """The key of a shape value's canonical form among a run's values (a tuple, so that no
    value name is the same)."""
    return (name, "form")


def to_tensor(value: Any, device: torch.device) -> torch.Tensor:
    """A canonical value as a tensor of its own on `device`; a tensor passes as it is."""
    if isinstance(value, torch.Tensor):
        return value
    array = np.array(value) if isinstance(value, np.ndarray) else as_array(value)  # a new array either way
    return torch.from_numpy(array).to(device)


class ShapeSegment:
    """Shape nodes as one callable: `segment(*values of inputs)` -> values of outputs.

    inputs: the data tensors its Shape and Size nodes read and the forms (`form_name`) of
    shape values of earlier segments. outputs: the forms later segments read, then as
    tensors (under their own names) the shape values that data nodes read.

    A node none of whose arguments changed value since the last call (for a tensor: its
    shape) gives its last value again: in a decoder's step only what depends on the past
    length is computed. Calls on several threads at once are safe (each keeps its own
    slots; the last call's are replaced whole)."""

    def __init__(self, program: list[tuple], template: list, inputs: Sequence, form_outputs: Sequence[int],
                 tensor_outputs: Sequence[int], outputs: Sequence, label: str, device: torch.device,
                 tensors: dict[tuple, torch.Tensor]):
        # program: (form function, argument slots, output slot, torch op, node label) per node;
        # template: the slots, inputs first, constants filled in; tensors: {(type, value): tensor}
        # shared by the segments of a plan
        self._arity = len(inputs)
        # per node: its function, argument getter, whether it takes one argument, output slot and
        # the bits of its argument slots (bit k: slot k)
        self._steps = [(fn, itemgetter(*args), len(args) == 1, out, sum({1 << slot for slot in args}))
                       for fn, args, out, _, _ in program]
        self._torch_ops = {out: (args, op, label) for _, args, out, op, label in program}
        self._template = template
        self._shaped = tuple(isinstance(name, str) for name in inputs)  # a tensor's shape is its key
        self._bits = [1 << k for k in range(self._arity)]
        self._no_inputs = [None] * self._arity
        self._form_outputs = tuple(form_outputs)
        self._tensor_outputs = tuple(tensor_outputs)
        self._last_call: tuple[list, list, list] | None = None  # (input keys, slots, outputs) of the last call
        self._tensors = tensors
        self._device = device
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.label = label

    def __call__(self, *inputs: Any) -> list:
        keys = [x.shape if shaped else x for x, shaped in zip(inputs, self._shaped)]
        last = self._last_call
        changed, previous = -1, None  # the slots whose value changed; all of them
        if last is not None:
            old_keys, previous, old_outputs = last
            changed = 0
            for bit, key, old in zip(self._bits, keys, old_keys):
                if not _same(key, old):
                    changed |= bit
            if not changed:
                return old_outputs
        env = self._template.copy()
        env[:self._arity] = inputs
        for fn, get, single, out, bits in self._steps:
            if not bits & changed:
                env[out] = previous[out]
                continue
            try:
                value = fn(get(env)) if single else fn(*get(env))
            except Exception:  # a case the form does not mirror: the torch op decides
                value = self._run_torch(out, env)
            env[out] = value
            if previous is not None and not _same(value, previous[out]):
                changed |= 1 << out
        outputs = [env[i] for i in self._form_outputs]
        for slot in self._tensor_outputs:
            outputs.append(self._tensor(env[slot]))
        env[:self._arity] = self._no_inputs  # the slots kept hold no tensor of this run
        self._last_call = (keys, env, outputs)
        return outputs

    def _run_torch(self, out: int, env: list) -> Any:
        """The node writing slot `out` computed by its torch op, in canonical form."""
        args, op, label = self._torch_ops[out]
        tensors = [None if env[i] is None else to_tensor(env[i], self._device) for i in args]
        try:
            return canonical(op(*tensors).cpu().numpy())
        except Exception as exc:
            raise RuntimeError(f"node {label} failed: {type(exc).__name__}: {exc}") from exc

    def _tensor(self, value: Any) -> torch.Tensor:
        """A value as a tensor: the one made before for the same int or tuple value (by any
        segment of the plan; the tensors are never written)."""
        if type(value) is np.ndarray:
            return to_tensor(value, self._device)
        key = (type(value), value)  # True and 1 are different values
        tensor = self._tensors.get(key)
        if tensor is None:
            if len(self._tensors) >= TENSOR_CACHE_ENTRIES:
                self._tensors.clear()
            tensor = self._tensors[key] = to_tensor(value, self._device)
        return tensor


def _same(a: Any, b: Any) -> bool:
    """Whether two canonical values (or shapes) are the same value; numpy arrays only if the same object."""
    return a is b or (type(a) is type(b) and type(a) is not np.ndarray and a == b)


def plan_shape_segments(graph: Graph, names: set[str], ops: Sequence[OpCallable],
                        device: torch.device) -> list[int | ShapeSegment] | None:
    """The indices of the graph's data nodes, in order, and ShapeSegments computing the shape
    values `names` before the first data node reading each; None when a node computing
    them has no form in `runtime.shape_forms`. ops: the nodes' bound torch ops."""
    forms = []
    for node in graph.nodes:
        if not any(out in names for out in node.outputs):
            forms.append(None)
            continue
        build = FORMS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if build is None or len(node.outputs) != 1:
            return None
        try:
            forms.append(build(node, graph.opset))
        except NoForm:
            return None
    # a shape node waits until a data node reads a value of the waiting ones: then they all run
    # as one segment (fewer, longer segments; the data tensors that Shape nodes read live until then)
    runs: list[int | list[int]] = []
    waiting: list[int] = []
    waiting_outputs: set[str] = set()
    for index, form in enumerate(forms):
        node = graph.nodes[index]
        if form is not None:
            waiting.append(index)
            waiting_outputs.add(node.outputs[0])
            continue
        if waiting_outputs.intersection(node.inputs):
            runs.append(waiting)
            waiting, waiting_outputs = [], set()
        runs.append(index)
    if waiting:
        runs.append(waiting)
    segment_of = {graph.nodes[i].outputs[0]: n for n, run in enumerate(runs) if isinstance(run, list) for i in run}
    read_by_data, read_later = set(), set()
    for n, run in enumerate(runs):
        for index in ([run] if isinstance(run, int) else run):
            for name in graph.nodes[index].inputs:
                if name in segment_of:
                    if isinstance(run, int):
                        read_by_data.add(name)
                    elif segment_of[name] != n:
                        read_later.add(name)
    tensors: dict[tuple, torch.Tensor] = {}
    return [run if isinstance(run, int) else
            _segment(graph, run, forms, ops, read_by_data, read_later, device, tensors) for run in runs]


def _segment(graph: Graph, run: list[int], forms: list, ops: Sequence[OpCallable], read_by_data: set[str],
             read_later: set[str], device: torch.device, tensors: dict[tuple, torch.Tensor]) -> ShapeSegment:
    computed = {graph.nodes[i].outputs[0] for i in run}
    inputs: list = []
    constants: dict[str, Any] = {}
    for index in run:
        for name in graph.nodes[index].inputs:
            if not name or name in computed:
                continue
            if name in graph.constants:
                constants.setdefault(name, canonical(graph.constants[name]))
            else:
                key = form_name(name) if name in read_later else name
                if key not in inputs:
                    inputs.append(key)
    slots: dict[Any, int] = {key: slot for slot, key in enumerate(inputs)}
    template: list = [None] * len(inputs)
    for name, value in constants.items():
        slots[name] = len(template)
        template.append(value)
    none_slot = len(template)  # omitted optional inputs
    template.append(None)
    program = []
    for index in run:
        node = graph.nodes[index]
        args = [none_slot if not name else slots[form_name(name) if form_name(name) in slots else name]
                for name in node.inputs]
        slots[node.outputs[0]] = len(template)
        template.append(None)
        program.append((forms[index], tuple(args), slots[node.outputs[0]], ops[index],
                        f"{node.label()} ({node.op_type})"))
    form_outputs = [name for name in sorted(computed & read_later)]
    tensor_outputs = [name for name in sorted(computed & read_by_data)]
    first, last = graph.nodes[run[0]], graph.nodes[run[-1]]
    return ShapeSegment(
        program, template, inputs,
        form_outputs=[slots[name] for name in form_outputs],
        tensor_outputs=[slots[name] for name in tensor_outputs],
        outputs=[form_name(name) for name in form_outputs] + tensor_outputs,
        label=f"{len(run)} shape nodes {first.label()} .. {last.label()}",
        device=device,
        tensors=tensors,
    )
