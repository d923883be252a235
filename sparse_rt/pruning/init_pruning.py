"""Pruning at initialisation: SNIP, GraSP and SynFlow masks at a target sparsity.

Each method scores every weight of the chosen layers before training and keeps
the best-scoring ones at `sparsity` with `magnitude.select_top` (scope "global"
by default, as in the papers, or "layer"). Weights already pruned (a mask is
attached) score -inf, so they stay pruned. Scores are taken with respect to the
trainable weight of a masked layer, so pruned entries score 0 before that.

- SNIP (Lee et al. 2019): |g ⊙ w|, g = dL/dw summed over the given batches.
- GraSP (Wang et al. 2020): S = -(H g) ⊙ w with H g by double back-propagation;
  the highest scores are pruned (their removal reduces the gradient flow least
  or increases it), so the lowest `1 - sparsity` fraction is kept.
- SynFlow (Tanaka et al. 2020): data-free. With every parameter and floating
  buffer replaced by its absolute value (float64), R = 1ᵀ f(1) for an all-ones
  input; score |dR/dw ⊙ w|. Pruning is iterative: `rounds` rounds whose
  sparsities follow the exponential schedule 1 - (1 - s)^(r/rounds).

Batches are `(inputs, targets)` pairs; the loss is `loss_fn(model(inputs), targets)`.
None of the functions leaves gradients, changed values or a changed mode on the
model; `*_prune` only attach masks (and zero the pruned trainable weights).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from sparse_rt.pruning.lottery import imp_sparsities
from sparse_rt.pruning.magnitude import SCOPES, check_sparsity, select_top
from sparse_rt.pruning.masks import (
    LayerFilter,
    apply_masks,
    as_matrix,
    layer_mask,
    require_layers,
    trainable_weight,
)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def snip_scores(
    model: nn.Module, batches: Batches, loss_fn: LossFn = F.cross_entropy, filter_fn: LayerFilter | None = None
) -> dict[str, torch.Tensor]:
    """SNIP connection sensitivity |g ⊙ w| per chosen layer: float32 [out, in].

    g is the gradient of the loss summed over `batches` (at least one).
    """
    layers = require_layers(model, filter_fn, "SNIP")
    weights = [trainable_weight(layer) for layer in layers.values()]
    gradients = _summed_gradients(model, batches, loss_fn, weights, "SNIP")
    return {
        name: as_matrix(layer, (gradient * weight.detach()).abs()).float()
        for (name, layer), weight, gradient in zip(layers.items(), weights, gradients)
    }


def grasp_scores(
    model: nn.Module,
    batches: Batches,
    loss_fn: LossFn = F.cross_entropy,
    temperature: float = 200.0,
    filter_fn: LayerFilter | None = None,
) -> dict[str, torch.Tensor]:
    """GraSP scores S = -(H g) ⊙ w per chosen layer: float32 [out, in] (high = prune first).

    The outputs are divided by `temperature` before the loss, as in the authors'
    code (200). g is the gradient summed over the batches; H g = sum over the
    batches of d(g_b · stop_gradient(g))/dw, the Hessian of the summed loss times g,
    where H and g are over the chosen layers' weights.
    """
    if temperature <= 0:
        raise ValueError(f"GraSP temperature: expected > 0, got {temperature}")
    layers = require_layers(model, filter_fn, "GraSP")
    weights = [trainable_weight(layer) for layer in layers.values()]
    batches = list(batches)

    def tempered(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss_fn(outputs / temperature, targets)

    gradient = [g.detach() for g in _summed_gradients(model, batches, tempered, weights, "GraSP")]
    hessian_gradient = [torch.zeros_like(w) for w in weights]
    for inputs, targets in batches:
        loss = tempered(model(inputs), targets)
        batch_gradient = torch.autograd.grad(loss, weights, create_graph=True)
        inner = sum((g_b * g).sum() for g_b, g in zip(batch_gradient, gradient))
        for total, part in zip(hessian_gradient, torch.autograd.grad(inner, weights)):
            total.add_(part)
    return {
        name: as_matrix(layer, -hg * weight.detach()).float()
        for (name, layer), weight, hg in zip(layers.items(), weights, hessian_gradient)
    }


def synflow_scores(
    model: nn.Module, input_shape: tuple[int, ...], filter_fn: LayerFilter | None = None
) -> dict[str, torch.Tensor]:
    """SynFlow scores |dR/dw ⊙ w| per chosen layer: float64 [out, in], computed without data.

    R = sum of the outputs of the model with |parameters| and |floating buffers|
    (in float64, eval mode) on one all-ones input of shape [1, *input_shape].
    The model itself is not modified (its values, dtype and train/eval mode stay).
    """
    layers = require_layers(model, filter_fn, "SynFlow")
    names = {id(trainable_weight(layer)): name for name, layer in layers.items()}
    parameters = {key: p.detach().abs().double().requires_grad_() for key, p in model.named_parameters()}
    buffers = {
        key: b.detach().abs().double() if b.is_floating_point() else b for key, b in model.named_buffers()
    }
    chosen = {key: names[id(p)] for key, p in model.named_parameters() if id(p) in names}
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        ones = torch.ones((1, *input_shape), dtype=torch.float64, device=next(iter(parameters.values())).device)
        flow = functional_call(model, {**parameters, **buffers}, (ones,)).sum()
        gradients = torch.autograd.grad(flow, [parameters[key] for key in chosen])
    finally:
        for module, training in modes.items():
            module.training = training
    scores = {}
    for (key, name), gradient in zip(chosen.items(), gradients):
        scores[name] = as_matrix(layers[name], (gradient * parameters[key].detach()).abs())
    return {name: scores[name] for name in layers}


def snip_prune(
    model: nn.Module,
    batches: Batches,
    sparsity: float,
    scope: str = "global",
    loss_fn: LossFn = F.cross_entropy,
    filter_fn: LayerFilter | None = None,
) -> dict[str, torch.Tensor]:
    """Prune `model` in place to `sparsity` by SNIP (keep the highest |g ⊙ w|); returns the masks."""
    _check_scope(scope)
    scores = _exclude_pruned(model, snip_scores(model, batches, loss_fn, filter_fn))
    masks = select_top(scores, sparsity, scope)
    apply_masks(model, masks)
    return masks


def grasp_prune(
    model: nn.Module,
    batches: Batches,
    sparsity: float,
    scope: str = "global",
    loss_fn: LossFn = F.cross_entropy,
    temperature: float = 200.0,
    filter_fn: LayerFilter | None = None,
) -> dict[str, torch.Tensor]:
    """Prune `model` in place to `sparsity` by GraSP (remove the highest -(H g) ⊙ w); returns the masks."""
    _check_scope(scope)
    scores = grasp_scores(model, batches, loss_fn, temperature, filter_fn)
    masks = select_top(_exclude_pruned(model, {name: -score for name, score in scores.items()}), sparsity, scope)
    apply_masks(model, masks)
    return masks


def synflow_prune(
    model: nn.Module,
    input_shape: tuple[int, ...],
    sparsity: float,
    rounds: int = 100,
    scope: str = "global",
    filter_fn: LayerFilter | None = None,
) -> dict[str, torch.Tensor]:
    """Prune `model` in place to `sparsity` by iterative SynFlow, without data; returns the masks.

    Round r (1..rounds) rescores the model pruned so far and keeps the highest
    scores at sparsity 1 - (1 - sparsity)^(r/rounds). The surviving weights keep
    their original signed values.
    """
    _check_scope(scope)
    check_sparsity(sparsity)
    masks: dict[str, torch.Tensor] = {}
    for round_sparsity in imp_sparsities(sparsity, rounds):
        # log keeps the order of float64 scores that would underflow in select_top's float32
        scores = {name: score.log() for name, score in synflow_scores(model, input_shape, filter_fn).items()}
        masks = select_top(_exclude_pruned(model, scores), round_sparsity, scope)
        apply_masks(model, masks)
    return masks


def _summed_gradients(
    model: nn.Module, batches: Batches, loss_fn: LossFn, weights: list[torch.Tensor], method: str
) -> list[torch.Tensor]:
    total = [torch.zeros_like(w) for w in weights]
    count = 0
    for inputs, targets in batches:
        loss = loss_fn(model(inputs), targets)
        for running, gradient in zip(total, torch.autograd.grad(loss, weights)):
            running.add_(gradient)
        count += 1
    if count == 0:
        raise ValueError(f"{method}: expected at least one (inputs, targets) batch, got none")
    return total


def _exclude_pruned(model: nn.Module, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scores with the entries of already-pruned weights set to -inf."""
    result = {}
    for name, score in scores.items():
        mask = layer_mask(model.get_submodule(name))
        result[name] = score if mask is None else score.masked_fill(~mask, float("-inf"))
    return result


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
