"""Timing-free choice of format, kernel and config for a CPU linear layer.

`pick_cpu_kernel(W, batch)` prices every lossless candidate with a cost model fitted
to measurements and takes the cheapest. A candidate streams `stored` weights: every
entry for dense, the nonzeros for CSR, the entries of kept blocks for BSR, the kept
values (zero fill included) for N:M; bitmask is priced per dense entry (its kernels expand
every chunk of columns, whatever its bits). Its modelled time per call is

    batch 1:  fixed_1 + stored x per_weight_1
    batched:  fixed_n + stored x (per_weight_n + per_weight_lane x lanes)

with lanes = batch for dense and batch rounded up to the SIMD width for the sparse
kernels (their batch tiles are whole registers). The coefficients are least-squares
fits (relative error) to benchmarks/layers.py medians on the development machine
class: 2 cores, 2 threads, kernels built for AVX-512; 768x3072 and 3072x768 layers at
50/30/20/10/5 % density, batch 1, 8 and 32. The fits are within 10-30 % of the
measurements, enough to rank formats that differ by more.

What the measurements (and so the model) say:

- CSR against dense at batch 1 wins up to about 70 % nonzeros (CSR_MAX_DENSITY): its
  6 bytes per nonzero (value + int16 index) against 4 per dense weight, both streamed;
- batched, dense GEMM is compute-efficient and CSR's crossover drops to about 28 % at
  batch 8 and 40 % at batch 32 (at 50 % CSR loses at every batch above 1);
- BSR beats CSR once its blocks are full enough; r x 1 and square blocks of 8 and
  more cost about a third to a half of a CSR nonzero per stored weight at batch 1,
  1 x c blocks more than a CSR nonzero (each output row is its own short block row);
- N:M (2:4 is 50 %) streams 5 bytes per kept value, but its batch-1 gather kernel takes about
  twice CSR's time with AVX2 (the same with AVX-512), so it is priced at twice CSR and CSR
  takes N:M weights; batched N:M runs the CSR kernel.
- bitmask streams the fewest bytes above about 6 % density (4 * density + 1/8 per entry against
  CSR's 6 * density, N:M's 5 per kept value and dense's 4), but its AVX2
  kernel is bound by the expansion, about one 8-column chunk of a row per ns on one AMD EPYC
  (Zen 3) core whatever the density: 1.1-1.5x the native dense kernel's time at batch 1 on
  768x3072 and 3072x768 (weights in L3), 1.4-1.9x at batch 8 and 1.8x at batch 32
  (benchmarks/bitmask_gemv.py --threads 1, round-robin). So the model prices it above dense
  and the heuristic does not pick it; tuning times it like every candidate. The AVX-512 kernel
  (vexpandps, 16 columns a step) took about 0.8x the dense kernel's time at 50 % on an Intel
  Xeon VM whose figures moved 10-20 % between runs (benchmarks/results/bitmask_gemv.md); it
  is priced like AVX2 until a steadier host refits it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats import get_format
from sparse_rt.formats.base import WeightFormat, as_dense_weight
from sparse_rt.formats.bsr import count_kept_blocks
from sparse_rt.formats.nm import fits_nm
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.registry import Config, get_kernel

# Python, checks and launch of one kernel call (measured on a 1 x 8 layer), us
CALL_OVERHEAD = 4.4


@dataclass(frozen=True)
class Cost:
    """Coefficients of one regime (batch 1, or batched) of the model, in ns."""

    per_row: float
    per_weight: float
    per_lane: float = 0.0

    def time(self, out_features: int, stored: int, lanes: int) -> float:
        """Modelled microseconds per call."""
        per_weight = self.per_weight + self.per_lane * lanes
        return CALL_OVERHEAD + (out_features * self.per_row + stored * per_weight) * 1e-3


# format (and block shape) -> (batch 1, batched)
DENSE_COST = (Cost(0.0, 0.0751), Cost(0.0, 0.0420, 0.00515))
CSR_COST = (Cost(2.05, 0.1095), Cost(4.49, 0.0587, 0.01425))
BSR_COSTS = {
    (1, 4): (Cost(8.39, 0.1363), Cost(4.84, 0.4340, 0.00496)),
    (1, 8): (Cost(6.97, 0.0959), Cost(4.09, 0.4063, 0.00539)),
    (4, 1): (Cost(1.89, 0.0653), Cost(7.67, 0.1085, 0.00714)),
    (8, 1): (Cost(2.03, 0.0498), Cost(6.92, 0.1070, 0.00700)),
    (4, 4): (Cost(2.58, 0.0648), Cost(6.23, 0.0637, 0.00657)),
    (8, 8): (Cost(1.36, 0.0425), Cost(5.73, 0.0637, 0.00615)),
    (16, 16): (Cost(0.82, 0.0368), Cost(5.39, 0.0539, 0.00660)),
    (32, 32): (Cost(0.84, 0.0370), Cost(5.65, 0.0582, 0.00613)),
}
# batch 1: the grouped gather kernel took 1.9-2.1x the time of CSR's row-sliced kernel at 2:4
# on the AMD EPYC (AVX2; 512x512 to 2048x2048, one thread) and the same time on the AVX-512
# Xeon (512x1408, 1408x512, two threads; benchmarks/results/bitmask_gemv.md): priced at 2x
# CSR, so CSR takes N:M weights at batch 1; batched N:M runs the CSR kernel
NM_COST = (Cost(2 * CSR_COST[0].per_row, 2 * CSR_COST[0].per_weight), CSR_COST[1])
# N:M patterns tried, densest first (what pruning tools produce)
NM_PATTERNS = ((2, 4), (1, 4), (4, 8), (2, 8))

# bitmask per dense entry (AVX2; see the module docstring): batch 1 1.35x dense's per-weight cost,
# batched 1.5x dense at 8 rows and 1.8x at 32, rows not padded
BITMASK_COST = (Cost(2.05, 0.101), Cost(0.0, 0.042, 0.0103))

# Where the measurements put CSR's crossover with dense for 768x3072 and 3072x768, by
# batch (CSR against dense, ms: at 50 % 0.16 against 0.18 at batch 1, 0.29-0.38 against
# 0.19-0.20 at batch 8, 0.54-0.62 against 0.48-0.49 at batch 32; at 20 % CSR wins at every
# batch, at 30 % it ties at batch 8); tests/kernels/test_cpu_heuristic.py checks that the
# cost model reproduces them. In a model, where weights come from DRAM, CSR at 50 % and
# batch 1 only ties with dense (benchmarks/layers.py --stack).
CSR_MAX_DENSITY = {1: 0.7, 8: 0.28, 32: 0.4}

KERNELS = {
    "dense": "dense_cpu_native",
    "csr": "csr_cpu_rowwise",
    "bsr": "bsr_cpu_blockrow",
    "nm": "nm_cpu_grouped",
    "bitmask": "bitmask_cpu_expand",
}


def candidate_costs(weight: torch.Tensor, batch: int, width: int | None = None) -> list[tuple[float, str, dict]]:
    """(modelled us per call, format name, format params) for every lossless candidate, dense first.
    width: floats per SIMD register the batched kernels pad rows to (default: this host's)."""
    out_features, in_features = weight.shape
    width = simd_width() if width is None else width
    regime = 0 if batch == 1 else 1
    lanes = -(-batch // width) * width

    def time(costs: tuple[Cost, Cost], stored: int, padded: bool = True) -> float:
        return costs[regime].time(out_features, stored, lanes if padded else batch)

    mask = (weight != 0).to(torch.uint8)  # uint8: the block and N:M counts read it in place
    nnz = int(torch.count_nonzero(mask))
    dense = time(DENSE_COST, weight.numel(), padded=False)
    costs = [(dense, "dense", {}), (time(CSR_COST, nnz), "csr", {}),
             (time(BITMASK_COST, weight.numel(), padded=False), "bitmask", {})]
    if nnz == 0:
        return costs
    for (r, c), block_cost in BSR_COSTS.items():
        stored = count_kept_blocks(mask, (r, c)) * r * c
        # kept blocks stream like dense rows at best (the fits come from half-empty and
        # sparser matrices, which also sit better in cache)
        floor = dense * min(1.0, stored / weight.numel())
        costs.append((max(time(block_cost, stored), floor), "bsr", {"block_shape": (r, c)}))
    for n, m in NM_PATTERNS:
        if fits_nm(mask, n, m):
            costs.append((time(NM_COST, out_features * -(-in_features // m) * n), "nm", {"n": n, "m": m}))
            break
    return costs


def pick_cpu_kernel(weight_dense: torch.Tensor, batch: int) -> tuple[WeightFormat, str, Config]:
    """(weight in the chosen format, kernel name, config) for a dense [out, in] weight at `batch`
    input rows per call. Deterministic: the cheapest candidate of the cost model (ties go to
    the earlier candidate: dense, csr, bitmask, bsr by block shape, nm); torch's dense GEMM where the
    C kernels cannot be built."""
    weight = as_dense_weight(weight_dense, "pick_cpu_kernel: weight")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"pick_cpu_kernel: expected batch an int >= 1, got {batch!r}")
    if native_available():
        _, name, params = min(candidate_costs(weight, batch), key=lambda candidate: candidate[0])
        kernel = get_kernel(KERNELS[name])
    else:
        name, params, kernel = "dense", {}, get_kernel("dense_cpu_torch")
    fmt = get_format(name).from_dense(weight, **params)
    return fmt, kernel.name, kernel.configs(fmt, torch.device("cpu"))[0]
