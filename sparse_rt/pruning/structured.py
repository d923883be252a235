"""Structured magnitude pruning whose output maps exactly onto a weight format.

Block pruning: the [out, in] weight is cut into r x c blocks (zero-padded up to
multiples of (r, c), as in BsrFormat) scored by their L2 norm; the lowest-scoring
blocks are pruned. Sparsity counts blocks, so a layer keeps exactly
`nblocks - round(sparsity * nblocks)` blocks and `BsrFormat.from_dense(W,
block_shape=(r, c))` of the result holds those blocks (all of them whose weights
are not all zero).

N:M pruning: each row is cut into groups of m consecutive inputs (the last group
zero-padded, as in NmFormat) and the n largest-magnitude weights of each group
are kept, so `NmFormat.from_dense(W, n=n, m=m)` of the result always fits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparse_rt.pruning.magnitude import select_top
from sparse_rt.pruning.masks import LayerFilter, apply_masks, layer_mask, require_layers, weight_matrix


def block_norms(weight: torch.Tensor, block_shape: tuple[int, int]) -> torch.Tensor:
    """L2 norm of each (r, c) block of a [out, in] matrix: [ceil(out/r), ceil(in/c)]."""
    r, c = _check_block_shape(block_shape)
    padded = _pad_to_blocks(weight.float(), r, c)
    rows, cols = padded.shape[0] // r, padded.shape[1] // c
    return padded.reshape(rows, r, cols, c).pow(2).sum(dim=(1, 3)).sqrt()


def block_masks(
    model: nn.Module,
    sparsity: float,
    block_shape: tuple[int, int],
    scope: str = "layer",
    filter_fn: LayerFilter | None = None,
) -> dict[str, torch.Tensor]:
    """Masks {layer name: bool [out, in]} keeping whole (r, c) blocks of largest L2 norm.

    Blocks whose entries are all pruned already score -inf, so they stay pruned.
    scope is "layer" (each layer keeps its share of blocks) or "global".
    """
    r, c = _check_block_shape(block_shape)
    layers = require_layers(model, filter_fn, "block pruning")
    scores = {}
    for name, layer in layers.items():
        score = block_norms(weight_matrix(layer), (r, c))
        mask = layer_mask(layer)
        if mask is not None:
            alive = (
                _pad_to_blocks(mask, r, c).reshape(score.shape[0], r, score.shape[1], c).any(dim=3).any(dim=1)
            )
            score = score.masked_fill(~alive, float("-inf"))
        scores[name] = score
    kept_blocks = select_top(scores, sparsity, scope)
    masks = {}
    for name, layer in layers.items():
        out_features, in_features = weight_matrix(layer).shape
        expanded = kept_blocks[name].repeat_interleave(r, dim=0).repeat_interleave(c, dim=1)
        masks[name] = expanded[:out_features, :in_features].contiguous()
    return masks


def block_prune(
    model: nn.Module,
    sparsity: float,
    block_shape: tuple[int, int],
    scope: str = "layer",
    filter_fn: LayerFilter | None = None,
) -> dict[str, torch.Tensor]:
    """Block-prune `model` in place; returns the masks it attached (see `block_masks`)."""
    masks = block_masks(model, sparsity, block_shape, scope, filter_fn)
    apply_masks(model, masks)
    return masks


def nm_masks(
    model: nn.Module, n: int = 2, m: int = 4, filter_fn: LayerFilter | None = None
) -> dict[str, torch.Tensor]:
    """Masks {layer name: bool [out, in]} keeping the n largest |W| of every group of m inputs per row.

    Entries already pruned score -inf, so they are chosen only when a group has
    fewer than n surviving weights (their weights are zero, which NmFormat allows).
    """
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n <= m):
        raise ValueError(f"N:M pruning: expected integers 1 <= n <= m, got n={n!r}, m={m!r}")
    masks = {}
    for name, layer in require_layers(model, filter_fn, "N:M pruning").items():
        weight = weight_matrix(layer)
        out_features, in_features = weight.shape
        score = weight.abs().float()
        mask = layer_mask(layer)
        if mask is not None:
            score = score.masked_fill(~mask, float("-inf"))
        groups = -(-in_features // m)
        score = F.pad(score, (0, groups * m - in_features), value=float("-inf")).reshape(
            out_features, groups, m
        )
        kept = torch.zeros(score.shape, dtype=torch.bool, device=score.device)
        kept.scatter_(2, torch.topk(score, n, dim=2).indices, True)
        masks[name] = kept.reshape(out_features, groups * m)[:, :in_features].contiguous()
    return masks


def nm_prune(
    model: nn.Module, n: int = 2, m: int = 4, filter_fn: LayerFilter | None = None
) -> dict[str, torch.Tensor]:
    """N:M-prune `model` in place; returns the masks it attached (see `nm_masks`)."""
    masks = nm_masks(model, n, m, filter_fn)
    apply_masks(model, masks)
    return masks


def _check_block_shape(block_shape: tuple[int, int]) -> tuple[int, int]:
    if not (
        len(tuple(block_shape)) == 2 and all(isinstance(side, int) and side >= 1 for side in block_shape)
    ):
        raise ValueError(f"block_shape: expected two positive integers (r, c), got {block_shape!r}")
    return tuple(block_shape)


def _pad_to_blocks(matrix: torch.Tensor, r: int, c: int) -> torch.Tensor:
    rows, cols = matrix.shape
    return F.pad(matrix, (0, (-cols) % c, 0, (-rows) % r))
