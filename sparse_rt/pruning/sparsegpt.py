"""SparseGPT: one-shot pruning with optimal-brain-surgeon weight reconstruction.

For a layer y = x W^T with calibration inputs X [rows, in], the Hessian of the
layer-wise squared error ||X W^T - X W'^T||^2 is H = 2 X^T X [in, in]
(Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned
in One-Shot", 2023). Columns are visited left to right in blocks of `block_size`:
within a block the mask is chosen by w^2 / [H^-1]_jj^2 (unstructured: the lowest
`round(sparsity * numel)` of the block over all rows; N:M: the m - n lowest of each
group of m columns per row), and each pruned column's error is spread over the
columns not yet visited through the upper Cholesky factor of H^-1. Pruned weights
are exactly zero and the kept ones are updated. Only one layer's Hessian is alive at
a time (see `pruning.calibration`): the layers of a group that share their input share it.
"""

from __future__ import annotations

import torch
from torch import nn

from sparse_rt.pruning.calibration import Calibration, feed_layer_inputs, input_groups
from sparse_rt.pruning.magnitude import check_sparsity
from sparse_rt.pruning.masks import LayerFilter, apply_masks, layer_mask, require_layers, trainable_weight
from sparse_rt.pruning.masks import from_matrix, weight_matrix
from sparse_rt.pruning.wanda import check_nm


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(upper Cholesky factor of (H + damp * mean(diag H) * I)^-1 [in, in], dead inputs bool [in]).

    Inputs that were always zero (diag H == 0) get a unit diagonal; their weights are pruned.
    """
    hessian = hessian.clone()
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1.0
    diagonal = torch.diagonal(hessian)
    diagonal += damp * diagonal.mean()
    for attempt in range(4):  # raise the damping if H is numerically indefinite
        factor, info = torch.linalg.cholesky_ex(hessian)
        if int(info) == 0:
            break
        diagonal += damp * (10.0 ** (attempt + 1)) * diagonal.mean()
    else:
        raise ValueError("SparseGPT: the layer's Hessian is not positive definite even with damping")
    inverse = torch.cholesky_inverse(factor)
    return torch.linalg.cholesky(inverse, upper=True), dead


def obs_column_step(block: torch.Tensor, errors: torch.Tensor, inverse: torch.Tensor, column: int,
                    q: torch.Tensor) -> None:
    """One optimal-brain-surgeon step within a block of columns [out, width]: column `column`
    becomes q [out], and its error, scaled by the inverse Hessian factor's diagonal, goes to
    errors[:, column] and is spread over the block's later columns through `inverse` (the
    factor's [width, width] block)."""
    error = (block[:, column] - q) / inverse[column, column]
    block[:, column:] -= error[:, None] * inverse[column, column:][None, :]
    block[:, column] = q
    errors[:, column] = error


def sparsegpt_reconstruct(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    pruned: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune and reconstruct one weight: weight [out, in], hessian [in, in] ->
    (new weight [out, in] with exact zeros, kept mask bool [out, in]).

    pruned: bool [out, in] of entries that must be pruned (a mask from before); they
    are chosen first. With nm, groups of m run along the inputs and `block_size` is
    rounded up to a multiple of m.
    """
    out_features, in_features = weight.shape
    if hessian.shape != (in_features, in_features):
        raise ValueError(f"hessian: expected [{in_features}, {in_features}], got {list(hessian.shape)}")
    W = weight.double().clone()
    factor, dead = inverse_hessian_factor(hessian.double(), damp)
    W[:, dead] = 0.0
    forced = torch.zeros(W.shape, dtype=torch.bool) if pruned is None else pruned.cpu().clone()
    forced[:, dead] = True
    if nm is not None:
        block_size = -(-block_size // nm[1]) * nm[1]
    removed = torch.zeros(W.shape, dtype=torch.bool)
    for start in range(0, in_features, block_size):
        stop = min(start + block_size, in_features)
        block = W[:, start:stop].clone()  # [out, width]
        errors = torch.zeros_like(block)
        inv = factor[start:stop, start:stop]
        saliency = block.pow(2) / torch.diagonal(inv).pow(2)[None, :]
        saliency[forced[:, start:stop]] = -1.0
        if nm is None:
            count = round(sparsity * saliency.numel())
            drop = torch.zeros(saliency.shape, dtype=torch.bool)
            if count:
                drop.view(-1)[torch.topk(saliency.flatten(), count, largest=False).indices] = True
            drop |= forced[:, start:stop]
        else:
            drop = torch.zeros(saliency.shape, dtype=torch.bool)
        for column in range(stop - start):
            if nm is not None and column % nm[1] == 0:
                n, m = nm
                group = block[:, column:column + m].pow(2) / torch.diagonal(inv)[column:column + m].pow(2)[None, :]
                group[forced[:, start + column:start + column + m]] = -1.0
                width = group.shape[1]
                if width > n:
                    lowest = torch.topk(group, width - n, dim=1, largest=False).indices
                    drop[:, column:column + width].scatter_(1, lowest, True)
                drop[:, column:column + width] |= forced[:, start + column:start + column + width]
            w = block[:, column]
            obs_column_step(block, errors, inv, column, torch.where(drop[:, column], torch.zeros((), dtype=w.dtype), w))
        W[:, start:stop] = block
        W[:, stop:] -= errors @ factor[start:stop, stop:]
        removed[:, start:stop] = drop
    W[removed] = 0.0
    return W.to(weight.dtype), ~removed


def sparsegpt_prune(
    model: nn.Module,
    calibration: Calibration,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    filter_fn: LayerFilter | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> dict[str, torch.Tensor]:
    """Prune `model` in place with SparseGPT, layer by layer; returns {layer name: bool mask [out, in]}.

    calibration: batches for the model (iterated once per layer: pass a list).
    sparsity: fraction pruned (ignored when `nm` is given). nm: (n, m) keeps n of
    every m consecutive inputs per row. damp: added to H's diagonal as a fraction of
    its mean. The kept weights are updated; masks are attached as by `apply_masks`.
    """
    sparsity = check_sparsity(sparsity)
    nm = check_nm(nm)
    if block_size < 1:
        raise ValueError(f"block_size: expected a positive integer, got {block_size}")
    layers = require_layers(model, filter_fn, "SparseGPT pruning")
    masks = {}
    for group in input_groups(model, layers, calibration):
        in_features = weight_matrix(layers[group[0]]).shape[1]
        hessian = torch.zeros(in_features, in_features, dtype=torch.float64)

        def accumulate(rows: torch.Tensor) -> None:  # rows: [rows, in]
            rows = rows.double().cpu()
            hessian.add_(rows.T @ rows, alpha=2.0)

        seen = feed_layer_inputs(model, group[0], layers[group[0]], calibration, accumulate)
        hessian /= seen
        for name in group:
            layer = layers[name]
            previous = layer_mask(layer)
            weight, kept = sparsegpt_reconstruct(
                weight_matrix(layer).cpu(), hessian, sparsity, nm, block_size, damp,
                pruned=None if previous is None else ~previous.cpu(),
            )
            parameter = trainable_weight(layer)
            with torch.no_grad():
                parameter.copy_(from_matrix(layer, weight).to(parameter.device, parameter.dtype))
            masks[name] = kept
            apply_masks(model, {name: kept})
        del hessian
    return masks
