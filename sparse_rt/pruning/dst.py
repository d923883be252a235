"""Dynamic sparse training: SET and RigL with ERK layer densities.

A model starts from random masks at a target sparsity and keeps that sparsity
through training while its connections move: every `update_interval` optimizer
steps until `end_step`, each layer drops the fraction alpha_t of its active
weights with the smallest |w| and regrows as many among the positions left
inactive after the drop (the just-dropped ones included, as in the RigL code):

- SET (Mocanu et al. 2018): at uniformly random positions.
- RigL (Evci et al. 2020): where |dL/dW| of the dense gradient is largest.

Regrown weights start at exactly zero (and their optimizer state is cleared when
an optimizer is given), so an update does not change the function the model
computes beyond removing the dropped weights. The drop fraction is
cosine-annealed, alpha_t = alpha / 2 * (1 + cos(pi t / end_step)). Every layer
keeps its number of active weights. Masks are WeightMask parametrizations
(`masks.apply_masks`), so pruned weights stay zero through optimizer steps.

    dst = RigL(model, sparsity=0.9, schedule=CosineDropSchedule(end_step=750), optimizer=optimizer)
    for inputs, targets in data:
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
        dst.step(lambda: loss_fn(model(inputs), targets))   # RigL needs the closure on update steps
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparse_rt.pruning.magnitude import check_sparsity
from sparse_rt.pruning.masks import (
    LayerFilter,
    apply_masks,
    as_matrix,
    from_matrix,
    layer_mask,
    require_layers,
    trainable_weight,
    weight_matrix,
)

DISTRIBUTIONS = ("erk", "uniform")


def erk_densities(shapes: dict[str, tuple[int, int]], density: float) -> dict[str, float]:
    """Erdős–Rényi(-Kernel) densities of layers shaped {name: (out, in)} at a global `density`.

    Layer l gets density eps * (n_in + n_out) / (n_in * n_out), with eps chosen so
    that sum_l density_l * numel_l = density * sum_l numel_l. A layer whose density
    would exceed 1 is made dense (1.0) and eps is solved again over the others,
    until none exceeds 1 (the procedure of the RigL code).
    """
    check_sparsity(density)
    if not shapes:
        raise ValueError("ERK: expected at least one layer shape, got none")
    numels = {name: out_features * in_features for name, (out_features, in_features) in shapes.items()}
    raw = {name: (out_features + in_features) / numels[name] for name, (out_features, in_features) in shapes.items()}
    target = density * sum(numels.values())
    dense: set[str] = set()
    while True:
        free = [name for name in shapes if name not in dense]
        budget = target - sum(numels[name] for name in dense)
        scale = budget / sum(raw[name] * numels[name] for name in free) if free else 0.0
        overfull = [name for name in free if raw[name] * scale > 1.0]
        if not overfull:
            return {name: 1.0 if name in dense else raw[name] * scale for name in shapes}
        dense.update(overfull)


def layer_keep_counts(
    shapes: dict[str, tuple[int, int]], sparsity: float, distribution: str = "erk"
) -> dict[str, int]:
    """Active weights per layer {name: count} for a global `sparsity`.

    "uniform": every layer keeps numel - round(sparsity * numel).
    "erk": the ERK densities, rounded by largest remainders so that the counts add
    up to exactly total - round(sparsity * total).
    """
    sparsity = check_sparsity(sparsity)
    numels = {name: out_features * in_features for name, (out_features, in_features) in shapes.items()}
    if distribution == "uniform":
        return {name: numel - round(sparsity * numel) for name, numel in numels.items()}
    if distribution != "erk":
        raise ValueError(f"distribution: expected one of {DISTRIBUTIONS}, got {distribution!r}")
    total = sum(numels.values())
    keep = total - round(sparsity * total)
    exact = {name: d * numels[name] for name, d in erk_densities(shapes, keep / total).items()}
    counts = {name: min(math.floor(value), numels[name]) for name, value in exact.items()}
    by_remainder = sorted(shapes, key=lambda name: exact[name] - counts[name], reverse=True)
    for name in by_remainder[: keep - sum(counts.values())]:
        counts[name] += 1
    return counts


def random_masks(
    shapes: dict[str, tuple[int, int]],
    sparsity: float,
    distribution: str = "erk",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Uniformly random bool masks {name: [out, in]} with `layer_keep_counts` active entries each."""
    masks = {}
    for name, count in layer_keep_counts(shapes, sparsity, distribution).items():
        out_features, in_features = shapes[name]
        mask = torch.zeros(out_features * in_features, dtype=torch.bool)
        mask[torch.randperm(mask.numel(), generator=generator)[:count]] = True
        masks[name] = mask.reshape(out_features, in_features)
    return masks


@dataclass(frozen=True)
class CosineDropSchedule:
    """When connections move and how many: alpha_t = alpha / 2 * (1 + cos(pi t / end_step)).

    Updates happen after optimizer steps t = update_interval, 2 * update_interval,
    ... while t < end_step; none from end_step on.
    """

    end_step: int
    drop_fraction: float = 0.3
    update_interval: int = 100

    def __post_init__(self):
        if not 0.0 < self.drop_fraction <= 1.0:
            raise ValueError(f"drop schedule: expected 0 < drop_fraction <= 1, got {self.drop_fraction}")
        if self.update_interval < 1:
            raise ValueError(f"drop schedule: expected update_interval >= 1, got {self.update_interval}")
        if self.end_step < 1:
            raise ValueError(f"drop schedule: expected end_step >= 1, got {self.end_step}")

    def fraction(self, step: int) -> float:
        """alpha_t: the fraction of each layer's active weights moved at step t (0 from end_step on)."""
        if step >= self.end_step:
            return 0.0
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * step / self.end_step))

    def is_update_step(self, step: int) -> bool:
        """Whether the masks are updated after `step` optimizer steps."""
        return 0 < step < self.end_step and step % self.update_interval == 0


