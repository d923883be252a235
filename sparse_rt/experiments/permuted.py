"""`permuted`: how well PermutedBlockLinear learns structured linear maps, against depth.

Targets W [1024, 1024] (seeded): low-rank U V^T (rank 1..5), band (k diagonals
with offsets 0, +1, -1, +2, ...), random sparse (1% of entries) and a random
permutation; each scaled so that ||W||_F^2 = 1024, i.e. E||W x||^2 / 1024 = 1
for x ~ N(0, I). The layer is PermutedBlockLinear(1024, 1024, depth, n=2048):
inputs zero-padded to 2048, outputs sliced, 2 * 2048 * depth parameters.

Training regresses G x on W x for fresh x ~ N(0, I) batches with Adam in three
phases: lr 0.01 with the orthogonality regulariser weighted 3, then lr 0.01
weighted 0.3, then lr 0.001 weighted 0.3. The result is the exact relative error
||G - W||_F^2 / ||W||_F^2 (the output MSE on x ~ N(0, I); 1 = predicting zero).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sparse_rt.pruning.permuted import PermutedBlockLinear

FEATURES = 1024
WIDTH = 2048


@dataclass(frozen=True)
class PermutedSettings:
    """The sweep: targets by name, depths, steps per phase, batch size, seed."""

    targets: tuple[str, ...]
    depths: tuple[int, ...]
    phase_steps: tuple[int, int, int]
    batch_size: int = 64
    seed: int = 0


FULL = PermutedSettings(
    targets=("lowrank1", "lowrank2", "lowrank3", "lowrank4", "lowrank5", "band1", "band3", "sparse", "permutation"),
    depths=(1, 2, 4, 6, 8, 12, 16, 24, 32),
    phase_steps=(150, 75, 75),
)
QUICK = PermutedSettings(targets=("lowrank1", "permutation"), depths=(1, 2), phase_steps=(4, 2, 2), batch_size=16)
PHASES = ((0.01, 3.0), (0.01, 0.3), (0.001, 0.3))  # (learning rate, regulariser weight) per phase


def target_matrix(name: str, generator: torch.Generator) -> torch.Tensor:
    """The target W [1024, 1024] called `name` (lowrankK, bandK, sparse, permutation), ||W||_F^2 = 1024."""
    if name.startswith("lowrank"):
        rank = int(name[len("lowrank"):])
        u = torch.randn(FEATURES, rank, generator=generator)
        v = torch.randn(FEATURES, rank, generator=generator)
        weight = u @ v.T
    elif name.startswith("band"):
        bands = int(name[len("band"):])
        offsets = [(d + 1) // 2 * (1 if d % 2 else -1) for d in range(bands)]  # 0, 1, -1, 2, -2, ...
        rows = torch.arange(FEATURES)
        weight = torch.zeros(FEATURES, FEATURES)
        for offset in offsets:
            columns = rows + offset
            inside = (columns >= 0) & (columns < FEATURES)
            weight[rows[inside], columns[inside]] = torch.randn(int(inside.sum()), generator=generator)
    elif name == "sparse":
        kept = torch.rand(FEATURES, FEATURES, generator=generator) < 0.01
        weight = torch.randn(FEATURES, FEATURES, generator=generator) * kept
    elif name == "permutation":
        weight = torch.eye(FEATURES)[torch.randperm(FEATURES, generator=generator)]
    else:
        raise ValueError(f"permuted target: expected lowrankK, bandK, sparse or permutation, got {name!r}")
    return weight * (FEATURES / weight.square().sum()).sqrt()


def fit(target: torch.Tensor, depth: int, settings: PermutedSettings) -> tuple[PermutedBlockLinear, list[float]]:
    """Train PermutedBlockLinear(1024, 1024, depth, n=2048) on `target`; returns it and the loss after each phase."""
    generator = torch.Generator().manual_seed(settings.seed)
    layer = PermutedBlockLinear(FEATURES, FEATURES, depth, n=WIDTH, generator=generator)
    optimizer = torch.optim.Adam(layer.parameters(), lr=PHASES[0][0])
    phase_losses = []
    for (lr, weight), steps in zip(PHASES, settings.phase_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(steps):
            x = torch.randn(settings.batch_size, FEATURES, generator=generator)  # [B, 1024]
            loss = (layer(x) - x @ target.T).square().mean() + weight * layer.regularizer()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        phase_losses.append(relative_error(layer, target))
    return layer, phase_losses


@torch.no_grad()
def relative_error(layer: PermutedBlockLinear, target: torch.Tensor) -> float:
    """||G - W||_F^2 / ||W||_F^2 with G the layer's [1024, 1024] matrix."""
    matrix = layer(torch.eye(FEATURES)).T  # column j = G e_j
    return float((matrix - target).square().sum() / target.square().sum())


def run(out: Path, quick: bool = False) -> dict[str, Path]:
    """Sweep targets x depths, write permuted.csv, permuted.json and permuted.png under `out`."""
    settings = QUICK if quick else FULL
    rows = []
    for index, name in enumerate(settings.targets):
        target = target_matrix(name, torch.Generator().manual_seed(1000 + index))
        for depth in settings.depths:
            start = time.perf_counter()
            _, phase_errors = fit(target, depth, settings)
            rows.append({
                "target": name, "depth": depth, "parameters": 2 * WIDTH * depth,
                "error_phase1": phase_errors[0], "error_phase2": phase_errors[1], "final_error": phase_errors[2],
                "seconds": time.perf_counter() - start,
            })
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "permuted.csv", "json": out / "permuted.json", "png": out / "permuted.png"}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    paths["json"].write_text(json.dumps({"settings": asdict(settings), "summary": summarize(rows)}, indent=2) + "\n")
    plot(rows, paths["png"])
    return paths


def summarize(rows: list[dict]) -> dict:
    """Per target: the best depth ("goldilocks"), its error, and the fewest parameters reaching error < 0.1."""
    summary = {}
    for name in dict.fromkeys(row["target"] for row in rows):
        mine = [row for row in rows if row["target"] == name]
        best = min(mine, key=lambda row: row["final_error"])
        good = [row["parameters"] for row in mine if row["final_error"] < 0.1]
        summary[name] = {
            "best_depth": best["depth"], "best_error": best["final_error"],
            "parameters_for_error_below_0.1": min(good) if good else None,
            "errors_by_depth": {row["depth"]: row["final_error"] for row in mine},
        }
    return summary


def plot(rows: list[dict], path: Path) -> None:
    """Final relative error vs parameter count, one line per target; the dotted line marks 25k parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in dict.fromkeys(row["target"] for row in rows):
        mine = sorted((row["parameters"], row["final_error"]) for row in rows if row["target"] == name)
        ax.plot(*zip(*mine), marker="o", label=name)
    ax.axvline(25_000, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (2 n depth, n = 2048)")
    ax.set_ylabel("||G - W||² / ||W||²  (output MSE, 1 = zero map)")
    ax.set_title("PermutedBlockLinear fitting 1024x1024 targets")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
