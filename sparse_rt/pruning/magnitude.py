"""Unstructured magnitude pruning, layer-wise or global.

A weight's score is its magnitude |W| in the effective (already masked) weight;
entries pruned earlier score -inf, so while sparsity grows (gradual, iterative
pruning) a pruned weight stays pruned. The number kept is exact:
`numel - round(sparsity * numel)` per layer ("layer") or over all chosen layers
together ("global", which lets the layers' densities differ).
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_rt.pruning.masks import LayerFilter, apply_masks, layer_mask, require_layers, weight_matrix

SCOPES = ("layer", "global")


def check_sparsity(sparsity: float) -> float:
    """Return `sparsity` as a float after checking 0 <= sparsity <= 1."""
    if not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"sparsity: expected a fraction in [0, 1], got {sparsity}")
    return float(sparsity)


def select_top(
    scores: dict[str, torch.Tensor], sparsity: float, scope: str = "layer"
) -> dict[str, torch.Tensor]:
    """Keep the highest-scoring entries; returns a bool tensor shaped like each score tensor.

    scope "layer": each tensor keeps `numel - round(sparsity * numel)` entries.
    scope "global": all tensors together keep `total - round(sparsity * total)`.
    Ties are broken arbitrarily but the counts are exact.
    """
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
    if not scores:
        raise ValueError("select_top: expected at least one score tensor, got none")
    if scope == "layer":
        return {
            name: _top_mask(score.flatten(), _keep_count(score.numel(), sparsity)).reshape(score.shape)
            for name, score in scores.items()
        }
    flat = torch.cat([score.flatten().float() for score in scores.values()])
    kept = _top_mask(flat, _keep_count(flat.numel(), sparsity))
    pieces = kept.split([score.numel() for score in scores.values()])
    return {
        name: piece.reshape(score.shape) for (name, score), piece in zip(scores.items(), pieces, strict=True)
    }


def magnitude_scores(model: nn.Module, filter_fn: LayerFilter | None = None) -> dict[str, torch.Tensor]:
    """|W| per prunable layer as float32 [out, in], with already-pruned entries set to -inf."""
    scores = {}
    for name, layer in require_layers(model, filter_fn, "magnitude pruning").items():
        score = weight_matrix(layer).abs().float()
        mask = layer_mask(layer)
        if mask is not None:
            score = score.masked_fill(~mask, float("-inf"))
        scores[name] = score
    return scores


def magnitude_masks(
    model: nn.Module, sparsity: float, scope: str = "layer", filter_fn: LayerFilter | None = None
) -> dict[str, torch.Tensor]:
    """Masks {layer name: bool [out, in]} keeping the largest-magnitude weights at `sparsity`."""
    return select_top(magnitude_scores(model, filter_fn), sparsity, scope)


def magnitude_prune(
    model: nn.Module, sparsity: float, scope: str = "layer", filter_fn: LayerFilter | None = None
) -> dict[str, torch.Tensor]:
    """Prune `model` in place to `sparsity` by magnitude; returns the masks it attached."""
    masks = magnitude_masks(model, sparsity, scope, filter_fn)
    apply_masks(model, masks)
    return masks


def _keep_count(numel: int, sparsity: float) -> int:
    return numel - round(sparsity * numel)


def _top_mask(flat: torch.Tensor, keep: int) -> torch.Tensor:
    kept = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    if keep > 0:
        kept[torch.topk(flat, keep, sorted=False).indices] = True
    return kept
