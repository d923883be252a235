"""Check a conversion against onnxruntime, value by value, and name the first node that diverges.

    report = check_against_onnxruntime("model.onnx")          # converts with the heuristic
    print(report.describe())                                   # or: python -m sparse_rt check model.onnx

onnxruntime runs the original model with every intermediate value made a graph output
(graph optimizations off, so it computes each value as the model states it); sparse_rt
runs the converted graph keeping every value it computes. Values both define are
compared in sparse_rt's node order; the first whose error exceeds the tolerance of its
dtype is the divergence, named by value, node and op type. Values that exist on one side
only (fused or folded away) and values nothing reads (such as an unused Dropout mask,
which onnxruntime leaves all false before opset 12) are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import onnx
import torch

from sparse_rt.ir.graph import Graph
from sparse_rt.ir.onnx_io import read_model_proto

# Largest error allowed per dtype, relative to the reference's largest magnitude (0: exact).
RELATIVE_TOLERANCE = {"float32": 1e-4, "float64": 1e-9, "float16": 1e-2, "bfloat16": 2e-2}


@dataclass(frozen=True)
class ValueDiff:
    """The error of one value: max abs and max relative (to the reference's max magnitude)."""

    value: str
    node: str
    op_type: str
    shape: tuple[int, ...]
    dtype: str
    max_abs: float
    max_rel: float
    tolerance: float

    @property
    def diverges(self) -> bool:
        return not self.max_rel <= self.tolerance  # NaN diverges

    def describe(self) -> str:
        return (f"value {self.value!r} of node {self.node!r} ({self.op_type}), {self.dtype} {list(self.shape)}: "
                f"max abs err {self.max_abs:.3g}, max rel err {self.max_rel:.3g} (tolerance {self.tolerance:g})")


@dataclass(frozen=True)
class CheckReport:
    """compared: the values both engines computed, in sparse_rt's order; first: the first of
    them that diverges, or None; outputs: the graph outputs' errors."""

    compared: list[ValueDiff]
    outputs: list[ValueDiff]

    @property
    def first(self) -> ValueDiff | None:
        return next((e for e in self.compared if e.diverges), None)

    @property
    def ok(self) -> bool:
        return self.first is None and not any(e.diverges for e in self.outputs)

    def describe(self) -> str:
        lines = [f"compared {len(self.compared)} values with onnxruntime"]
        first = self.first
        lines.append("no value diverges" if first is None else "first divergence: " + first.describe())
        lines += ["output " + e.describe() for e in self.outputs]
        return "\n".join(lines)


def random_feeds(proto: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]] | None = None,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for `proto`'s graph inputs: normal floats, integers in [0, 10), random bools.

    shapes: {input name: shape} for inputs whose shape has symbolic dims (these default to 1)."""
    shapes = dict(shapes or {})
    initializers = {t.name for t in proto.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        shape = shapes.pop(value.name, None)
        if shape is None:
            shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in tensor_type.shape.dim)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[value.name] = rng.random(shape) < 0.5
        else:
            feeds[value.name] = rng.integers(0, 10, shape).astype(dtype)
    if shapes:
        raise ValueError(f"shapes: unknown input(s) {sorted(shapes)}; the model's inputs are {list(feeds)}")
    return feeds


def check_against_onnxruntime(
    model: str | os.PathLike | bytes | onnx.ModelProto,
    feeds: Mapping[str, np.ndarray] | None = None,
    graph: Graph | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    tolerances: Mapping[str, float] | None = None,
    **session_options: Any,
) -> CheckReport:
    """Run plain ONNX `model` in onnxruntime and `graph` (default: `convert(model, tune=False)`)
    in sparse_rt on the same `feeds` (default: `random_feeds(model, shapes)`), compare every
    value both compute. tolerances: {dtype: max relative error} over RELATIVE_TOLERANCE."""
    from sparse_rt.api import convert
    from sparse_rt.runtime.session import InferenceSession

    proto = read_model_proto(model)
    feeds = dict(random_feeds(proto, shapes) if feeds is None else feeds)
    if graph is None:
        graph = convert(proto, tune=False)
    limits = {**RELATIVE_TOLERANCE, **(tolerances or {})}
    ours = InferenceSession(graph, **session_options).intermediates(feeds)
    read = set(graph.consumers()) | {v.name for v in graph.outputs}
    wanted = [name for node in graph.nodes for name in node.outputs if name in ours and name in read]
    reference = _onnxruntime_values(proto, feeds, wanted)
    producers = graph.producers()

    def error(name: str) -> ValueDiff:
        node = producers.get(name)
        label, op_type = (node.label(), node.op_type) if node is not None else (name, "input")
        return _compare(name, label, op_type, ours[name], reference[name], limits)

    compared = [error(name) for name in wanted if name in reference]
    outputs = [error(v.name) for v in graph.outputs if v.name in reference and v.name in ours]
    return CheckReport(compared, outputs)


def _onnxruntime_values(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                        names: list[str]) -> dict[str, np.ndarray]:
    """The values `names` (those the model defines) as onnxruntime computes them, unoptimized."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    defined = {o for node in probe.graph.node for o in node.output if o}
    outputs = {o.name for o in probe.graph.output}
    typed = {v.name: v for v in onnx.shape_inference.infer_shapes(probe).graph.value_info}
    extra = [n for n in dict.fromkeys(names) if n in defined and n not in outputs]
    for name in extra:
        probe.graph.output.append(typed.get(name) or onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fetch = [o.name for o in session.get_outputs()]
    return dict(zip(fetch, session.run(fetch, dict(feeds))))


def _compare(name: str, node: str, op_type: str, ours: torch.Tensor, reference: np.ndarray,
             limits: Mapping[str, float]) -> ValueDiff:
    dtype = str(ours.dtype).removeprefix("torch.")
    tolerance = limits.get(dtype, 0.0)
    actual = ours.detach().cpu()
    expected = torch.from_numpy(np.ascontiguousarray(reference))
    if tuple(actual.shape) != tuple(expected.shape):
        return ValueDiff(name, node, op_type, tuple(expected.shape), dtype, float("inf"), float("inf"), tolerance)
    if actual.numel() == 0:
        return ValueDiff(name, node, op_type, tuple(expected.shape), dtype, 0.0, 0.0, tolerance)
    actual, expected = actual.double(), expected.double()
    both_nan = actual.isnan() & expected.isnan()
    same_inf = actual.isinf() & (actual == expected)
    diff = torch.where(both_nan | same_inf, 0.0, (actual - expected).abs())
    diff = torch.where(diff.isnan(), float("inf"), diff)
    scale = expected[expected.isfinite()].abs().max().item() if expected.isfinite().any() else 0.0
    max_abs = diff.max().item()
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return ValueDiff(name, node, op_type, tuple(expected.shape), dtype, max_abs, max_rel, tolerance)
