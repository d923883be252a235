"""Deterministic, timing-free choice of format and kernel for a linear layer.

The thresholds come from benchmarks/layers.py on the development machine (2 AVX2
cores): below them the sparse kernel beats the dense one at every batch size
measured, above them dense wins or ties.
"""

from __future__ import annotations

import torch

from sparse_rt.converters.lowering import Choice, LinearLayer
from sparse_rt.formats import get_format
from sparse_rt.kernels.registry import kernels_for

# Unstructured: CSR beats dense below this density (batch 1..32).
CSR_MAX_DENSITY = 0.30
# Block-sparse: use BSR when the kept blocks hold at most this share of the matrix
# and pad it with at most this many explicit zeros per nonzero.
BSR_MAX_BLOCK_DENSITY = 0.35
BSR_MAX_FILL_OVERHEAD = 1.25
BSR_BLOCK_SHAPES = ((32, 32), (16, 16), (8, 8), (4, 4), (1, 8), (8, 1), (1, 4), (4, 1))


def heuristic_format(weight: torch.Tensor) -> tuple[str, dict]:
    """(format name, from_dense params) for a dense [out, in] float weight."""
    nonzero = weight != 0
    nnz = int(nonzero.sum())
    density = nnz / max(weight.numel(), 1)
    if nnz == 0:
        return "csr", {}
    for r, c in BSR_BLOCK_SHAPES:
        kept = _kept_blocks(nonzero, r, c)
        stored = kept * r * c
        if stored / weight.numel() <= BSR_MAX_BLOCK_DENSITY and stored <= BSR_MAX_FILL_OVERHEAD * nnz:
            return "bsr", {"block_shape": (r, c)}
    if density <= CSR_MAX_DENSITY:
        return "csr", {}
    return "dense", {}


def _kept_blocks(nonzero: torch.Tensor, r: int, c: int) -> int:
    out, inp = nonzero.shape
    padded = torch.zeros((-(-out // r)) * r, (-(-inp // c)) * c, dtype=torch.bool)
    padded[:out, :inp] = nonzero
    blocks = padded.reshape(padded.shape[0] // r, r, padded.shape[1] // c, c)
    return int(blocks.any(dim=3).any(dim=1).sum())


def heuristic_choice(layer: LinearLayer, device: torch.device) -> Choice:
    """Format by `heuristic_format`, then the first kernel and default config for the device."""
    weight = torch.from_numpy(layer.weight)
    name, params = heuristic_format(weight)
    fmt = get_format(name).from_dense(weight, **params)
    kernels = kernels_for(fmt, device)
    if not kernels:
        fmt = get_format("dense").from_dense(weight)
        kernels = kernels_for(fmt, device)
    kernel = kernels[0]
    return Choice(fmt, kernel.name, kernel.configs(fmt, device)[0])
