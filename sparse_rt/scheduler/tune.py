"""Autotuning: time the candidates of a layer at the user's batch sizes, keep the fastest.

The score of a candidate is the weighted sum of its median times over the batch
sizes. Dense is always among the candidates, so a tuned layer is never slower
than the dense one (up to timing noise). Measurements go through the tuning
cache, keyed by device, kernel, config, shape, weight structure and batch, so
re-converting a model on the same machine, or tuning a layer shaped and pruned
like one already tuned, times nothing.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Callable, Mapping, Sequence

import torch

from sparse_rt.converters.lowering import Choice, LinearLayer
from sparse_rt.formats.base import WeightFormat
from sparse_rt.kernels.activation import bind_with_activation
from sparse_rt.kernels.registry import BoundLinear, Config, get_kernel, kernels_for
from sparse_rt.scheduler.cache import TuningCache, device_fingerprint
from sparse_rt.scheduler.candidates import Candidate, candidates
from sparse_rt.scheduler.cold import CacheEvictor
from sparse_rt.scheduler.quantize import DEFAULT_TOLERANCE, int8_candidates, verdict

Timer = Callable[[Candidate, BoundLinear, torch.Tensor], float]


def best_time(fn: BoundLinear, x: torch.Tensor, warmup: int = 2, min_runs: int = 5,
              max_runs: int = 30, budget_s: float = 0.03, before: Callable[[], None] | None = None) -> float:
    """Fastest wall time of fn(x) in seconds over warm runs, within a time budget;
    `before` (untimed) runs ahead of every timed call.

    The minimum, not the median: other work on the machine only ever adds time,
    so the minimum is the estimate it disturbs least."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < max_runs and (len(samples) < min_runs or time.perf_counter() - start < budget_s):
            if before is not None:
                before()
            t0 = time.perf_counter()
            fn(x)
            samples.append(time.perf_counter() - t0)
    return min(samples)


def wall_clock_timer(candidate: Candidate, fn: BoundLinear, x: torch.Tensor) -> float:
    return best_time(fn, x)


def cold_wall_clock_timer(evict: Callable[[], None]) -> Timer:
    """A timer whose every timed call comes after `evict()` (a `scheduler.cold.CacheEvictor`):
    fewer runs, each behind a read of several times the last-level cache."""
    def timer(candidate: Candidate, fn: BoundLinear, x: torch.Tensor) -> float:
        return best_time(fn, x, min_runs=3, max_runs=7, before=evict)
    return timer


# Another kernel takes over a batch size only when at least this much faster there.
SWITCH_MARGIN = 0.95


def weight_signature(weight: torch.Tensor) -> str:
    """A short content hash of a weight (cache keys are per weight, not just per shape)."""
    data = weight.detach().contiguous().cpu().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=10).hexdigest()


def calibration_of(layer: LinearLayer) -> torch.Tensor | None:
    """The layer's calibration inputs [rows, in] as a tensor, when the conversion had some;
    ValueError naming the layer when they are not finite (a calibration feed the model turns
    into NaN or Inf there)."""
    if layer.calibration is None:
        return None
    inputs = torch.from_numpy(layer.calibration)
    if not bool(torch.isfinite(inputs).all()):
        bad = int((~torch.isfinite(inputs)).any(dim=1).sum())
        raise ValueError(f"calibration: the inputs of layer {layer.name!r} hold NaN or Inf ({bad} of "
                         f"{inputs.shape[0]} rows); expected finite values from the calibration feeds")
    return inputs


