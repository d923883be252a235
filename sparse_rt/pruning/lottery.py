"""Lottery tickets: iterative magnitude pruning with weight rewinding.

Frankle & Carbin (2019) rewind the surviving weights to their initial values;
Frankle et al. (2020) rewind to their values after k training steps, which is
what makes tickets work on larger models. The loop is

    ticket = LotteryTicket(model)
    ticket.set_rewind_point()          # at init, or after k optimizer steps
    for sparsity in imp_sparsities(0.9, rounds=3):
        train(model)                   # with a fresh optimizer
        ticket.prune_and_rewind(sparsity)
    train(model)                       # the ticket

Rewinding restores every parameter and buffer of the model (biases and
normalisation statistics too, masks excepted) to the rewind point; pruned
weights stay zero. Optimizer state is not part of the model: build a new
optimizer after each rewind.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparse_rt.pruning.magnitude import SCOPES, check_sparsity, magnitude_masks
from sparse_rt.pruning.masks import LayerFilter, apply_masks, get_masks, require_layers


def imp_sparsities(final_sparsity: float, rounds: int) -> list[float]:
    """Sparsity after each round when every round prunes the same fraction of the surviving weights."""
    check_sparsity(final_sparsity)
    if rounds < 1:
        raise ValueError(f"rounds: expected >= 1, got {rounds}")
    return [1.0 - (1.0 - final_sparsity) ** ((k + 1) / rounds) for k in range(rounds)]


class LotteryTicket:
    """Iterative magnitude pruning of `model`'s chosen layers with rewinding to a saved point."""

    def __init__(self, model: nn.Module, scope: str = "layer", filter_fn: LayerFilter | None = None):
        if scope not in SCOPES:
            raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
        require_layers(model, filter_fn, "lottery ticket pruning")
        self.model = model
        self.scope = scope
        self.filter_fn = filter_fn
        self.rewind_state: dict[str, torch.Tensor] | None = None

    def set_rewind_point(self) -> None:
        """Remember the model's current parameters and buffers as the values to rewind to."""
        self.rewind_state = {
            name: tensor.detach().clone() for name, tensor in rewindable_tensors(self.model).items()
        }

    def prune_and_rewind(self, sparsity: float) -> dict[str, torch.Tensor]:
        """Prune to `sparsity` by magnitude of the trained weights, then rewind; returns the masks.

        Weights pruned in earlier rounds stay pruned (the sparsity must not decrease).
        """
        if self.rewind_state is None:
            raise ValueError(
                "lottery ticket: expected set_rewind_point() before prune_and_rewind(), found none"
            )
        masks = magnitude_masks(self.model, check_sparsity(sparsity), self.scope, self.filter_fn)
        apply_masks(self.model, masks)
        self.rewind()
        return masks

    def rewind(self) -> None:
        """Restore the rewind point, keeping the current masks (pruned weights stay zero)."""
        if self.rewind_state is None:
            raise ValueError("lottery ticket: expected set_rewind_point() before rewind(), found none")
        live = rewindable_tensors(self.model)
        if live.keys() != self.rewind_state.keys():
            raise ValueError(
                "lottery ticket: the model's tensors changed since set_rewind_point(): "
                f"missing {sorted(self.rewind_state.keys() - live.keys())}, "
                f"new {sorted(live.keys() - self.rewind_state.keys())}"
            )
        with torch.no_grad():
            for name, tensor in live.items():
                tensor.copy_(self.rewind_state[name])
        apply_masks(self.model, get_masks(self.model))


def rewindable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers by their unmasked names, masks left out.

    A masked layer's trainable weight (`parametrizations.weight.original`) is
    listed as `<layer>.weight`, so names are the same before and after pruning.
    """
    tensors = {}
    for prefix, module in model.named_modules():
        if "parametrizations" in prefix.split("."):
            continue
        base = f"{prefix}." if prefix else ""
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            tensors[base + name] = tensor
        if parametrize.is_parametrized(module):
            for name, chain in module.parametrizations.items():
                tensors[base + name] = chain.original
    return tensors
