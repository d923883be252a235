"""Mask bookkeeping for pruned linear layers.

A mask is a bool tensor shaped like the layer's weight *matrix* [out, in]
(True = kept). It is attached with `torch.nn.utils.parametrize`: the layer's
`weight` becomes `where(mask, original, 0)`, computed from the trainable
`parametrizations.weight.original`. The pruned entries of `weight` are
therefore exactly zero in every forward pass, whatever the optimizer does to
`original` (momentum, weight decay), and their gradient is zero. The mask is a
buffer (`parametrizations.weight.0.mask`), so it is saved in `state_dict`.

Prunable layers are `nn.Linear` and `nn.Conv2d` with `groups=1`. A convolution's
weight [out, in, kh, kw] is viewed as the [out, kh * kw * in] matrix that conversion
lowers it to (`sparse_rt.converters.lowering`: Im2Col rows in kernel row, kernel column,
channel order; a 1x1 conv's is its [out, in] matrix), so block and N:M masks keep their
structure in the converted layer. `as_matrix` and `from_matrix` convert between the two.
`finalize(model)` bakes the zeros into plain `weight` parameters and removes the
parametrizations, leaving ordinary `nn.Linear` / `nn.Conv2d` modules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

LayerFilter = Callable[[nn.Module, str], bool]
"""Chooses layers to prune: `filter_fn(module, qualified_name) -> bool`."""


class WeightMask(nn.Module):
    """Parametrization `weight -> where(mask, weight, 0)`; `mask` is a bool buffer shaped like the weight."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def is_prunable(module: nn.Module) -> bool:
    """Whether `module` is a linear layer the pruners handle (nn.Linear, or nn.Conv2d with groups=1)."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1


def as_matrix(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like `layer`'s weight as its [out, in] matrix: a conv's [out, in, kh, kw]
    -> [out, kh * kw * in] (a copy where the order changes)."""
    if isinstance(layer, nn.Conv2d):
        tensor = tensor.permute(0, 2, 3, 1)
    return tensor.reshape(tensor.shape[0], -1)


def from_matrix(layer: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """The inverse of `as_matrix`: an [out, in] matrix shaped like `layer`'s weight."""
    if isinstance(layer, nn.Conv2d):
        out_channels, in_channels, kh, kw = layer.weight.shape
        return matrix.reshape(out_channels, kh, kw, in_channels).permute(0, 3, 1, 2).contiguous()
    return matrix.reshape(layer.weight.shape)


def prunable_layers(model: nn.Module, filter_fn: LayerFilter | None = None) -> dict[str, nn.Module]:
    """The prunable layers of `model` by qualified name (module order), restricted by `filter_fn`."""
    return {
        name: module
        for name, module in model.named_modules()
        if is_prunable(module) and (filter_fn is None or filter_fn(module, name))
    }


def require_layers(model: nn.Module, filter_fn: LayerFilter | None, what: str) -> dict[str, nn.Module]:
    """`prunable_layers`, raising ValueError (naming `what`) when none is chosen."""
    layers = prunable_layers(model, filter_fn)
    if not layers:
        raise ValueError(f"{what}: expected at least one nn.Linear or nn.Conv2d (groups=1) layer, found none")
    return layers


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's effective weight (masked if a mask is attached) as a detached [out, in] matrix."""
    return as_matrix(layer, layer.weight.detach())


def trainable_weight(layer: nn.Module) -> nn.Parameter:
    """The parameter the optimizer updates: `parametrizations.weight.original` if masked, else `weight`."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def layer_mask(layer: nn.Module) -> torch.Tensor | None:
    """The layer's [out, in] bool mask, or None if it has none."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    masks = [p.mask for p in layer.parametrizations.weight if isinstance(p, WeightMask)]
    if not masks:
        return None
    return as_matrix(layer, masks[0])


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Attach (or replace) the masks {layer name: bool [out, in]} and zero the pruned trainable weights."""
    for name, mask in masks.items():
        layer = model.get_submodule(name)
        if not is_prunable(layer):
            raise ValueError(
                f"layer {name!r}: expected nn.Linear or nn.Conv2d with groups=1, "
                f"got {type(layer).__name__}({layer.extra_repr()})"
            )
        weight = trainable_weight(layer)
        rows, cols = weight.shape[0], weight[0].numel()
        if tuple(mask.shape) != (rows, cols):
            raise ValueError(
                f"mask of layer {name!r}: expected shape [{rows}, {cols}], got {list(mask.shape)}"
            )
        if mask.dtype != torch.bool:
            raise ValueError(f"mask of layer {name!r}: expected dtype torch.bool, got {mask.dtype}")
        mask = from_matrix(layer, mask.to(weight.device))
        if parametrize.is_parametrized(layer, "weight"):
            chain = layer.parametrizations.weight
            if len(chain) != 1 or not isinstance(chain[0], WeightMask):
                raise ValueError(
                    f"layer {name!r}: expected its weight to carry only a WeightMask parametrization, "
                    f"found {[type(p).__name__ for p in chain]}"
                )
            chain[0].mask.copy_(mask)
        else:
            parametrize.register_parametrization(layer, "weight", WeightMask(mask))
        with torch.no_grad():
            trainable_weight(layer).masked_fill_(~mask, 0.0)


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks attached to `model`'s layers: {layer name: bool [out, in]} (copies)."""
    masks = {}
    for name, layer in model.named_modules():
        mask = layer_mask(layer) if is_prunable(layer) else None
        if mask is not None:
            masks[name] = mask.clone()
    return masks


def finalize(model: nn.Module) -> nn.Module:
    """Bake every mask into its layer's weight and remove the parametrizations; returns `model`.

    Afterwards the layers are plain nn.Linear / nn.Conv2d whose pruned weights are
    exact zeros, ready for conversion.
    """
    for layer in prunable_layers(model).values():
        if layer_mask(layer) is not None:
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return model


def densities(model: nn.Module, filter_fn: LayerFilter | None = None) -> dict[str, float]:
    """Fraction of nonzero entries of each prunable layer's effective weight."""
    result = {}
    for name, layer in prunable_layers(model, filter_fn).items():
        weight = weight_matrix(layer)
        result[name] = torch.count_nonzero(weight).item() / weight.numel()
    return result