def tune_layer(
    layer: LinearLayer,
    device: torch.device,
    batch_weights: Mapping[int, float],
    cache: TuningCache,
    timer: Timer = wall_clock_timer,
    structured: WeightFormat | None = None,
    spread: Sequence[int] = (),
    quantize: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    rounding: str = "nearest",
    cold_rows: int = 0,
    cold_timer: Timer | None = None,
) -> Choice:
    """Time the candidates of `layer` and return the fastest, with all timings.

    Every format and kernel is timed with its default config at the rows of
    `batch_weights`, twice, interleaved (keeping the faster); then the configs next to
    the winner's default (one setting changed) are timed too. The weighted times decide
    the format. Then the best config of each kernel of that format is timed at the rows
    of `spread` too, and the dispatch by rows picks among them at every row count timed.
    Measurements are keyed by the weight's structure (shape, format, stored bytes), so
    layers of the same shape and sparsity share them.

    quantize="int8": the int8 formats join the candidates when their output error against
    fp32 is within `tolerance`, their weights rounded by `rounding` (see
    sparse_rt.scheduler.quantize).
    cold_rows: the tuned rows (not the spread) up to this count are timed by `cold_timer`
    (default: with a CacheEvictor of this call's own), the weight evicted from the caches
    before each call (`scheduler.cold`: for models whose weights exceed the last-level cache),
    and cached apart from warm timings.
    """
    weight = torch.from_numpy(layer.weight)
    bias = None if layer.bias is None else torch.from_numpy(layer.bias)
    fingerprint = device_fingerprint(device)
    inputs: dict[int, torch.Tensor] = {}  # made when first timed: a warm cache times nothing

    def input_rows(batch: int) -> torch.Tensor:
        if batch not in inputs:
            generator = torch.Generator().manual_seed(batch)
            inputs[batch] = torch.randn(batch, weight.shape[1], generator=generator).to(device)
        return inputs[batch]
    timings: dict[str, dict[int, float]] = {}
    scores: dict[str, tuple[float, Candidate]] = {}
    bound: dict[str, BoundLinear] = {}
    fresh: dict[str, dict[int, str]] = {}  # label -> {batch: cache key} timed in this call

    if cold_timer is None:  # its buffer is made only if a call is timed cold
        cold_timer = cold_wall_clock_timer(CacheEvictor())

    def measure(candidate: Candidate, batches: Sequence[int] = tuple(batch_weights)) -> None:
        label = candidate.label
        per_batch = timings.setdefault(label, {})
        for batch in batches:
            cold = batch <= cold_rows and batch in batch_weights
            key = TuningCache.key(fingerprint + (":cold" if cold else ""), candidate.kernel, candidate.config,
                                  tuple(weight.shape), _structure_signature(candidate.weight, layer.activation), batch)
            seconds = cache.get(key)
            if seconds is None or batch in fresh.get(label, {}):
                if label not in bound:
                    bound[label] = bind_with_activation(get_kernel(candidate.kernel), candidate.weight, bias_of(candidate),
                                                        candidate.config, device, layer.activation)
                measured = (cold_timer if cold else timer)(candidate, bound[label], input_rows(batch))
                seconds = measured if seconds is None else min(seconds, measured)
                cache.put(key, seconds)
                fresh.setdefault(label, {})[batch] = key
            per_batch[batch] = seconds
        scores[label] = (sum(batch_weights[b] * per_batch[b] for b in batch_weights), candidate)

    defaults = candidates(weight, device, structured, all_configs=False)
    offer = None
    if quantize == "int8":
        offer = int8_candidates(weight, bias, device, tolerance, calibration_of(layer), rounding)
        defaults += [Candidate(f, k.name, k.configs(f, device)[0]) for f in offer.formats for k in kernels_for(f, device)]

    def bias_of(candidate: Candidate) -> torch.Tensor | None:
        return bias if offer is None else offer.bias_for(candidate.weight, bias)
    for candidate in defaults:
        measure(candidate)
    # a second, interleaved round: a burst of other work slows one candidate, not the verdict
    for candidate in defaults:
        if candidate.label in fresh:
            measure(candidate)
    best = min(scores.values(), key=lambda item: item[0])[1]
    kernel = get_kernel(best.kernel)
    for config in kernel.configs(best.weight, device):
        if sum(config.get(k) != v for k, v in best.config.items()) == 1:
            measure(Candidate(best.weight, best.kernel, config))
    chosen = min(scores.values(), key=lambda item: item[0])[1]
    if spread:
        for candidate in _best_per_kernel(chosen, scores):
            measure(candidate, spread)
    quantization = None if offer is None else verdict(chosen.weight, offer.staying).to_json()
    cold = tuple(b for b in sorted(batch_weights) if b <= cold_rows)
    return Choice(chosen.weight, chosen.kernel, chosen.config, timings, batch_dispatch(chosen, scores, timings),
                  tuple(sorted(batch_weights)), quantization, cold, bias=None if offer is None else offer.choice_bias(chosen.weight))


def _best_per_kernel(chosen: Candidate, scores: Mapping[str, tuple[float, Candidate]]) -> list[Candidate]:
    """The best-scoring config of each kernel of the chosen weight format (chosen first)."""
    best: dict[str, tuple[float, Candidate]] = {chosen.kernel: (-1.0, chosen)}
    for score, candidate in scores.values():
        if candidate.weight is chosen.weight and score < best.get(candidate.kernel, (float("inf"),))[0]:
            best[candidate.kernel] = (score, candidate)
    return [candidate for _, candidate in best.values()]


def batch_dispatch(
    chosen: Candidate, scores: Mapping[str, tuple[float, Candidate]], timings: Mapping[str, Mapping[int, float]]
) -> list[tuple[int, str, Config]] | None:
    """Where another kernel or config of the chosen weight format is fastest at some batch
    size (by SWITCH_MARGIN), [(from rows, kernel, config)] picking the fastest per batch
    size, switching at the geometric mean of neighbouring tuned sizes; else None.

    One weighted choice cannot serve batch 1 and 4096 rows alike: on 2 cores torch's
    GEMM is the faster dense kernel at 4096 rows, the native one at 128 (1.52 against
    1.85 ms on a 768->3072 layer).
    """
    siblings = [(label, c) for label, (_, c) in scores.items() if c.weight is chosen.weight]
    picks = []
    for batch in sorted(timings[chosen.label]):
        base = timings[chosen.label][batch]
        label, best = min(siblings, key=lambda item: timings[item[0]].get(batch, float("inf")))
        picks.append((batch, best if timings[label][batch] < SWITCH_MARGIN * base else chosen))
    if all(pick is chosen for _, pick in picks):
        return None
    dispatch: list[tuple[int, str, Config]] = []
    for index, (batch, pick) in enumerate(picks):
        start = 1 if index == 0 else math.ceil(math.sqrt(picks[index - 1][0] * batch))
        if not dispatch or (dispatch[-1][1], dispatch[-1][2]) != (pick.kernel, pick.config):
            dispatch.append((start, pick.kernel, dict(pick.config)))
    return dispatch


def _structure_signature(fmt: WeightFormat, activation: str | None = None) -> str:
    """What a kernel's speed depends on: the format, its parameters, its stored bytes and the
    activation applied to its output."""
    params = ",".join(f"{k}={v}" for k, v in sorted(fmt.attributes().items()))
    return f"{fmt.name}({params}):{fmt.nbytes}" + (f"+{activation}" if activation else "")