class DynamicSparseTraining(ABC):
    """Random ERK (or uniform) masks at `sparsity`, moved along a CosineDropSchedule.

    Subclasses say where to regrow (`grow_scores`). Call `step()` right after
    every `optimizer.step()`. If `optimizer` is given, its per-parameter state
    tensors shaped like a weight (momentum, Adam moments) are zeroed at regrown
    positions.
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float,
        schedule: CosineDropSchedule,
        distribution: str = "erk",
        optimizer: torch.optim.Optimizer | None = None,
        filter_fn: LayerFilter | None = None,
        generator: torch.Generator | None = None,
    ):
        self.layers = require_layers(model, filter_fn, type(self).__name__)
        self.model = model
        self.schedule = schedule
        self.optimizer = optimizer
        self.generator = generator
        self.step_count = 0
        shapes = {name: tuple(weight_matrix(layer).shape) for name, layer in self.layers.items()}
        apply_masks(model, random_masks(shapes, sparsity, distribution, generator))

    def step(self, loss_closure: Callable[[], torch.Tensor] | None = None) -> bool:
        """Count one optimizer step; update the masks if the schedule says so (returns whether it did).

        loss_closure: recomputes the loss on the current batch (used by RigL).
        """
        self.step_count += 1
        if not self.schedule.is_update_step(self.step_count):
            return False
        self.update(self.schedule.fraction(self.step_count), loss_closure)
        return True

    def update(
        self, drop_fraction: float, loss_closure: Callable[[], torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        """Drop round(drop_fraction * active) smallest-|w| weights per layer and regrow as many.

        Returns the regrown positions {layer name: bool [out, in]}.
        """
        if not 0.0 <= drop_fraction <= 1.0:
            raise ValueError(f"{type(self).__name__} update: expected 0 <= drop_fraction <= 1, got {drop_fraction}")
        grow_scores = self.grow_scores(loss_closure)
        grown_masks, masks = {}, {}
        for name, layer in self.layers.items():
            mask = layer_mask(layer)
            active = int(mask.sum())
            moved = round(drop_fraction * active)
            magnitude = weight_matrix(layer).abs().masked_fill(~mask, float("-inf"))
            kept = _top(magnitude, active - moved)
            grown = _top(grow_scores[name].masked_fill(kept, float("-inf")), moved)
            masks[name] = kept | grown
            grown_masks[name] = grown
        apply_masks(self.model, masks)
        with torch.no_grad():
            for name, layer in self.layers.items():
                weight = trainable_weight(layer)
                grown = from_matrix(layer, grown_masks[name])
                weight.masked_fill_(grown, 0.0)
                self._clear_optimizer_state(weight, grown)
        return grown_masks

    @abstractmethod
    def grow_scores(self, loss_closure: Callable[[], torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Scores [out, in] per layer; the highest inactive positions are regrown."""

    def _clear_optimizer_state(self, weight: torch.Tensor, positions: torch.Tensor) -> None:
        if self.optimizer is None:
            return
        for value in self.optimizer.state.get(weight, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                value.masked_fill_(positions, 0.0)


class SET(DynamicSparseTraining):
    """Sparse Evolutionary Training: regrow at uniformly random inactive positions."""

    def grow_scores(self, loss_closure: Callable[[], torch.Tensor] | None) -> dict[str, torch.Tensor]:
        return {
            name: torch.rand(weight_matrix(layer).shape, generator=self.generator)
            for name, layer in self.layers.items()
        }


class RigL(DynamicSparseTraining):
    """Rigged Lottery: regrow where the dense gradient |dL/dW| is largest.

    The dense gradient is that of `loss_closure()` with respect to the effective
    weight W (pruned entries included), computed without touching `.grad`.
    """

    def grow_scores(self, loss_closure: Callable[[], torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if loss_closure is None:
            raise ValueError("RigL update: expected a loss_closure to compute the dense gradient, got None")
        gradients = dense_gradients(self.model, self.layers, loss_closure)
        return {name: gradient.abs() for name, gradient in gradients.items()}


def dense_gradients(
    model: nn.Module, layers: dict[str, nn.Module], loss_closure: Callable[[], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """dL/dW at every position of each masked layer's effective weight: {name: [out, in]}.

    Under `parametrize.cached()` each layer's masked weight is computed once and
    reused by the forward pass, so the gradient with respect to that tensor is the
    gradient of the dense weight.
    """
    with parametrize.cached():
        weights = [layer.weight for layer in layers.values()]
        gradients = torch.autograd.grad(loss_closure(), weights)
    return {name: as_matrix(layer, g) for (name, layer), g in zip(layers.items(), gradients)}


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Bool tensor shaped like `scores` marking its `count` highest entries."""
    chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        chosen[torch.topk(scores.flatten(), count, sorted=False).indices] = True
    return chosen.reshape(scores.shape)
