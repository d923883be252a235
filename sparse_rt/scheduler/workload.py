"""The rows each linear layer really sees per call, found by running the model once.

A model exported with dynamic axes says nothing of its token count: input_ids is
[batch, sequence]. Conversion picks a representative shape for every input (the
user's `shapes`, else 1 for a leading symbolic dim and DEFAULT_SEQUENCE for any other
symbolic dim, so a sequence model runs 1 x 128 tokens and an image model one image),
runs the unlowered graph once on such inputs, and reads the leading-dims product of
each linear layer's input: that is the row count the tuner times it at. A 1x1 conv of
a 56x56 feature map sees 3136 rows; an encoder's projections batch x sequence.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

from sparse_rt.ir.graph import Graph

DEFAULT_SEQUENCE = 128
# Row counts the chosen format's kernels are also timed at, so the session can switch
# kernels by the rows of each call (batch 1 decode to long prompts).
ROW_SPREAD = (1, 8, 64, 128, 512, 2048)


def representative_shapes(graph: Graph, shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, tuple[int, ...]]:
    """{input name: concrete shape}: `shapes` where given, else symbolic dims set to 1 (axis 0)
    or DEFAULT_SEQUENCE (other axes). Raises ValueError naming unknown or mis-ranked inputs."""
    given = {name: tuple(int(d) for d in shape) for name, shape in (shapes or {}).items()}
    inputs = {v.name: v for v in graph.inputs}
    unknown = sorted(set(given) - set(inputs))
    if unknown:
        raise ValueError(f"shapes: unknown input(s) {unknown}; the model's inputs are {list(inputs)}")
    result = {}
    for name, value in inputs.items():
        if name in given:
            shape = given[name]
            if value.shape is not None and len(shape) != len(value.shape):
                raise ValueError(f"shapes: input {name!r}: expected rank {len(value.shape)} {value.describe()}, "
                                 f"got {list(shape)}")
            if value.shape is not None and any(isinstance(w, int) and w != g for w, g in zip(value.shape, shape)):
                raise ValueError(f"shapes: input {name!r}: expected {value.describe()}, got {list(shape)}")
            result[name] = shape
        elif value.shape is None:
            raise ValueError(f"shapes: input {name!r} has unknown rank; give its shape, e.g. shapes={{{name!r}: (1, 128)}}")
        else:
            result[name] = tuple(d if isinstance(d, int) else (1 if axis == 0 else DEFAULT_SEQUENCE)
                                 for axis, d in enumerate(value.shape))
    return result


def representative_feeds(graph: Graph, shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """Inputs of the representative shapes: floats standard normal (seeded), integers 1 (a valid
    token id, an attention mask that attends), bools true."""
    rng = np.random.default_rng(0)
    concrete = representative_shapes(graph, shapes)
    feeds = {}
    for value in graph.inputs:
        shape = concrete[value.name]
        dtype = np.dtype(value.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = np.ones(shape, dtype=dtype)
    return feeds


def rows_per_input(graph: Graph, feature_axes: Mapping[str, int],
                   shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, int]:
    """{value name: rows} for the linear-layer inputs of `feature_axes` ({name: feature axis}:
    -1 for Gemm/MatMul, 1 for an NCHW Conv): the value's size over its feature dim when the
    graph runs once on `representative_feeds`. Values the run does not reach (or a run that
    fails) fall back to their static shape, with symbolic dims as in `representative_shapes`;
    what is still unknown is left out."""
    from sparse_rt.runtime.session import InferenceSession

    feeds = representative_feeds(graph, shapes)
    try:
        values = InferenceSession(graph, retain_memory=False).intermediates(feeds, set(feature_axes))
    except (RuntimeError, ValueError, TypeError, IndexError):
        values = {}
    rows = {}
    for name, axis in feature_axes.items():
        value = values.get(name)
        if value is not None and value.dim() > max(axis, 0) and value.shape[axis]:
            rows[name] = max(1, value.numel() // value.shape[axis])
            continue
        declared = graph.value(name)
        if declared is None or declared.shape is None or len(declared.shape) <= max(axis, 0):
            continue
        dims = [d if isinstance(d, int) else (1 if i == 0 else DEFAULT_SEQUENCE)
                for i, d in enumerate(declared.shape) if i != axis % len(declared.shape)]
        if None not in dims:
            rows[name] = max(1, math.prod(dims))
    return rows


def calibration_inputs(graph: Graph, feature_axes: Mapping[str, int],
                       feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{value name: float32 [rows, features]}: the linear-layer inputs of `feature_axes` (as in
    `rows_per_input`) over every calibration feed ({input name: array}), each value's feature
    axis moved last and the rest flattened into rows. ValueError naming the feed that does not
    run."""
    from sparse_rt.runtime.session import InferenceSession

    if isinstance(feeds, Mapping) or not isinstance(feeds, Sequence) or not feeds:
        raise ValueError(f"calibration: expected a non-empty sequence of feeds {{input name: array}}, "
                         f"got {type(feeds).__name__}")
    session = InferenceSession(graph, retain_memory=False)
    rows: dict[str, list[np.ndarray]] = {name: [] for name in feature_axes}
    for index, feed in enumerate(feeds):
        if not isinstance(feed, Mapping):
            raise ValueError(f"calibration feed {index}: expected a mapping {{input name: array}}, "
                             f"got {type(feed).__name__}")
        try:
            values = session.intermediates(feed, set(feature_axes))
        except (RuntimeError, ValueError, TypeError, KeyError) as error:
            raise ValueError(f"calibration feed {index}: the model does not run on it: {error}") from error
        for name, axis in feature_axes.items():
            value = values.get(name)
            if value is not None and value.is_floating_point() and value.dim() > max(axis, 0):
                moved = value.movedim(axis, -1)
                rows[name].append(moved.reshape(-1, moved.shape[-1]).to(torch.float32).numpy())
    return {name: np.concatenate(parts) for name, parts in rows.items() if parts}


def nonzero_weight_bytes(graph: Graph, bytes_per_value: int = 4) -> int:
    """The least bytes the weights of the graph's Gemm, MatMul and Conv nodes can take in any
    format: `bytes_per_value` per nonzero (4 for float32, 1 for int8), no indices counted."""
    weights = {node.inputs[1] for node in graph.nodes
               if not node.domain and node.op_type in ("Gemm", "MatMul", "Conv") and len(node.inputs) > 1}
    return sum(int(np.count_nonzero(graph.constants[name])) * bytes_per_value
               for name in weights if name in graph.constants)
