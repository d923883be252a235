"""`methods`: sparse-training methods on a digits MLP, and serving their 90% models.

Network 64 -> 300 -> 100 -> 10 with ReLU, Adam (lr 1e-3, batch 64), the same
epochs for every method's final training. Per seed and sparsity:

- dense: trained once per seed (the reference line).
- magnitude: the dense model pruned once by global magnitude, then fine-tuned
  for half the epochs.
- gmp: gradual magnitude pruning (global, cubic schedule from epoch 1 to 2/3 of
  training, every half epoch).
- lottery: iterative magnitude pruning (global) with rewinding to
  initialisation; the sparsities form one IMP chain (50% -> 80% -> ... -> 98%),
  each round starting from the previous ticket; the dense run is round 0.
- snip, grasp: pruned at initialisation (global) from one batch of 256
  training samples; synflow: data-free, 100 rounds.
- set, rigl: dynamic sparse training from random ERK masks, drop fraction 0.3
  cosine-annealed, masks updated every epoch until 3/4 of training.
- random: a fixed random ERK mask (SET and RigL without the updates).

The 90% model of every method (first seed) is then served: exported to ONNX
once, timed in onnxruntime and in a sparse_rt InferenceSession converted (and
tuned) from that same file, one thread each, batch 1 and 64, medians of warm
runs in one process.
"""

from __future__ import annotations

import copy
import csv
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparse_rt.experiments.digits import Digits, accuracy, baked_copy, load_digits_split, mlp, steps_per_epoch, train
from sparse_rt.pruning.dst import SET, CosineDropSchedule, RigL, random_masks
from sparse_rt.pruning.gradual import CubicSchedule, GradualPruner
from sparse_rt.pruning.init_pruning import grasp_prune, snip_prune, synflow_prune
from sparse_rt.pruning.lottery import LotteryTicket
from sparse_rt.pruning.magnitude import magnitude_prune
from sparse_rt.pruning.masks import apply_masks, prunable_layers, weight_matrix

SIZES = (64, 300, 100, 10)
METHODS = ("magnitude", "gmp", "lottery", "snip", "grasp", "synflow", "set", "rigl", "random")
SERVED_SPARSITY = 0.9


@dataclass(frozen=True)
class MethodSettings:
    """The sweep: sparsities (increasing), seeds, training epochs; serving: seconds per timing, batches, tuning."""

    sparsities: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int
    lr: float = 1e-3
    score_batch: int = 256
    synflow_rounds: int = 100
    timing_seconds: float = 1.0
    batch_sizes: tuple[int, ...] = (1, 64)
    tune: bool = True


FULL = MethodSettings(sparsities=(0.5, 0.8, 0.9, 0.95, 0.98), seeds=(0, 1, 2), epochs=30)
QUICK = MethodSettings(
    sparsities=(0.5, 0.9), seeds=(0,), epochs=1, score_batch=64, synflow_rounds=5, timing_seconds=0.02,
    tune=False,
)


