"""The public entry points: convert, load, save (re-exported by sparse_rt)."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Sequence

import onnx
import torch

from sparse_rt.converters.conv_algorithms import choose_conv_algorithms
from sparse_rt.converters.conv_fusion import fuse_relu
from sparse_rt.converters.fusion import chain_csr_layers, fuse_graph, fuse_linear_activation
from sparse_rt.converters.lowering import linear_inputs, lower_linear_layers
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.converters.quantized import dequantize_linear_layers, is_quantized
from sparse_rt.ir.graph import SPARSE_DOMAIN, Graph
from sparse_rt.ir.onnx_io import load as load_graph
from sparse_rt.ir.onnx_io import graph_from_file, read_model_proto
from sparse_rt.ir.onnx_io import save as save_graph
from sparse_rt.scheduler.workload import calibration_inputs, nonzero_weight_bytes, rows_per_input

ModelLike = Graph | str | os.PathLike | bytes | onnx.ModelProto


def convert(
    model: Any,
    example_inputs: Sequence[torch.Tensor] | None = None,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    batch_sizes: Sequence[int] | Mapping[int, float] | None = None,
    device: str | torch.device = "cpu",
    tune: bool = True,
    lower: bool = True,
    progress: bool = False,
    quantize: str | None = None,
    quantize_tolerance: float | None = None,
    calibration: Sequence[Mapping[str, Any]] | None = None,
    rounding: str = "nearest",
) -> Graph:
    """Convert a model to a sparse_rt Graph with its linear layers lowered.

    model: an ONNX path, bytes or ModelProto, or a torch.nn.Module (then
    `example_inputs` is required). By default every linear layer is tuned at the rows
    it really sees: the model runs once on representative inputs (`shapes` {input name:
    shape} where given, else 1 for a leading dynamic dim and 128 for other dynamic dims,
    such as a sequence), and the chosen format's kernels are also timed at a spread of
    row counts, for the session to dispatch each call by its rows
    (`scheduler.workload`). batch_sizes: tune every layer at these rows instead
    (tokens per call for sequence models), or {rows: weight}. tune=False picks kernels
    by a deterministic heuristic, without timing. progress: a progress bar over the
    layers while tuning. quantize="int8": int8 weight formats (activations
    quantized per token) become candidates wherever a layer's int8 output error against
    fp32, measured at conversion, is within quantize_tolerance (default
    sparse_rt.scheduler.quantize.DEFAULT_TOLERANCE); other layers stay fp32. An ONNX
    model that is already quantized (onnxruntime's quantize_dynamic or quantize_static
    output) has its linear layers dequantized and converted with quantize="int8" unless
    quantize says otherwise (see sparse_rt.converters.quantized). calibration (with int8):
    a few feeds {input name: array} like those the model will serve; each int8 layer's bias
    then cancels its rounding's mean output error on the inputs it sees there (on the bench's
    BERT this cuts the sequence-pooled output's error 3x). rounding: "nearest" (default) or
    "gptq", the int8 weights rounded against those inputs (sparse_rt.scheduler.rounding;
    needs calibration).
    """
    structured = None
    if isinstance(model, torch.nn.Module):
        from sparse_rt.converters.torch import export_module, exports_to_file

        # past protobuf's limit the module goes through a file, whose weights conversion maps;
        # they stay readable once the directory is gone (the mapping holds them)
        workdir = tempfile.TemporaryDirectory(prefix="sparse_rt_export_") if exports_to_file(model) else None
        model, structured = export_module(model, example_inputs, directory=workdir and workdir.name)
        if shapes is None and batch_sizes is None:  # the example inputs are the representative ones
            examples = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
            graph_inputs = (model if workdir is None else onnx.load(model, load_external_data=False)).graph.input
            shapes = {value.name: tuple(t.shape) for value, t in zip(graph_inputs, examples)}
    elif example_inputs is not None:
        raise TypeError("example_inputs: only used when converting a torch.nn.Module")
    if isinstance(model, Graph):
        graph = model
    else:
        graph = import_onnx(model)
        if is_quantized(graph):  # a quantized model converts to int8 layers unless told otherwise
            quantize = "int8" if quantize is None else quantize
            dequantize_linear_layers(graph)
        fuse_graph(graph)
    if calibration is not None and quantize != "int8":
        raise ValueError(f"calibration: corrects int8 layers, so it needs quantize='int8' (got quantize={quantize!r})")
    if rounding == "gptq" and calibration is None:
        raise ValueError("rounding='gptq': rounds against calibration inputs, so it needs calibration=[feeds]")
    if lower:
        from sparse_rt.scheduler.cold import cold_rows_for
        from sparse_rt.scheduler.plan import make_chooser
        from sparse_rt.scheduler.quantize import DEFAULT_TOLERANCE

        if batch_sizes is not None and shapes is not None:
            raise TypeError("convert: give shapes (representative inputs) or batch_sizes (rows to tune at), not both")
        feature_axes = linear_inputs(graph)
        rows = rows_per_input(graph, feature_axes, shapes) if batch_sizes is None else None
        tolerance = DEFAULT_TOLERANCE if quantize_tolerance is None else quantize_tolerance
        cold_rows = cold_rows_for(nonzero_weight_bytes(graph, 1 if quantize == "int8" else 4)) if tune else 0
        chooser = make_chooser(torch.device(device), batch_sizes, tune=tune, structured=structured,
                               quantize=quantize, tolerance=tolerance, rounding=rounding, cold_rows=cold_rows)
        inputs = None if calibration is None else calibration_inputs(graph, feature_axes, calibration)
        lower_linear_layers(graph, chooser, progress=progress, keep_apart=_arrived_structured(structured), rows=rows,
                            calibration=inputs, device=device)
        fuse_linear_activation(graph)
        fuse_relu(graph)
        if tune:
            choose_conv_algorithms(graph, shapes, device, cold=cold_rows > 0)
        chain_csr_layers(graph)
    return graph


def _arrived_structured(structured: Mapping[str, Any] | None):
    """Layers whose weight arrived in a structured format keep it: they are not merged."""
    if not structured:
        return None
    from sparse_rt.scheduler.tune import weight_signature

    return lambda layer: weight_signature(torch.from_numpy(layer.weight)) in structured


def save(graph: Graph, path: str | os.PathLike) -> None:
    """Write a converted graph as an ONNX file (SparseLinear in domain ai.sparse_rt)."""
    save_graph(graph, path)


def load(path: str | os.PathLike | bytes) -> Graph:
    """Read a file written by `save` (no code is run: protobuf only)."""
    return load_graph(path)


def ensure_graph(model: Any, device: torch.device) -> Graph:
    """Graph for a session: a Graph as is, a sparse_rt file loaded, plain ONNX converted."""
    if isinstance(model, Graph):
        model.validate()
        return model
    if isinstance(model, torch.nn.Module):
        raise TypeError("model: a torch.nn.Module must first go through sparse_rt.convert(module, example_inputs)")
    proto = read_model_proto(model, external_data=False)
    if any(o.domain == SPARSE_DOMAIN for o in proto.opset_import):
        return graph_from_file(proto, model)
    return convert(model if isinstance(model, (str, os.PathLike)) else proto, device=device, tune=False)
