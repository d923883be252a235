"""`explain`: per-layer report of a converted model's choices and tuning measurements."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sparse_rt.ir.graph import SPARSE_DOMAIN, Graph
from sparse_rt.ops.sparse_linear import dispatch_of, weight_of
from sparse_rt.scheduler.candidates import Candidate
from sparse_rt.scheduler.quantize import Precision


@dataclass(frozen=True)
class LayerReport:
    name: str
    shape: tuple[int, int]
    density: float
    format: str
    kernel: str
    nbytes: int
    dense_nbytes: int
    timings: dict[str, dict[int, float]]  # candidate label -> {batch: seconds}
    chosen: str | None                    # label of the chosen candidate, if tuned
    dispatch: tuple[tuple[int, str, str], ...] = ()  # (from rows, kernel, candidate label)
    tuned_rows: tuple[int, ...] = ()  # the rows the format was chosen at
    cold_rows: tuple[int, ...] = ()  # those timed with the weight evicted from the caches
    precision: Precision | None = None  # when int8 was considered

    def ranges(self) -> list[tuple[int, int | None, str]]:
        """[(from rows, to rows or None, candidate label)]: what runs each range of rows."""
        if not self.dispatch:
            return [(1, None, self.chosen or f"{self.format}/{self.kernel}")]
        ends = [rows - 1 for rows, _, _ in self.dispatch[1:]] + [None]
        return [(rows, end, label) for (rows, _, label), end in zip(self.dispatch, ends)]

    def seconds(self, label: str | None, batch: int) -> float | None:
        return self.timings.get(label, {}).get(batch) if label else None

    def at(self, batch: int | None) -> tuple[str, str | None]:
        """(kernel, candidate label) that runs `batch` rows."""
        for rows, kernel, label in reversed(self.dispatch):
            if batch is not None and batch >= rows:
                return kernel, label
        return self.kernel, self.chosen

    def dense_label(self) -> str | None:
        return next((label for label in self.timings if label.startswith("dense/")), None)


def layer_reports(graph: Graph) -> list[LayerReport]:
    reports = []
    for node in graph.nodes:
        if node.domain != SPARSE_DOMAIN or node.op_type != "SparseLinear":
            continue
        weight = weight_of(node, graph.constants)
        dense = weight.to_dense()
        timings = {label: {int(b): t for b, t in per_batch.items()}
                   for label, per_batch in json.loads(node.attributes.get("timings", "{}")).items()}
        chosen = _chosen_label(timings, weight, node)
        quantization = node.attributes.get("quantization")
        dispatch = tuple((rows, kernel, Candidate(weight, kernel, cfg).label) for rows, kernel, cfg in dispatch_of(node))
        reports.append(LayerReport(
            name=node.label(), shape=tuple(weight.shape), density=float((dense != 0).float().mean()) if dense.numel() else 0.0,
            format=weight.name, kernel=node.attributes["kernel"], nbytes=weight.nbytes,
            dense_nbytes=dense.numel() * 4, timings=timings, chosen=chosen, dispatch=dispatch,
            tuned_rows=tuple(int(r) for r in node.attributes.get("tuned_rows", ())),
            cold_rows=tuple(int(r) for r in node.attributes.get("cold_rows", ())),
            precision=Precision.from_json(quantization) if quantization else None,
        ))
    return reports


def _matches(label: str, weight, kernel: str, config: dict) -> bool:
    return label == Candidate(weight, kernel, config).label


def _chosen_label(timings: dict[str, dict[int, float]], weight, node) -> str | None:
    """The timed candidate the tuner chose: the node's config as tuned (`tuned_config`, where
    `chain_csr_layers` gave a CSR layer its reader's batch_vectors afterwards)."""
    config = json.loads(node.attributes.get("tuned_config") or node.attributes.get("config") or "{}")
    return next((label for label in timings if _matches(label, weight, node.attributes["kernel"], config)), None)


