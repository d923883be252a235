"""InferenceSession: run a Graph with onnxruntime's calling convention.

Nodes are bound to implementations once, at construction; `run` is a plain loop
over a dict of values. A value is dropped as soon as its last consumer has run.
Values computed from shapes alone (`runtime.shapes`) are kept per input-shape
signature, and later runs with the same input shapes skip their nodes; a run with new
input shapes computes them as plain Python (`runtime.shape_program`) where every shape
node has a form there, and as torch ops otherwise. Dense layers
that feed each other are planned as one step (`runtime.chains`).
`run` keeps its state in locals (the shape-value cache only gains entries), so
concurrent calls on one session are safe.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Container, Mapping, Sequence

import numpy as np
import torch

from sparse_rt.ir.graph import Graph, Value
from sparse_rt.ir.tensors import tensor_view
from sparse_rt.ops.registry import BindContext, OpCallable, lookup_nodes
from sparse_rt.runtime.chains import chain_dense_steps
from sparse_rt.runtime.memory import retain_freed_memory, trim_free_memory
from sparse_rt.runtime.shape_program import plan_shape_segments
from sparse_rt.runtime.shapes import shape_values

class _Everything:
    """A container holding every name."""

    def __contains__(self, name: object) -> bool:
        return True


_EVERYTHING = _Everything()
# Input-shape signatures whose shape values a session keeps (the oldest is dropped first).
SHAPE_CACHE_ENTRIES = 64

_TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "uint16": torch.uint16,
    "uint32": torch.uint32,
    "uint64": torch.uint64,
    "bool": torch.bool,
}


@dataclass(frozen=True)
class NodeArg:
    """Like onnxruntime's NodeArg: name, shape (ints, symbolic names or None), type string."""

    name: str
    shape: list[int | str | None]
    type: str


def _node_arg(value: Value) -> NodeArg:
    shape = [] if value.shape is None else list(value.shape)
    return NodeArg(value.name, shape, f"tensor({_onnx_type_name(value.dtype)})")


def _onnx_type_name(dtype: str) -> str:
    return {"float32": "float", "float64": "double", "float16": "float16"}.get(dtype, dtype)


@dataclass
class _Step:
    """One bound node: `template` holds its constant (and omitted) inputs in place;
    `dynamic` lists (position, value name) of the inputs computed at run time."""

    fn: OpCallable
    template: tuple
    dynamic: tuple[tuple[int, str], ...]
    outputs: tuple[str, ...]
    release: tuple[str, ...]
    label: str
    computes_shape: bool


@dataclass(frozen=True)
class _Call:
    """A callable to plan as one step: the keys of the values it reads and writes (value names,
    or `shape_program.form_name` keys), and the values of the constants among its inputs."""

    fn: OpCallable
    inputs: tuple[Any, ...]
    outputs: tuple[Any, ...]
    label: str
    computes_shape: bool
    constants: Mapping[str, Any]


@dataclass(frozen=True)
class _ShapeEntry:
    """The shape values of one input-shape signature, and their storages (outputs that
    alias them are copied before they reach the caller)."""

    values: dict[str, torch.Tensor]
    storages: frozenset[int]


def bind_nodes(graph: Graph, device: torch.device, options: dict[str, Any] | None = None) -> list:
    """Bind every node to its implementation; report all unsupported ops at once."""
    specs = lookup_nodes(graph.nodes, graph.opset)
    ctx = BindContext(device=device, opset=graph.opset, constants=graph.constants, options=options or {})
    bound = []
    for node, spec in zip(graph.nodes, specs):
        try:
            bound.append(spec.bind(node, ctx))
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise type(exc)(f"node {node.label()!r} ({node.op_type}): {exc}") from exc
    return bound


