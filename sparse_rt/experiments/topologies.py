"""`topologies`: accuracy of fixed sparse topologies on digits, and its link to the graph's spectrum.

Network 64 -> hidden -> 10 with sigmoid (hidden 100 and 300). Both layers get
the same construction at the same fraction f of their inputs: degree
k = max(1, round(f * n_in)) (random_edge: edge probability k / n_in). The masks
are attached before training and never change. Each network trains with Adam
(lr 0.01, batch 64) and is scored on the held-out 20%. For every network the
spectral metrics of its whole graph are computed (`pruning.topologies.graph_metrics`),
and the correlations of accuracy with algebraic connectivity, spectral gap and
density are reported overall and within each (hidden, fraction) cell, where
density is fixed and only the construction varies.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparse_rt.experiments.digits import Digits, accuracy, load_digits_split, mlp, train
from sparse_rt.pruning.masks import apply_masks
from sparse_rt.pruning.topologies import TOPOLOGIES, graph_metrics, topology_mask


@dataclass(frozen=True)
class TopologySettings:
    """The sweep: hidden widths, connection fractions, constructions, seeds, epochs."""

    hidden: tuple[int, ...]
    fractions: tuple[float, ...]
    constructions: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int
    lr: float = 0.01


FULL = TopologySettings(
    hidden=(100, 300),
    fractions=(0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0),
    constructions=tuple(TOPOLOGIES),
    seeds=(0, 1),
    epochs=30,
)
QUICK = TopologySettings(
    hidden=(16,), fractions=(0.05, 0.5), constructions=tuple(TOPOLOGIES), seeds=(0,), epochs=1
)


def degree(fraction: float, n_in: int) -> int:
    """k = max(1, round(fraction * n_in))."""
    return max(1, round(fraction * n_in))


def train_topology(
    construction: str, hidden: int, fraction: float, seed: int, settings: TopologySettings, data: Digits
) -> dict:
    """Train one sparse 64 -> hidden -> 10 network; returns its row of the table."""
    torch.manual_seed(seed)
    model = mlp((64, hidden, 10), nn.Sigmoid)
    shapes = {"0": (hidden, 64), "2": (10, hidden)}
    masks = {
        name: topology_mask(construction, n_out, n_in, degree(fraction, n_in), seed + 7919 * index)
        for index, (name, (n_out, n_in)) in enumerate(shapes.items())
    }
    apply_masks(model, masks)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    train(model, data, optimizer, settings.epochs, generator=torch.Generator().manual_seed(seed))
    kept = sum(int(mask.sum()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    return {
        "construction": construction, "hidden": hidden, "fraction": fraction, "seed": seed,
        "degree_layer1": degree(fraction, 64), "degree_layer2": degree(fraction, hidden),
        "density": kept / total, "accuracy": accuracy(model, data.test_x, data.test_y),
        **graph_metrics(list(masks.values())),
    }


def correlations(rows: list[dict]) -> dict:
    """Pearson and Spearman of accuracy with each metric: overall, and averaged over (hidden, fraction) cells.

    A cell whose metric (or accuracy) does not vary is left out of the average.
    """
    from scipy.stats import pearsonr, spearmanr

    def pair(xs, ys) -> dict:
        xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        # eigenvalues of equal graphs differ by rounding (~1e-14): treat spreads below 1e-9 as constant
        if len(xs) < 3 or np.ptp(xs) <= 1e-9 or np.ptp(ys) <= 1e-9:
            return {"pearson": None, "spearman": None, "n": len(xs)}
        return {"pearson": float(pearsonr(xs, ys)[0]), "spearman": float(spearmanr(xs, ys)[0]), "n": len(xs)}

    result = {}
    for metric in ("algebraic_connectivity", "spectral_gap", "density"):
        overall = pair([row[metric] for row in rows], [row["accuracy"] for row in rows])
        cells = {}
        for row in rows:
            cells.setdefault((row["hidden"], row["fraction"]), []).append(row)
        within = [pair([r[metric] for r in cell], [r["accuracy"] for r in cell]) for cell in cells.values()]
        spearmans = [w["spearman"] for w in within if w["spearman"] is not None]
        result[metric] = {
            "overall": overall,
            "mean_spearman_within_cells": float(np.mean(spearmans)) if spearmans else None,
            "cells_with_variation": len(spearmans),
        }
    return result


def run(out: Path, quick: bool = False) -> dict[str, Path]:
    """Run the sweep; write topologies.csv, topologies.json and topologies.png under `out`."""
    settings = QUICK if quick else FULL
    data = load_digits_split()
    start = time.perf_counter()
    rows = [
        train_topology(construction, hidden, fraction, seed, settings, data)
        for hidden in settings.hidden
        for fraction in settings.fractions
        for construction in settings.constructions
        for seed in settings.seeds
    ]
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "topologies.csv", "json": out / "topologies.json", "png": out / "topologies.png"}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "settings": asdict(settings),
        "seconds": time.perf_counter() - start,
        "correlations_with_accuracy": correlations(rows),
        "mean_accuracy": mean_accuracy(rows),
    }
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, settings, paths["png"])
    return paths


def mean_accuracy(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{hidden: {construction: {fraction: accuracy averaged over seeds}}}."""
    groups: dict[tuple, list[float]] = {}
    for row in rows:
        groups.setdefault((row["hidden"], row["construction"], row["fraction"]), []).append(row["accuracy"])
    table: dict[str, dict[str, dict[str, float]]] = {}
    for (hidden, construction, fraction), values in groups.items():
        table.setdefault(str(hidden), {}).setdefault(construction, {})[str(fraction)] = float(np.mean(values))
    return table


def plot(rows: list[dict], settings: TopologySettings, path: Path) -> None:
    """Top: accuracy vs fraction per construction; bottom: accuracy vs algebraic connectivity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(settings.hidden), figsize=(6 * len(settings.hidden), 9), squeeze=False)
    for column, hidden in enumerate(settings.hidden):
        top, bottom = axes[0][column], axes[1][column]
        for construction in settings.constructions:
            mine = [row for row in rows if row["hidden"] == hidden and row["construction"] == construction]
            means = [
                (fraction, np.mean([row["accuracy"] for row in mine if row["fraction"] == fraction]))
                for fraction in settings.fractions
            ]
            top.plot(*zip(*means), marker="o", label=construction)
            bottom.scatter([row["algebraic_connectivity"] for row in mine], [row["accuracy"] for row in mine],
                           s=14, label=construction)
        top.set_xscale("log")
        top.set_xlabel("fraction of connections per layer")
        top.set_ylabel("test accuracy")
        top.set_title(f"digits 64-{hidden}-10 sigmoid")
        top.legend(fontsize=8)
        bottom.set_xscale("symlog", linthresh=1e-2)
        bottom.set_xlabel("algebraic connectivity of the network graph")
        bottom.set_ylabel("test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