def run_seed(seed: int, settings: MethodSettings, data: Digits) -> tuple[list[dict], dict[str, nn.Module]]:
    """Train every method at every sparsity for one seed; returns the table rows and the 90% models."""
    spe = steps_per_epoch(data)
    total = settings.epochs * spe
    rows: list[dict] = []
    served: dict[str, nn.Module] = {}

    def fresh() -> nn.Module:
        torch.manual_seed(seed)
        return mlp(SIZES)

    def fit(model: nn.Module, epochs: int = settings.epochs, after_step=None, optimizer=None) -> None:
        optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=settings.lr)
        train(model, data, optimizer, epochs, generator=torch.Generator().manual_seed(seed), after_step=after_step)

    def record(method: str, sparsity: float, model: nn.Module, seconds: float) -> None:
        rows.append({
            "method": method, "sparsity": sparsity, "seed": seed,
            "measured_sparsity": measured_sparsity(model),
            "accuracy": accuracy(model, data.test_x, data.test_y), "train_seconds": seconds,
        })
        if sparsity == SERVED_SPARSITY and seed == settings.seeds[0]:
            served[method] = baked_copy(model, SIZES)

    start = time.perf_counter()
    dense = fresh()
    ticket = LotteryTicket(dense, scope="global")
    ticket.set_rewind_point()
    fit(dense)
    record("dense", 0.0, dense, time.perf_counter() - start)
    if seed == settings.seeds[0]:
        served["dense"] = copy.deepcopy(dense)
    trained_dense = copy.deepcopy(dense)

    generator = torch.Generator().manual_seed(seed)
    score_index = torch.randperm(len(data.train_y), generator=generator)[: settings.score_batch]
    score_batches = [(data.train_x[score_index], data.train_y[score_index])]
    for sparsity in settings.sparsities:
        for method in METHODS:
            start = time.perf_counter()
            if method == "magnitude":
                model = copy.deepcopy(trained_dense)
                magnitude_prune(model, sparsity, scope="global")
                fit(model, epochs=max(1, settings.epochs // 2))
            elif method == "lottery":
                model = dense
                ticket.prune_and_rewind(sparsity)
                fit(model)
            elif method == "gmp":
                model = fresh()
                schedule = CubicSchedule(
                    sparsity, start_step=spe, end_step=max(spe, 2 * total // 3), frequency=max(1, spe // 2)
                )
                pruner = GradualPruner(model, schedule, scope="global")
                fit(model, after_step=lambda closure, pruner=pruner: pruner.step())
            elif method in ("snip", "grasp", "synflow"):
                model = fresh()
                if method == "snip":
                    snip_prune(model, score_batches, sparsity)
                elif method == "grasp":
                    grasp_prune(model, score_batches, sparsity)
                else:
                    synflow_prune(model, (SIZES[0],), sparsity, rounds=settings.synflow_rounds)
                fit(model)
            elif method in ("set", "rigl"):
                model = fresh()
                optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
                schedule = CosineDropSchedule(end_step=3 * total // 4, drop_fraction=0.3, update_interval=spe)
                trainer = (SET if method == "set" else RigL)(
                    model, sparsity, schedule, optimizer=optimizer, generator=torch.Generator().manual_seed(seed)
                )
                fit(model, after_step=trainer.step, optimizer=optimizer)
            else:
                model = fresh()
                shapes = {name: tuple(weight_matrix(layer).shape) for name, layer in prunable_layers(model).items()}
                apply_masks(model, random_masks(shapes, sparsity, "erk", torch.Generator().manual_seed(seed)))
                fit(model)
            record(method, sparsity, model, time.perf_counter() - start)
    return rows, served


def measured_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over all prunable layers' effective weights."""
    weights = [weight_matrix(layer) for layer in prunable_layers(model).values()]
    return 1.0 - sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)


def serve(models: dict[str, nn.Module], settings: MethodSettings) -> list[dict]:
    """Latency of each model in onnxruntime and sparse_rt, side by side on the same exported file."""
    import onnx
    import onnxruntime as ort

    import sparse_rt
    from sparse_rt.bench import max_relative_error, measure_interleaved, percentile
    from sparse_rt.converters.torch import export_module
    from sparse_rt.runtime.session import set_threads

    set_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparse_rt_methods_") as workdir:
        for method, model in models.items():
            path = Path(workdir) / f"{method}.onnx"
            proto, _ = export_module(model, (torch.zeros(1, SIZES[0]),))
            onnx.save(proto, str(path))
            graph = sparse_rt.convert(str(path), batch_sizes=settings.batch_sizes, tune=settings.tune)
            chosen = [node.attributes["kernel"] for node in graph.nodes if node.op_type == "SparseLinear"]
            engines = {
                "onnxruntime": ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]),
                "sparse_rt": sparse_rt.InferenceSession(graph, threads=1),
            }
            name = engines["onnxruntime"].get_inputs()[0].name
            for batch in settings.batch_sizes:
                feeds = {name: np.random.default_rng(batch).standard_normal((batch, SIZES[0])).astype(np.float32)}
                samples = measure_interleaved(
                    {engine_name: (lambda session=session, feeds=feeds: session.run(None, feeds))
                     for engine_name, session in engines.items()},
                    warmup=20, iters=None, seconds=settings.timing_seconds)
                medians = {engine_name: percentile(taken, 50) for engine_name, taken in samples.items()}
                error = max_relative_error(
                    engines["sparse_rt"].run(None, feeds), engines["onnxruntime"].run(None, feeds)
                )
                rows.append({
                    "method": method, "sparsity": round(measured_sparsity(model), 4), "batch": batch,
                    "onnxruntime_ms": medians["onnxruntime"] * 1e3, "sparse_rt_ms": medians["sparse_rt"] * 1e3,
                    "speedup": medians["onnxruntime"] / medians["sparse_rt"], "max_rel_error": error,
                    "kernels": "/".join(str(k) for k in chosen),
                })
    return rows


def run(out: Path, quick: bool = False) -> dict[str, Path]:
    """Train, serve, and write methods.csv, methods_serving.csv, methods.json and methods.png under `out`."""
    settings = QUICK if quick else FULL
    data = load_digits_split()
    start = time.perf_counter()
    rows: list[dict] = []
    served: dict[str, nn.Module] = {}
    for seed in settings.seeds:
        seed_rows, seed_models = run_seed(seed, settings, data)
        rows += seed_rows
        served.update(seed_models)
    train_seconds = time.perf_counter() - start
    serving = serve(served, settings)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out / "methods.csv", "serving": out / "methods_serving.csv",
        "json": out / "methods.json", "png": out / "methods.png",
    }
    for path, table in ((paths["csv"], rows), (paths["serving"], serving)):
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    summary = {
        "settings": asdict(settings), "train_seconds": train_seconds,
        "seconds": time.perf_counter() - start, "mean_accuracy": mean_accuracy(rows),
    }
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, serving, paths["png"])
    return paths


