"""Wanda: one-shot pruning by |weight| times the norm of its input activation.

For a layer y = x W^T, weight W[i, j] scores |W[i, j]| * ||X[:, j]||_2, where X
[rows, in] stacks the layer's calibration inputs (Sun et al., "A Simple and
Effective Pruning Approach for Large Language Models", 2023). Weights compete within
their output row: unstructured, each row keeps `in - round(sparsity * in)` weights;
N:M, each group of m consecutive inputs of a row keeps its n best (NmFormat's groups,
the last one zero-padded). No weight is updated, only masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparse_rt.pruning.calibration import Calibration, feed_layer_inputs, input_groups
from sparse_rt.pruning.magnitude import check_sparsity
from sparse_rt.pruning.masks import LayerFilter, apply_masks, layer_mask, require_layers, weight_matrix


def check_nm(nm: tuple[int, int] | None) -> tuple[int, int] | None:
    """`nm` as (n, m) after checking 1 <= n <= m, or None."""
    if nm is None:
        return None
    if not (len(tuple(nm)) == 2 and all(isinstance(v, int) for v in nm) and 1 <= nm[0] <= nm[1]):
        raise ValueError(f"nm: expected integers (n, m) with 1 <= n <= m, got {nm!r}")
    return tuple(nm)


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """|W| * ||X_j||: weight [out, in], input_norms [in] -> scores [out, in] (float32)."""
    return weight.abs().float() * input_norms.float()[None, :]


def row_masks(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the `in - round(sparsity * in)` highest scores of each row: bool [out, in]."""
    keep = scores.shape[1] - round(sparsity * scores.shape[1])
    kept = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if keep > 0:
        kept.scatter_(1, torch.topk(scores, keep, dim=1, sorted=False).indices, True)
    return kept


def group_masks(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n highest scores of each group of m consecutive inputs per row: bool [out, in]."""
    out_features, in_features = scores.shape
    groups = -(-in_features // m)
    padded = F.pad(scores, (0, groups * m - in_features), value=float("-inf")).reshape(out_features, groups, m)
    kept = torch.zeros(padded.shape, dtype=torch.bool, device=scores.device)
    kept.scatter_(2, torch.topk(padded, n, dim=2).indices, True)
    return kept.reshape(out_features, groups * m)[:, :in_features].contiguous()


def wanda_prune(
    model: nn.Module,
    calibration: Calibration,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    filter_fn: LayerFilter | None = None,
) -> dict[str, torch.Tensor]:
    """Prune `model` in place with Wanda, layer by layer; returns {layer name: bool mask [out, in]}.

    calibration: batches for the model (see `pruning.calibration`); the batches are
    iterated once per layer, so pass a list, not a one-shot generator. sparsity: the
    fraction pruned per row (ignored when `nm` is given). nm: (n, m) to keep n of every
    m consecutive inputs instead. Entries already masked stay pruned.
    """
    sparsity = check_sparsity(sparsity)
    nm = check_nm(nm)
    layers = require_layers(model, filter_fn, "Wanda pruning")
    masks = {}
    for group in input_groups(model, layers, calibration):
        in_features = weight_matrix(layers[group[0]]).shape[1]
        squares = torch.zeros(in_features, dtype=torch.float64)

        def accumulate(rows: torch.Tensor) -> None:  # rows: [rows, in]
            squares.add_(rows.double().pow(2).sum(dim=0).cpu())

        feed_layer_inputs(model, group[0], layers[group[0]], calibration, accumulate)
        for name in group:
            layer = layers[name]
            scores = wanda_scores(weight_matrix(layer).cpu(), squares.sqrt())
            previous = layer_mask(layer)
            if previous is not None:
                scores = scores.masked_fill(~previous.cpu(), float("-inf"))
            masks[name] = group_masks(scores, *nm) if nm else row_masks(scores, sparsity)
            apply_masks(model, {name: masks[name]})
    return masks
