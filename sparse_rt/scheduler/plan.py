"""Make the per-layer chooser that lowering calls: heuristic or autotuned."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from sparse_rt.converters.lowering import Choice, Chooser, LinearLayer
from sparse_rt.formats.base import WeightFormat
from sparse_rt.scheduler.cache import TuningCache
from sparse_rt.scheduler.heuristic import heuristic_choice
from sparse_rt.scheduler.quantize import DEFAULT_TOLERANCE, check_quantize, heuristic_int8
from sparse_rt.scheduler.cold import CacheEvictor
from sparse_rt.scheduler.tune import (
    Timer, calibration_of, cold_wall_clock_timer, tune_layer, wall_clock_timer, weight_signature,
)
from sparse_rt.scheduler.workload import DEFAULT_SEQUENCE, ROW_SPREAD


def batch_weights(batch_sizes: Sequence[int] | Mapping[int, float]) -> dict[int, float]:
    """{batch: weight} from a list of batch sizes (equal weights) or a mapping; validated."""
    weights = dict(batch_sizes) if isinstance(batch_sizes, Mapping) else {int(b): 1.0 for b in batch_sizes}
    if not weights or any(int(b) != b or b < 1 for b in weights) or any(w <= 0 for w in weights.values()):
        raise ValueError(f"batch_sizes: expected positive integers (with positive weights), got {batch_sizes!r}")
    return {int(b): float(w) for b, w in weights.items()}


def make_chooser(
    device: torch.device,
    batch_sizes: Sequence[int] | Mapping[int, float] | None = None,
    tune: bool = True,
    cache: TuningCache | None = None,
    timer: Timer = wall_clock_timer,
    structured: Mapping[str, WeightFormat] | None = None,
    quantize: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    rounding: str = "nearest",
    cold_rows: int = 0,
) -> Chooser:
    """A function LinearLayer -> Choice for `device`.

    batch_sizes None: each layer is chosen at the rows it sees (LinearLayer.rows, from the
    model's representative shapes; DEFAULT_SEQUENCE when unknown), and its chosen format's
    kernels are also timed at ROW_SPREAD, so the session switches kernels by the rows of each
    call. Given: every layer is chosen at those rows (or {rows: weight}).
    tune=False: the deterministic heuristic. tune=True: time the candidates through `cache`
    (the default on-disk cache when None).
    structured: {weight_signature: format} for layers that arrived as a structured format
    (butterfly, permuted): that format joins the candidates and is the heuristic's pick.
    quantize="int8": int8 formats are candidates for every layer whose int8 output error is
    within `tolerance` (sparse_rt.scheduler.quantize), their weights rounded by `rounding`
    ("nearest", or "gptq" against the layers' calibration inputs).
    cold_rows: tuned rows up to this count are timed with the weight evicted from the caches
    (`sparse_rt.scheduler.cold.cold_rows_for`: a model too large for the last-level cache).
    """
    check_quantize(quantize, tolerance, rounding)
    # one eviction buffer for the whole conversion (made at its first cold call), freed with the chooser
    cold_timer = cold_wall_clock_timer(CacheEvictor())
    fixed = None if batch_sizes is None else batch_weights(batch_sizes)
    structured = dict(structured or {})
    if tune and cache is None:
        cache = TuningCache()

    def structured_format(layer: LinearLayer) -> WeightFormat | None:
        if not structured:
            return None
        return structured.get(weight_signature(torch.from_numpy(layer.weight)))

    def choose(layer: LinearLayer) -> Choice:
        known = structured_format(layer)
        weights = fixed if fixed is not None else {layer.rows or DEFAULT_SEQUENCE: 1.0}
        spread = () if fixed is not None else tuple(r for r in ROW_SPREAD if r not in weights)
        if not tune:
            heaviest = max(weights, key=lambda b: (weights[b], -b))
            choice = heuristic_choice(layer, device, known, batch=heaviest)
            if quantize != "int8" or known is not None:
                return choice
            bias = None if layer.bias is None else torch.from_numpy(layer.bias)
            picked, precision, corrected = heuristic_int8(torch.from_numpy(layer.weight), bias, device, tolerance,
                                                        (choice.weight, choice.kernel, choice.config), calibration_of(layer), rounding)
            return Choice(*picked, tuned_rows=tuple(sorted(weights)), quantization=precision.to_json(),
                          bias=corrected)
        try:
            return tune_layer(layer, device, weights, cache, timer, known, spread=spread,
                              quantize=None if known is not None else quantize, tolerance=tolerance, rounding=rounding,
                              cold_rows=cold_rows, cold_timer=cold_timer)
        finally:
            cache.save()

    return choose
