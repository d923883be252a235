"""The `targets` suite of the bench: the real architectures as users export them, and the FFN
stack, each against the speed it should reach over onnxruntime, one verdict per check.

Every point is converted with defaults (`sparse_rt.convert(path)`, the way a user converts an
exported file) and timed against onnxruntime in one process by `run_bench`. The checks:

    model                                   sparsity  batch  at least
    BERT-base, DistilBERT, RoBERTa, MiniLM  90%       1      2.5x
    GPT-2 (no cache), ViT-base              90%       1      2.0x
    ResNet-50 (1x1 convs pruned)            90%       1      1.0x
    every model above                       90%       8      1.0x
    every model above                       0%        1      0.9x
    8-layer 768 <-> 3072 FFN stack          90%       1 / 32 4.0x / 3.0x

`python -m sparse_rt.bench --suite targets` prints the table and exits 1 when a check misses.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from tqdm.auto import tqdm

from sparse_rt.bench import Report, run_bench
from sparse_rt.bench_models import suite_point

ENCODERS = ("bert-base", "distilbert", "roberta-base", "minilm")
# (model, sparsity, batch sizes) -> {batch: least speedup over onnxruntime}
TARGETS = {
    **{(name, 0.9, (1, 8)): {1: 2.5, 8: 1.0} for name in ENCODERS},
    **{(name, 0.9, (1, 8)): {1: 2.0, 8: 1.0} for name in ("gpt2", "vit-base")},
    ("resnet50", 0.9, (1, 8)): {1: 1.0, 8: 1.0},
    **{(name, 0.0, (1,)): {1: 0.9} for name in (*ENCODERS, "gpt2", "vit-base", "resnet50")},
    ("mlp", 0.9, (1, 32)): {1: 4.0, 32: 3.0},
}


@dataclass(frozen=True)
class Check:
    """One model at one sparsity and batch against its target speedup over onnxruntime."""

    model: str
    sparsity: float
    batch: int
    target: float
    speedup: float | None  # None: not measured (no onnxruntime row)

    @property
    def met(self) -> bool:
        return self.speedup is not None and self.speedup >= self.target


def run_targets(args: argparse.Namespace) -> tuple[list[Report], list[Check]]:
    """Run every point of TARGETS (those of `args.suite_models` when given) with the caller's
    timing options; returns the reports and their checks."""
    points = [key for key in TARGETS if args.suite_models is None or key[0] in args.suite_models]
    reports = []
    for model, sparsity, batches in tqdm(points, desc="targets", unit="point", disable=args.quiet):
        point = suite_point(args, model, sparsity, "unstructured")
        point.batch_sizes = list(batches)
        reports.append(run_bench(point))
    return reports, checks_of(reports)


def checks_of(reports: list[Report]) -> list[Check]:
    """The checks of TARGETS that these reports measured: one per (model, sparsity, batch)."""
    checks = []
    for report in reports:
        targets = next((t for (model, sparsity, _), t in TARGETS.items()
                        if model == report.model and sparsity == report.sparsity), {})
        for batch, target in sorted(targets.items()):
            speedup = next((row.speedup_vs_ort for row in report.latencies
                            if row.engine == "sparse_rt" and row.batch == batch), None)
            checks.append(Check(report.model, report.sparsity, batch, target, speedup))
    return checks


def format_checks(checks: list[Check]) -> str:
    """A markdown table, one row per check, and a last line counting the misses."""
    lines = ["| model | sparsity | batch | vs onnxruntime | target | |", "|---|---:|---:|---:|---:|---|"]
    for check in checks:
        measured = "-" if check.speedup is None else f"{check.speedup:.2f}x"
        lines.append(f"| {check.model} | {check.sparsity:.0%} | {check.batch} | {measured} | {check.target:.1f}x | "
                     f"{'met' if check.met else 'MISSED'} |")
    missed = sum(not check.met for check in checks)
    lines.append(f"{len(checks) - missed} of {len(checks)} targets met")
    return "\n".join(lines)