def format_report(reports: list[LayerReport], batch: int | None = None) -> str:
    """A text table: one row per layer, then the totals and predicted speedup over dense."""
    if not reports:
        return "no SparseLinear layers in this model"
    batches = sorted({b for r in reports for t in r.timings.values() for b in t})
    tuned = [b for r in reports for b in r.tuned_rows]
    if batch is None:  # the rows the most layers were chosen at, else the smallest timed
        batch = max(set(tuned), key=lambda b: (tuned.count(b), -b)) if tuned else (batches[0] if batches else None)
    lines = [f"{'layer':<28} {'shape':>11} {'density':>7} {'choice':<34} {'bytes':>10} {'ms':>8} {'GB/s':>6}  candidates (ms at {batch} rows)"]
    total, total_dense = 0.0, 0.0
    for r in reports:
        kernel, label = r.at(batch)
        chosen_s = r.seconds(label, batch) if batch else None
        dense_s = r.seconds(r.dense_label(), batch) if batch else None
        if chosen_s is not None and dense_s is not None:
            total += chosen_s
            total_dense += dense_s
        ms = f"{chosen_s * 1e3:.3f}" if chosen_s else "-"
        gbs = f"{r.nbytes / chosen_s / 1e9:.1f}" if chosen_s else "-"
        ranked = sorted(((t.get(batch), label) for label, t in r.timings.items() if t.get(batch) is not None))
        cands = ", ".join(f"{label} {t * 1e3:.3f}" for t, label in ranked[:4])
        if len(ranked) > 4:
            cands += f", ... ({len(ranked)} in all)"
        choice = f"{r.format}/{kernel}" + (" (by batch)" if r.dispatch else "")
        lines.append(f"{r.name[:28]:<28} {r.shape[0]:>5}x{r.shape[1]:<5} {r.density:>7.1%} {choice[:34]:<34} "
                     f"{r.nbytes:>10,} {ms:>8} {gbs:>6}  {cands or 'not tuned (heuristic choice)'}")
    by_rows = [r for r in reports if r.dispatch]
    if by_rows:
        lines.append("by rows per call (the session switches kernels at these row counts):")
        for r in by_rows:
            spans = ", ".join(f"{start}{'+' if end is None else '-' + str(end)}: {label}" for start, end, label in r.ranges())
            lines.append(f"  {r.name[:28]:<28} {spans}")
    cold = sorted({b for r in reports for b in r.cold_rows})
    if cold:
        lines.append(f"timed cold at {', '.join(map(str, cold))} rows: the model's weights exceed the last-level "
                     f"cache, so each call there reads its weight from memory; the tuner evicted it before each call")
    weight_bytes = sum(r.nbytes for r in reports)
    dense_bytes = sum(r.dense_nbytes for r in reports)
    quantized = [r for r in reports if r.precision is not None]
    if quantized:
        lines.append("precision (int8 output error against fp32, measured at conversion):")
        lines.extend(f"  {r.name[:40]:<40} {r.precision.describe()}" for r in quantized)
        int8 = sum(r.precision.precision == "int8" for r in quantized)
        lines.append(f"  {int8} of {len(quantized)} layers int8, {len(quantized) - int8} kept fp32")
    lines.append(f"total: {len(reports)} layers, weights {weight_bytes:,} bytes ({weight_bytes / dense_bytes:.1%} of dense {dense_bytes:,})")
    if total > 0:
        lines.append(f"linear layers at batch {batch}: {total * 1e3:.3f} ms vs dense {total_dense * 1e3:.3f} ms "
                     f"-> predicted speedup {total_dense / total:.2f}x")
    return "\n".join(lines)


def format_conv_report(graph: Graph) -> str:
    """The convs timed as oneDNN's direct convolution against Winograd F(4x4, 3x3) (3x3) or the
    native GEMM (1x1) (`converters.conv_algorithms`): one row per conv with its ms per batch and
    the choice; "" when none was timed."""
    rows = []
    for node in graph.nodes:
        if node.domain != SPARSE_DOMAIN or node.op_type != "FusedConv" or "timings" not in node.attributes:
            continue
        timings = json.loads(node.attributes["timings"])
        alternative = next(name for name in timings if name != "direct")
        batches = sorted({int(b) for per_batch in timings.values() for b in per_batch})
        cells = "  ".join(f"batch {b}: " + " / ".join(f"{timings[a][str(b)] * 1e3:.3f}" for a in ("direct", alternative))
                          for b in batches)
        start = node.attributes.get(f"{alternative}_from")
        choice = "direct" if start is None else f"{alternative} from batch {start}"
        rows.append(f"  {node.label()[:32]:<32} {choice:<26} {cells}")
    if not rows:
        return ""
    return "\n".join(["convolutions (ms direct / winograd (3x3) or gemm (1x1), as timed at conversion):", *rows])
