"""Calibration passes for one-shot pruners: the inputs one layer sees, one layer at a time.

A calibration set is an iterable of batches, each fed to the model as `model(batch)`
(a tensor), `model(*batch)` (a tuple or list) or `model(**batch)` (a dict). To gather
a layer's statistics the batches run through the model with a forward pre-hook on that
layer which hands the layer's input, flattened to [rows, in_features], to an
accumulator, then stops the pass: the layers after it are not computed. Only one
layer's accumulator (for SparseGPT its [in, in] Hessian) is alive at a time.

Layers are visited in module order, which for the usual stacks is execution order;
a layer is pruned before the next layer's inputs are gathered, so every layer is
calibrated on the activations of the already-pruned layers before it. Layers that read
the very same input tensor (an attention's query, key and value projections; a gated
MLP's gate and up projections) form one group (`input_groups`): their inputs are
gathered once, by one pass, and serve every layer of the group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparse_rt.ops.im2col import im2col

Calibration = Iterable[Any]
"""Batches for `model(batch)`, `model(*batch)` or `model(**batch)`."""


class _Stop(Exception):
    """Raised by the hook once the layer's input is recorded: the rest of the pass is skipped."""


def layer_rows(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A linear layer's input as float32 rows [rows, in_features]: a 1x1 conv's channels last,
    another conv's input patches, one row per output position in (kernel row, kernel column,
    channel) order, the order of `masks.as_matrix`."""
    if not isinstance(layer, nn.Conv2d):
        return x.reshape(-1, x.shape[-1]).float()
    if layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.padding in ((0, 0), "valid"):
        x = x.movedim(1, -1)  # x: [B, C, H, W] -> [B*H*W, C]
        return x.reshape(-1, x.shape[-1]).float()
    return _patch_rows(layer, x)


def _patch_rows(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] -> [B * H' * W', kh * kw * C]: the patches `layer` convolves."""
    (kh, kw), (dh, dw) = layer.kernel_size, layer.dilation
    if layer.padding == "same":
        totals = (dh * (kh - 1), dw * (kw - 1))
        (top, left), (bottom, right) = [t // 2 for t in totals], [t - t // 2 for t in totals]
    else:
        (top, left) = (bottom, right) = (0, 0) if layer.padding == "valid" else layer.padding
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    x = F.pad(x, (left, right, top, bottom), mode=mode)
    patches = im2col(x.movedim(1, -1), (kh, kw), layer.stride, (0, 0, 0, 0), (dh, dw))  # conversion's own rows
    return patches.reshape(-1, patches.shape[-1]).float()


def feed_layer_inputs(
    model: nn.Module,
    name: str,
    layer: nn.Module,
    calibration: Calibration,
    accumulate: Callable[[torch.Tensor], None],
) -> int:
    """Run every calibration batch up to `layer` and pass its input rows [rows, in] to
    `accumulate`; returns the number of rows seen (ValueError if none)."""
    seen = 0

    def hook(module: nn.Module, args: tuple) -> None:
        nonlocal seen
        rows = layer_rows(module, args[0])
        seen += rows.shape[0]
        accumulate(rows)
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for batch in calibration:
                try:
                    _call(model, batch)
                except _Stop:
                    pass
    finally:
        handle.remove()
    if seen == 0:
        raise ValueError(
            f"layer {name!r}: expected the calibration batches to reach it, but it saw no inputs "
            "(an empty calibration set, or a layer the forward pass never calls)"
        )
    return seen


def input_groups(model: nn.Module, layers: dict[str, nn.Module], calibration: Calibration) -> list[list[str]]:
    """The layers' names in module order, grouped: consecutive layers whose input was the
    same tensor in a probing pass of the first calibration batch share a group. Layers
    the pass never reaches are groups of their own (their calibration fails later)."""
    inputs: dict[str, torch.Tensor] = {}
    handles = [layer.register_forward_pre_hook(lambda module, args, name=name: inputs.setdefault(name, args[0]))
               for name, layer in layers.items()]
    try:
        with torch.no_grad():
            for batch in calibration:
                _call(model, batch)
                break
    finally:
        for handle in handles:
            handle.remove()
    groups: list[list[str]] = []
    for name in layers:
        previous = groups[-1][-1] if groups else None
        if previous is not None and name in inputs and inputs.get(previous) is inputs[name]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)
