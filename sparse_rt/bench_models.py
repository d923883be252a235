"""The `models` suite of the bench: built-in models x sparsity x pattern, one table."""

from __future__ import annotations

import argparse
import copy

from tqdm.auto import tqdm

from sparse_rt.bench import Report, default_calibration, run_bench
from sparse_rt.zoo_hf import ARCHITECTURES

SPARSITIES = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98)
PATTERNS = ("unstructured", "block:16x16")
# BERT-base takes about a minute per point here: fewer points for it
SUITE = (
    [("mlp", s, p) for p in PATTERNS for s in SPARSITIES]
    + [("cnn", s, p) for p in PATTERNS for s in SPARSITIES]
    + [("bert", 0.0, "unstructured"), ("bert", 0.9, "unstructured"), ("bert", 0.9, "block:16x16")]
    # real architectures (transformers configs, torch.onnx.export): dense, 90% unstructured, 90% 16x16 blocks
    + [(name, s, p) for name in ARCHITECTURES for s, p in ((0.0, "unstructured"), (0.9, "unstructured"),
                                                           (0.9, "block:16x16"))]
)
# Points converted with quantize="int8", against onnxruntime fp32 and onnxruntime's quantize_dynamic model
QUANTIZED = (("bert", 0.9, "unstructured"),)


def run_models_suite(args: argparse.Namespace) -> list[Report]:
    """Run every (model, sparsity, pattern) point with the caller's batch sizes and timing options."""
    reports = []
    points = [(*p, None) for p in SUITE] + [(*p, "int8") for p in QUANTIZED]
    points = [point for point in points if args.suite_models is None or point[0] in args.suite_models]
    for model, sparsity, pattern, quantize in tqdm(points, desc="models suite", unit="point", disable=args.quiet):
        reports.append(run_bench(suite_point(args, model, sparsity, pattern, quantize)))
    print(markdown_table(reports))
    return reports


def suite_point(args: argparse.Namespace, model: str, sparsity: float, pattern: str,
                quantize: str | None = None) -> argparse.Namespace:
    """The bench options of one suite point: the caller's, for this model, sparsity, pattern and
    precision (int8 with the default calibration), compared against onnxruntime and torch, quiet,
    without per-layer or memory figures."""
    point = copy.copy(args)
    point.model, point.sparsity, point.pattern, point.quantize = model, sparsity, pattern, quantize
    point.calibration = default_calibration(quantize)
    point.per_layer, point.quiet, point.no_compare, point.no_memory = False, True, False, True
    return point


def markdown_table(reports: list[Report]) -> str:
    """One row per (model, pattern, sparsity, batch): medians in ms and speedup over onnxruntime."""
    lines = [
        "| model | pattern | sparsity | batch | onnxruntime ms | torch ms | sparse_rt ms | vs onnxruntime | linear weights MiB (sparse_rt / dense) | max rel err |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        # int8 points: onnxruntime int8 (quantize_dynamic) in the torch column's place, and the speedup over it
    ]
    for rep in reports:
        for batch in sorted({r.batch for r in rep.latencies}):
            rows = {r.engine: r for r in rep.latencies if r.batch == batch}
            ours = rows["sparse_rt"]

            def ms(engine: str) -> str:
                return f"{rows[engine].p50_ms:.2f}" if engine in rows else "-"

            wb = rep.weight_bytes
            pattern, other = rep.pattern, ms("torch")
            speedup = f"{ours.speedup_vs_ort:.2f}x"
            if rep.quantize:
                pattern = f"{rep.pattern} + {rep.quantize}"
                other = f"{ms('onnxruntime_int8')} (ort int8)"
                speedup += f" ({ours.speedup_vs_ort_int8:.2f}x vs ort int8)"
            lines.append(
                f"| {rep.model} | {pattern} | {rep.sparsity or 0:.0%} | {batch} | {ms('onnxruntime')} | {other} | "
                f"{ours.p50_ms:.2f} | {speedup} | {wb['linear_sparse_rt'] / 2**20:.1f} / "
                f"{wb['linear_dense'] / 2**20:.1f} | {ours.max_rel_error_vs_ort:.1e} |"
            )
    return "\n".join(lines)
