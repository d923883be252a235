"""Sign-preserving constant re-initialisation of a pruned network.

Zhou et al. (2019, "Deconstructing lottery tickets") show that a pruned
network's surviving weights can be reset to a per-layer constant magnitude
keeping only their initial signs ("signed constant") and still train as well
as the ticket. For each chosen layer:

    W <- where(kept, sign(W0) * c, 0)

kept: the layer's mask if it has one, else its nonzero entries; W0: the
initial weights (by default the layer's current weights, e.g. just after a
lottery-ticket rewind); c: the given constant, or the standard deviation
(population, correction 0) of W0 over the kept entries. Entries with W0 = 0
have sign 0 and so stay 0.
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_rt.pruning.masks import (
    LayerFilter,
    from_matrix,
    layer_mask,
    require_layers,
    trainable_weight,
    weight_matrix,
)


def sign_constant_reinit(
    model: nn.Module,
    initial_weights: dict[str, torch.Tensor] | None = None,
    constant: float | None = None,
    filter_fn: LayerFilter | None = None,
) -> dict[str, float]:
    """Reset the kept weights of the chosen layers to ±c with the signs of `initial_weights`.

    initial_weights: {layer name: [out, in]} for every chosen layer, or None to use
    the current weights. constant: c for every layer, or None for the per-layer
    std of the kept initial weights. Returns {layer name: c used}.
    """
    if constant is not None and constant < 0:
        raise ValueError(f"sign_constant_reinit constant: expected >= 0, got {constant}")
    layers = require_layers(model, filter_fn, "sign-constant re-initialisation")
    constants = {}
    for name, layer in layers.items():
        current = weight_matrix(layer)
        initial = current if initial_weights is None else initial_weights.get(name)
        if initial is None:
            raise ValueError(f"initial_weights: expected an entry for layer {name!r}, found none")
        if tuple(initial.shape) != tuple(current.shape):
            raise ValueError(
                f"initial_weights[{name!r}]: expected shape {list(current.shape)}, got {list(initial.shape)}"
            )
        mask = layer_mask(layer)
        kept = current != 0 if mask is None else mask
        initial = initial.to(current.device, current.dtype)
        if constant is not None:
            value = float(constant)
        elif kept.any():
            value = float(initial[kept].std(correction=0))
        else:
            value = 0.0
        weight = trainable_weight(layer)
        new = torch.where(kept, torch.sign(initial) * value, torch.zeros((), dtype=weight.dtype))
        with torch.no_grad():
            weight.copy_(from_matrix(layer, new))
        constants[name] = value
    return constants