class InferenceSession:
    """Run a model: `InferenceSession(model, device="cpu", threads=None)`.

    model: a Graph, a path to an ONNX file (saved by sparse_rt or plain ONNX,
    which is converted), or its bytes. threads: intra-op threads for torch and
    the CPU kernels (process-wide, as torch's setting is). retain_memory: keep
    freed tensor memory in the process for the next run (`runtime.memory`,
    process-wide) rather than faulting it in again on every run.
    """

    def __init__(
        self,
        model: Graph | str | os.PathLike | bytes,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        retain_memory: bool = True,
        **options: Any,
    ):
        from sparse_rt.api import ensure_graph

        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: no CUDA device is available here (torch {torch.__version__})")
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device {str(device)!r}: expected 'cpu' or 'cuda[:N]'")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads: expected a positive integer, got {threads}")
            set_threads(threads)
        self.graph = ensure_graph(model, device=self.device)
        self._inputs = list(self.graph.inputs)
        self._input_values = {v.name: v for v in self._inputs}
        self._outputs = list(self.graph.outputs)
        self._output_names = [v.name for v in self._outputs]
        self._constants = {
            name: tensor_view(array).to(self.device)
            for name, array in self.graph.constants.items()
        }
        self._constant_storages = {_storage(t) for t in self._constants.values()}
        fns = bind_nodes(self.graph, self.device, options)
        self._shape_values = shape_values(self.graph)
        calls = [_Call(fn, tuple(node.inputs), tuple(node.outputs), f"{node.label()} ({node.op_type})",
                       self._computes_shape(node), self._constants) for node, fn in zip(self.graph.nodes, fns)]
        self._steps = self._plan(calls)
        # with the shape values at hand: only the nodes that compute from data
        self._data_steps = self._plan([c for c in calls if not c.computes_shape]) if self._shape_values else None
        # without them: the shape nodes as plain Python, where they all have a form there
        segments = plan_shape_segments(self.graph, self._shape_values, fns, self.device) if self._shape_values else None
        self._miss_steps = None if segments is None else self._plan([
            calls[item] if isinstance(item, int) else _Call(item, item.inputs, item.outputs, item.label, True, {})
            for item in segments])
        self._shape_cache: dict[tuple, _ShapeEntry] = {}
        self._shape_cache_entries = SHAPE_CACHE_ENTRIES
        if retain_memory:  # after loading: what loading freed goes back to the system
            trim_free_memory()
            retain_freed_memory()

    def _plan(self, calls: list[_Call]) -> list[_Step]:
        keep = {v.name for v in self._outputs} | set(self._constants)
        last_use: dict[Any, int] = {}
        for index, call in enumerate(calls):
            for name in call.inputs:
                if name:
                    last_use[name] = index
        steps = []
        for index, call in enumerate(calls):
            dying = {n for n in call.inputs if n and last_use.get(n) == index and n not in keep}
            # outputs nobody reads are dropped right away
            dying |= {o for o in call.outputs if o and o not in last_use and o not in keep}
            template = tuple(call.constants.get(name) if name else None for name in call.inputs)
            dynamic = tuple((i, name) for i, name in enumerate(call.inputs) if name and name not in call.constants)
            steps.append(_Step(call.fn, template, dynamic, call.outputs, tuple(sorted(dying, key=str)), call.label,
                               call.computes_shape))
        return chain_dense_steps(steps)

    def _computes_shape(self, node) -> bool:
        return any(out in self._shape_values for out in node.outputs)

    def get_inputs(self) -> list[NodeArg]:
        return [_node_arg(v) for v in self._inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [_node_arg(v) for v in self._outputs]

    def run(
        self,
        output_names: Sequence[str] | None,
        input_feed: Mapping[str, Any],
    ) -> list:
        """Compute the named outputs (all when None) from `input_feed` {name: array}.

        Returns numpy arrays, or torch tensors if the inputs were torch tensors.
        """
        wanted = self._output_names if output_names is None else self._check_output_names(output_names)
        values, as_torch = self._check_feed(input_feed)
        inputs = {_storage(t) for t in values.values()}
        kept = self._execute(values)
        # outputs never alias the caller's inputs, the session's constants or its kept shape values
        results = []
        for name in wanted:
            tensor = values[name]
            storage = _storage(tensor)
            if storage in inputs or storage in kept or storage in self._constant_storages:
                tensor = tensor.clone()
            results.append(tensor)
        if as_torch:
            return results
        return [_to_numpy(t) for t in results]

    def run_views(self, input_feed: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All outputs as torch tensors {name: tensor}, for callers that own the buffers they
        feed (the KV cache of `runtime.generate`): inputs are checked as by `run`, but outputs
        are not copied and may be views of the inputs."""
        values, _ = self._check_feed(input_feed)
        self._execute(values)
        return {name: values[name] for name in self._output_names}

    def replan(self, rewrite: Callable[[list], list], shape_cache_entries: int | None = None) -> "InferenceSession":
        """A session sharing this one's graph and bound nodes whose planned steps are
        `rewrite(steps)` (a list of the session's steps -> a list of steps), keeping the shape
        values of up to `shape_cache_entries` input-shape signatures (default: as this one)."""
        clone = copy.copy(self)
        if shape_cache_entries is not None:
            if shape_cache_entries < 1:
                raise ValueError(f"shape_cache_entries: expected a positive count, got {shape_cache_entries}")
            clone._shape_cache_entries = shape_cache_entries
        clone._steps = rewrite(self._steps)
        clone._data_steps = None if self._data_steps is None else rewrite(self._data_steps)
        clone._miss_steps = None if self._miss_steps is None else rewrite(self._miss_steps)
        clone._shape_cache = {}
        return clone

    def profile(self, input_feed: Mapping[str, Any], repeats: int = 5) -> list[tuple[str, float]]:
        """Median seconds per node over `repeats` runs, slowest first: [(\"label (op)\", seconds)]."""
        samples: dict[str, list[float]] = {}
        for _ in range(repeats):
            values, _ = self._check_feed(input_feed)
            self._execute(values, samples)
        medians = [(label, sorted(times)[len(times) // 2]) for label, times in samples.items()]
        return sorted(medians, key=lambda item: -item[1])

    def intermediates(self, input_feed: Mapping[str, Any], names: Container[str] | None = None) -> dict[str, torch.Tensor]:
        """The values one run computes, by name: all of them, or those in `names` (which are
        then kept past their last reader): {name: tensor}.

        For debugging (`sparse_rt.runtime.check`) and for finding the rows each layer sees.
        Values that a planned step keeps internal (dense chains, batch tiles) are left out;
        the shape values are computed as torch ops, whatever the session has kept."""
        values, _ = self._check_feed(input_feed)
        self._execute(values, keep=_EVERYTHING if names is None else names)
        return {name: value for name, value in values.items()
                if isinstance(value, torch.Tensor) and (names is None or name in names)}

    def _execute(
        self, values: dict[str, torch.Tensor], timings: dict[str, list[float]] | None = None,
        keep: Container[str] = (),
    ) -> frozenset[int]:
        """Run the graph on `values` (the inputs; the rest are added, and released after their
        last reader unless in `keep`, which runs every node as a torch op); returns the storages
        of the kept shape values it used or kept."""
        for value in self._outputs:  # outputs that are constants
            if value.name in self._constants:
                values[value.name] = self._constants[value.name]
        steps, captured, reused = self._steps, None, frozenset()
        if self._data_steps is not None and not keep:
            signature = tuple(tuple(values[v.name].shape) for v in self._inputs)
            entry = self._shape_cache.get(signature)
            if entry is not None:
                values.update(entry.values)
                steps, reused = self._data_steps, entry.storages
            else:
                captured = {}
                if self._miss_steps is not None:
                    steps = self._miss_steps
        with torch.inference_mode():
            for step in steps:
                args = list(step.template)
                for position, name in step.dynamic:
                    args[position] = values[name]
                start = time.perf_counter() if timings is not None else 0.0
                try:
                    result = step.fn(*args)
                except Exception as exc:
                    raise RuntimeError(f"node {step.label} failed: {type(exc).__name__}: {exc}") from exc
                if timings is not None:
                    timings.setdefault(step.label, []).append(time.perf_counter() - start)
                if not isinstance(result, (tuple, list)):  # a tensor (or a kernel's BatchTiles)
                    values[step.outputs[0]] = result
                else:
                    for name, tensor in zip(step.outputs, result):
                        if name:
                            values[name] = tensor
                if captured is not None and step.computes_shape:
                    captured.update((name, values[name]) for name in step.outputs if name in self._shape_values)
                for name in step.release:
                    if name not in keep:
                        values.pop(name, None)
        if captured is not None:
            reused = self._keep_shapes(signature, captured)
        return reused

    def _keep_shapes(self, signature: tuple, captured: dict[str, torch.Tensor]) -> frozenset[int]:
        if len(self._shape_cache) >= self._shape_cache_entries:
            self._shape_cache.pop(next(iter(self._shape_cache)), None)
        storages = frozenset(_storage(t) for t in captured.values())
        self._shape_cache[signature] = _ShapeEntry(captured, storages)
        return storages

    def _check_output_names(self, output_names: Sequence[str]) -> list[str]:
        known = self._output_names
        if isinstance(output_names, str):
            raise TypeError(f"output_names: expected a list of names or None, got the string {output_names!r}")
        for name in output_names:
            if name not in known:
                raise ValueError(f"unknown output {name!r}; the model's outputs are {known}")
        return list(output_names)

    def _check_feed(self, input_feed: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], bool]:
        if not isinstance(input_feed, Mapping):
            raise TypeError(f"input_feed: expected a dict {{name: array}}, got {type(input_feed).__name__}")
        expected = self._input_values
        if input_feed.keys() != expected.keys():
            unknown = [name for name in input_feed if name not in expected]
            if unknown:
                raise ValueError(f"unknown input(s) {unknown}; the model's inputs are {list(expected)}")
            missing = [name for name in expected if name not in input_feed]
            raise ValueError(f"missing input(s) {missing}; the model's inputs are {list(expected)}")
        values: dict[str, torch.Tensor] = {}
        as_torch = bool(expected)  # numpy results for numpy inputs and for models without inputs
        symbols: dict[str, int] = {}
        for name, value in expected.items():
            array = input_feed[name]
            if isinstance(array, torch.Tensor):
                tensor = array.detach()
                dtype = str(tensor.dtype).removeprefix("torch.")
            else:
                as_torch = False
                if not isinstance(array, np.ndarray):
                    array = np.asarray(array)
                dtype = array.dtype.name
                if dtype not in _TORCH_DTYPES:
                    raise TypeError(f"input {name!r}: expected {value.describe()}, got unsupported dtype {dtype}")
                tensor = tensor_view(array)
            _check_input(name, value, dtype, tensor.shape, symbols)
            values[name] = tensor if tensor.device == self.device else tensor.to(self.device)
        return values, as_torch


def _check_input(name: str, value: Value, dtype: str, shape: Sequence[int], symbols: dict[str, int]) -> None:
    def found() -> str:
        return f"{dtype} [{', '.join(map(str, shape))}]"

    if dtype != value.dtype:
        raise TypeError(f"input {name!r}: expected {value.describe()}, got {found()}")
    if value.shape is None:
        return
    if len(shape) != len(value.shape):
        raise ValueError(
            f"input {name!r}: expected rank {len(value.shape)} {value.describe()}, got rank {len(shape)} {found()}"
        )
    for axis, (want, got) in enumerate(zip(value.shape, shape)):
        if isinstance(want, int):
            if want != got:
                raise ValueError(f"input {name!r}: expected {value.describe()}, got {found()} (axis {axis})")
        elif isinstance(want, str) and symbols.setdefault(want, got) != got:
            raise ValueError(f"input {name!r}: dim {want!r} is {got} here but {symbols[want]} in another input")


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A C-ordered array, as onnxruntime gives (convs leave channels-last tensors)."""
    try:  # a plain CPU tensor of a dtype numpy has
        return tensor.contiguous().numpy()
    except (TypeError, RuntimeError):
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.detach().cpu().contiguous().numpy()


def set_threads(threads: int) -> None:
    """Set the intra-op threads of torch, which the compiled CPU kernels share."""
    torch.set_num_threads(threads)
