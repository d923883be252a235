"""torch.nn.Module -> ONNX ModelProto, through torch.onnx.export.

The module goes through torch's own ONNX exporter and then through the same
ONNX path as any other model, so there is one converter to keep right. Pruning
masks in any of the usual forms (torch.nn.utils.prune's weight_orig * weight_mask
hooks, torch.ao parametrizations, sparse_rt.pruning masks) are traced as
initializer arithmetic, which the ONNX converter folds into the masked weight.

The leading dim of every example input is exported as dynamic ("batch"), and for
inputs of rank >= 2 whose second dim is not a feature size, the caller can name
more dynamic dims with `dynamic_dims`.
"""

from __future__ import annotations

import io
import warnings
from typing import Sequence

import onnx
import torch

DEFAULT_OPSET = 18


def export_module(
    module: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor | None,
    *,
    dynamic_dims: dict[int, str] | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
) -> onnx.ModelProto:
    """Export `module` (in eval mode) to ONNX with a dynamic batch dim.

    example_inputs: tensors like the ones the model will see. dynamic_dims: extra
    {axis: name} dynamic dims applied to every input of sufficient rank, e.g.
    {1: "seq"} for [batch, seq, ...] inputs. exporter: "torchscript" (fast, the
    default) or "dynamo" (torch.export based).
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
    was_training = module.training
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                return _export_torchscript(module, example_inputs, names, axes, opset)
            if exporter == "dynamo":
                return _export_dynamo(module, example_inputs, names, axes, opset)
            raise ValueError(f"exporter: expected 'torchscript' or 'dynamo', got {exporter!r}")
    finally:
        module.train(was_training)


def _export_torchscript(module, inputs, names, axes, opset) -> onnx.ModelProto:
    buffer = io.BytesIO()
    dynamic_axes = {name: {a: n for a, n in axes.items() if a < t.dim()} for name, t in zip(names, inputs)}
    torch.onnx.export(
        module, inputs, buffer, dynamo=False, input_names=names, opset_version=opset,
        dynamic_axes=dynamic_axes, do_constant_folding=True,
    )
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(module, inputs, names, axes, opset) -> onnx.ModelProto:
    dims = {n: torch.export.Dim(n) for n in set(axes.values())}
    shapes = tuple({a: dims[n] for a, n in axes.items() if a < t.dim()} for t in inputs)
    program = torch.onnx.export(
        module, inputs, dynamo=True, input_names=names, opset_version=opset,
        dynamic_shapes=shapes, verbose=False,
    )
    return program.model_proto