def mean_accuracy(rows: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """{method: {sparsity: {"mean", "std", "n"}}} over seeds."""
    groups: dict[tuple[str, float], list[float]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["sparsity"]), []).append(row["accuracy"])
    table: dict[str, dict[str, dict[str, float]]] = {}
    for (method, sparsity), values in groups.items():
        table.setdefault(method, {})[str(sparsity)] = {
            "mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)
        }
    return table


def plot(rows: list[dict], serving: list[dict], path: Path) -> None:
    """Left: mean test error vs sparsity per method; right: speedup over onnxruntime of the 90% models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = mean_accuracy(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    dense = table["dense"]["0.0"]["mean"]
    left.axhline(1.0 - dense, color="black", linestyle="--", linewidth=1, label="dense")
    for method in METHODS:
        points = sorted((float(s), v["mean"]) for s, v in table[method].items())
        left.plot([s * 100 for s, _ in points], [1.0 - a for _, a in points], marker="o", label=method)
    left.set_yscale("log")
    left.set_xlabel("sparsity (%)")
    left.set_ylabel("test error, 1 - accuracy (mean over seeds, log scale)")
    left.set_title("digits MLP 64-300-100-10")
    left.legend(fontsize=8, ncol=2)
    methods = list(dict.fromkeys(row["method"] for row in serving))
    batches = sorted({row["batch"] for row in serving})
    width = 0.8 / len(batches)
    for index, batch in enumerate(batches):
        speedups = [next(r["speedup"] for r in serving if r["method"] == m and r["batch"] == batch) for m in methods]
        right.bar(np.arange(len(methods)) + index * width, speedups, width, label=f"batch {batch}")
    right.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    right.set_xticks(np.arange(len(methods)) + width * (len(batches) - 1) / 2, methods, rotation=30)
    right.set_ylabel("speedup of sparse_rt over onnxruntime (median latency)")
    right.set_title("serving the 90% models, 1 thread")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
