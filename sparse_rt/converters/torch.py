"""torch.nn.Module -> ONNX ModelProto, through torch.onnx.export.

The module goes through torch's own ONNX exporter and then through the same
ONNX path as any other model, so there is one converter to keep right. Pruning
masks in any of the usual forms (torch.nn.utils.prune's weight_orig * weight_mask
hooks, torch.ao parametrizations, sparse_rt.pruning masks) are traced as
initializer arithmetic, which the ONNX converter folds into the masked weight.

Structured layers (any module with a `to_format()` method returning a weight
format, such as ButterflyLinear and PermutedBlockLinear) are exported as plain
linear layers of the same map, and their formats are returned keyed by the
signature of that weight, so lowering gives them back their structured format.

The leading dim of every example input is exported as dynamic ("batch"); name
more dynamic dims with `dynamic_dims` (e.g. {1: "seq"}).

A module past EXPORT_TO_FILE_BYTES of parameters and buffers is exported to a file
in the directory the caller gives, its weights in files beside it (protobuf cannot
hold a message of 2 GiB), for the converter to map them from there.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Sequence

import onnx
import torch

from sparse_rt.formats.base import WeightFormat

DEFAULT_OPSET = 18
# Modules past this many bytes of parameters and buffers are exported to a file, not to memory
EXPORT_TO_FILE_BYTES = 1536 << 20


def exports_to_file(module: torch.nn.Module) -> bool:
    """Whether `module` is past EXPORT_TO_FILE_BYTES of parameters and buffers."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) > EXPORT_TO_FILE_BYTES


def export_module(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor | None,
    *,
    dynamic_dims: dict[int, str] | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    directory: str | Path | None = None,
) -> tuple[onnx.ModelProto | Path, dict[str, WeightFormat]]:
    """Export `module` (in eval mode) to ONNX with a dynamic batch dim.

    example_inputs: tensors like the ones the model will see. dynamic_dims: extra
    {axis: name} dynamic dims applied to every input of sufficient rank, e.g.
    {1: "seq"} for [batch, seq, ...] inputs. exporter: "torchscript" (fast, the
    default) or "dynamo" (torch.export based). directory: write `model.onnx` there
    (its weights beside it, as external data) instead of returning a ModelProto.
    Returns the model (or its path) and the structured formats found, {weight
    signature: format}. `module` is not modified.
    """
    if example_inputs is None:
        raise TypeError("example_inputs: required to convert a torch.nn.Module (a tuple of example tensors)")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if not all(isinstance(t, torch.Tensor) for t in example_inputs):
        kinds = [type(t).__name__ for t in example_inputs]
        raise TypeError(f"example_inputs: expected torch.Tensors, got {kinds}")
    names = [f"input_{i}" if len(example_inputs) > 1 else "input" for i in range(len(example_inputs))]
    axes = {0: "batch", **(dynamic_dims or {})}
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter: expected 'torchscript' or 'dynamo', got {exporter!r}")
    module = copy.deepcopy(module).eval()
    structured = _replace_structured_layers(module)
    path = None if directory is None else Path(directory) / "model.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            model = _export_torchscript(module, example_inputs, names, axes, opset, path)
        else:
            model = _export_dynamo(module, example_inputs, names, axes, opset, path)
    return model, structured


class _StructuredAsLinear(torch.nn.Linear):
    """Stand-in for a structured layer during export: the same linear map, densely."""


def _replace_structured_layers(module: torch.nn.Module) -> dict[str, WeightFormat]:
    from sparse_rt.scheduler.tune import weight_signature

    found: dict[str, WeightFormat] = {}
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            to_format = getattr(child, "to_format", None)
            if not callable(to_format):
                continue
            fmt = to_format()
            weight = fmt.to_dense().to(torch.float32)
            bias = getattr(child, "bias", None)
            linear = _StructuredAsLinear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if bias is not None:
                    linear.bias.copy_(bias.detach())
            setattr(parent, child_name, linear)
            found[weight_signature(linear.weight)] = fmt
    return found


def _export_torchscript(module, inputs, names, axes, opset, path: Path | None) -> onnx.ModelProto | Path:
    """To memory, or to `path` (torch writes tensors past 2 GiB of model to files beside it)."""
    target = io.BytesIO() if path is None else str(path)
    dynamic_axes = {name: {a: n for a, n in axes.items() if a < t.dim()} for name, t in zip(names, inputs)}
    torch.onnx.export(
        module, inputs, target, dynamo=False, input_names=names, opset_version=opset,
        dynamic_axes=dynamic_axes, do_constant_folding=True,
    )
    return onnx.load_from_string(target.getvalue()) if path is None else path


def _export_dynamo(module, inputs, names, axes, opset, path: Path | None) -> onnx.ModelProto | Path:
    """To memory, or to `path` with every tensor in one data file beside it."""
    dims = {n: torch.export.Dim(n) for n in set(axes.values())}
    shapes = tuple({a: dims[n] for a, n in axes.items() if a < t.dim()} for t in inputs)
    program = torch.onnx.export(
        module, inputs, dynamo=True, input_names=names, opset_version=opset,
        dynamic_shapes=shapes, verbose=False,
    )
    if path is None:
        return program.model_proto
    program.save(str(path), external_data=True)
    return path
