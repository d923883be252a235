"""Rounding a layer's weights to int8 against the inputs it sees: GPTQ with a fixed sparsity,
and the bias that cancels the rounding's mean output error.

Round-to-nearest makes each weight's error as small as it can be, but the layer's output
error is what counts: y = x W^T summed over inputs that are correlated. GPTQ (Frantar et
al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
2023) rounds the columns of W left to right and spreads each column's rounding error over
the columns not yet rounded, through the upper Cholesky factor of H^-1, H = X^T X the
Hessian of ||X W^T - X Q^T||^2 over calibration inputs X [rows, in] (the same machinery as
SparseGPT's, `pruning.sparsegpt`). Here the grid is sparse_rt's per-channel symmetric int8
(scale = max |W[r]| / 127, as `formats.int8.quantize_per_channel`) and the sparsity is
fixed: zeros of W stay zero, only the kept weights take the updates.

On the bench's BERT-base-shaped model at 90% (int8 weights and activations, as torch
arithmetic, 256 inputs), three sets of 8 random calibration sequences brought the mean
relative error of the mean-pooled output from 6.9e-3 (rounding to nearest) to 4.8e-3,
5.6e-3 and 5.8e-3, and its signs' agreement from 99.75% to 99.83-99.85%. The pooled
argmax, which a handful of near-ties (top two within 0.5%) decides, moved on 4, 0 and 8
of the 256 inputs, against 4 with rounding to nearest.

Most of the output error is not noise but an offset: each weight's rounding error is fixed,
so the output error (Q - W) x has the mean (Q - W) E[x] over every token, which averaging
over a sequence keeps while the token-to-token part cancels. With the mean pooled output,
6.7e-3 of the 6.8e-3 relative error was this offset (int8 weights alone). Subtracting it
from the bias (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", 2019), with E[x] the mean of the layer's inputs on the calibration feeds,
leaves 9e-4 (`corrected_bias`).
"""

from __future__ import annotations

import torch

from sparse_rt.formats.int8 import QMAX, round_per_channel
from sparse_rt.pruning.sparsegpt import inverse_hessian_factor, obs_column_step

# Added to H's diagonal as a fraction of its mean (as SparseGPT and GPTQ do).
DAMP = 0.01
# Columns rounded together before their errors reach the later columns as one product.
BLOCK_SIZE = 128


def corrected_bias(weight: torch.Tensor, rounded: torch.Tensor, bias: torch.Tensor | None,
                   inputs: torch.Tensor) -> torch.Tensor:
    """The bias [out] under which the rounded weight's outputs keep the float weight's mean over
    the calibration inputs: b - (rounded - W) mean(X). weight, rounded float [out, in] (rounded:
    the dequantized int8 weight), bias [out] or None (zeros), inputs X float [rows, in] (no rows:
    no correction). ValueError for inputs that do not match or are not finite."""
    inputs = torch.as_tensor(inputs).to(torch.float64)
    if inputs.dim() != 2 or inputs.shape[1] != weight.shape[1]:
        raise ValueError(f"corrected_bias: expected inputs [rows, {weight.shape[1]}], got {list(inputs.shape)}")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("corrected_bias: inputs hold NaN or Inf")
    mean = inputs.mean(dim=0) if inputs.shape[0] else torch.zeros(inputs.shape[1], dtype=torch.float64)
    shift = (torch.as_tensor(rounded).to(torch.float64) - torch.as_tensor(weight).to(torch.float64)) @ mean
    base = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else bias.to(torch.float64)
    return (base - shift).to(torch.float32)


def gptq_round(weight: torch.Tensor, inputs: torch.Tensor, damp: float = DAMP,
               block_size: int = BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """W float [out, in], calibration inputs X float [rows, in] -> (q int8 [out, in], scales
    float32 [out]) with W ~= q * scales[:, None], q zero wherever W is.

    ValueError for shapes that disagree or values that are not finite."""
    weight = torch.as_tensor(weight).to(torch.float32)
    inputs = torch.as_tensor(inputs).to(torch.float32)
    if weight.dim() != 2 or inputs.dim() != 2 or inputs.shape[1] != weight.shape[1]:
        raise ValueError(f"gptq_round: expected weight [out, in] and inputs [rows, in], got "
                         f"{list(weight.shape)} and {list(inputs.shape)}")
    for name, tensor in (("weight", weight), ("inputs", inputs)):
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"gptq_round: {name} holds NaN or Inf")
    out_features, in_features = weight.shape
    scales = weight.abs().amax(dim=1) / QMAX if in_features else torch.zeros(out_features)
    if out_features == 0 or in_features == 0 or inputs.shape[0] == 0:
        return round_per_channel(weight, scales), scales.contiguous()
    step = torch.where(scales > 0, scales, torch.ones_like(scales))
    keep = weight != 0
    hessian = inputs.to(torch.float64).T @ inputs.to(torch.float64)
    factor = inverse_hessian_factor(hessian, damp)[0].to(torch.float32)
    work = weight.clone()
    for start in range(0, in_features, block_size):
        stop = min(start + block_size, in_features)
        block = work[:, start:stop].clone()
        errors = torch.empty_like(block)
        inverse = factor[start:stop, start:stop]
        for column in range(stop - start):
            w = block[:, column]
            q = torch.where(keep[:, start + column], (w / step).round().clamp(-QMAX, QMAX) * step, torch.zeros(()))
            obs_column_step(block, errors, inverse, column, q)
        work[:, start:stop] = block
        work[:, stop:] -= errors @ factor[start:stop, stop:]
    return round_per_channel(torch.where(keep, work, torch.zeros(())), scales), scales.contiguous()

