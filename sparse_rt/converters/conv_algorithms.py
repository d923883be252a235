"""Per-conv choice of algorithm for the dense convolutions, by timing: oneDNN's direct
convolution, or for a 3x3 conv Winograd F(4x4, 3x3) (`sparse_rt.kernels.cpu.winograd`) and for
a 1x1 conv the native dense GEMM over its channels-last rows (`sparse_rt.kernels.cpu.dense`).

Applied after the conv fusions. A Conv or FusedConv with a constant weight, one group and
symmetric pads is a candidate when it is 3x3 with stride 1 and dilation 1 ("winograd") or 1x1
with stride 1 and no padding ("gemm"). It is timed both ways on its input from one run of the
graph on representative inputs (`scheduler.workload.representative_feeds`); where the
alternative takes under MARGINS[algorithm] of the direct time, at that batch or at
BATCH_FACTOR times it, the node gets attribute winograd_from or gemm_from, the least such
batch: it runs that way from there up. Every conv timed becomes a FusedConv (without
activation, if it was a Conv), keeping its timings as attribute "timings", JSON {"direct" |
algorithm: {batch: seconds}}, for `explain`; the attributes stay out of the ONNX domain.

When the model's weights exceed the last-level cache, every timed call at the representative
batch comes after an eviction (`scheduler.cold`), as in the model the weights come from
memory: Winograd's transformed weight is four times the size, and on ResNet-50 the 14x14x256
convs that took 0.58 against 0.96 ms with a hot weight ran 1.27-1.37 against 1.13 ms in the
model.

The GEMM spends about 5 us a call where oneDNN spends 30, and adds the residual and applies
the activation (ReLU, clip) in its epilogue, as oneDNN does: without them, as separate passes
over the output, it ran slower in ResNet-50 and MobileNetV2 than oneDNN although faster alone.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from sparse_rt.ir.graph import SPARSE_DOMAIN, Graph, Node

# The alternative must beat the direct convolution by this factor, so that the choice does not
# flip on noise: Winograd also rounds a few ulps more.
MARGINS = {"winograd": 0.9, "gemm": 0.95}
# Each conv is timed at the representative batch and at this many times it: a batch reads
# the transformed weight once for all its images.
BATCH_FACTOR = 8


def choose_conv_algorithms(graph: Graph, shapes=None, device: str | torch.device = "cpu",
                           cold: bool = False) -> dict[str, dict[int, tuple[float, float]]]:
    """Give the convs that run faster another way attribute winograd_from or gemm_from (the
    least batch timed faster); returns {node label: {batch: (direct seconds, alternative
    seconds)}} for every conv timed. cold: time each call at the representative batch after a
    cache eviction."""
    from sparse_rt.kernels.cpu._native import native_available

    candidates = [(node, algorithm) for node in graph.nodes if (algorithm := conv_algorithm(graph, node))]
    if not candidates or torch.device(device).type != "cpu" or not native_available():
        return {}
    inputs = _conv_inputs(graph, shapes, {node.inputs[0] for node, _ in candidates})
    evict = None
    if cold:
        from sparse_rt.scheduler.cold import CacheEvictor

        evict = CacheEvictor()
    timings = {}
    for node, algorithm in candidates:
        weight = graph.constants[node.inputs[1]]
        x = inputs.get(node.inputs[0])
        if x is None or x.dtype != torch.float32 or x.shape[1] != weight.shape[1]:
            continue
        batched = x.repeat(BATCH_FACTOR, 1, 1, 1).contiguous(memory_format=torch.channels_last)
        # cold at the representative batch only: a batch's compute outweighs reading the weight
        by_batch = {len(x): _timings(node, weight, x, evict, algorithm),
                    len(batched): _timings(node, weight, batched, None, algorithm)}
        timings[node.label()] = by_batch
        faster = [batch for batch, (direct, other) in by_batch.items() if other < MARGINS[algorithm] * direct]
        node.op_type, node.domain = "FusedConv", SPARSE_DOMAIN
        node.attributes["timings"] = json.dumps({name: {str(batch): seconds[i] for batch, seconds in by_batch.items()}
                                                 for i, name in enumerate(("direct", algorithm))})
        for name in MARGINS:
            node.attributes.pop(f"{name}_from", None)
        if faster:
            node.attributes[f"{algorithm}_from"] = min(faster)
    return timings


def conv_algorithm(graph: Graph, node: Node) -> str | None:
    """The alternative a conv node is timed against: "winograd", "gemm", or None (not a candidate)."""
    from sparse_rt.converters.lowering import pointwise_conv
    from sparse_rt.kernels.cpu.winograd import supports

    if not ((node.op_type == "Conv" and not node.domain) or (node.op_type == "FusedConv" and node.domain == SPARSE_DOMAIN)):
        return None
    weight = graph.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
    attributes = node.attributes
    pads = list(attributes.get("pads", [0, 0, 0, 0]))
    strides = tuple(attributes.get("strides", (1, 1)))
    group = int(attributes.get("group", 1))
    if not (weight is not None and weight.ndim == 4 and np.issubdtype(weight.dtype, np.floating)
            and attributes.get("auto_pad", "NOTSET") == "NOTSET" and pads[:2] == pads[2:]):
        return None
    if supports(weight.shape, strides, attributes.get("dilations", (1, 1)), group):
        return "winograd"
    if pointwise_conv(graph, node) and group == 1:
        return "gemm"
    return None


def _conv_inputs(graph: Graph, shapes, names: set[str]) -> dict[str, torch.Tensor]:
    """The values `names` from one run on representative inputs ({} when the run fails)."""
    from sparse_rt.runtime.session import InferenceSession
    from sparse_rt.scheduler.workload import representative_feeds

    try:
        session = InferenceSession(graph, retain_memory=False)
        values = session.intermediates(representative_feeds(graph, shapes), names)
    except (RuntimeError, ValueError, TypeError, IndexError):
        return {}
    return {name: value.contiguous(memory_format=torch.channels_last) for name, value in values.items()
            if name in names and value.dim() == 4}


def _timings(node: Node, weight: np.ndarray, x: torch.Tensor, evict, algorithm: str) -> tuple[float, float]:
    """(direct, `algorithm`) seconds of the conv on x, activation and bias included, timed alike."""
    from sparse_rt.ops.conv import ConstantWeightConv2d
    from sparse_rt.scheduler.tune import best_time

    w = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
    padding = list(node.attributes.get("pads", [0, 0, 0, 0]))[:2]
    activation = node.attributes.get("activation")
    bounds = (node.attributes["clip_min"], node.attributes["clip_max"]) if activation == "clip" else None
    bias = torch.zeros(w.shape[0])
    if evict is not None:
        runs = {"min_runs": 3, "max_runs": 7, "before": evict}
    elif len(x) > 1:  # a batch runs for milliseconds: three runs tell
        runs = {"warmup": 1, "min_runs": 3, "max_runs": 3}
    else:
        runs = {}
    seconds = []
    for start in (None, 1):
        conv = ConstantWeightConv2d(w, 1, padding, 1, 1, activation, bounds=bounds,
                                    **{f"{algorithm}_from": start})
        seconds.append(best_time(lambda rows, conv=conv: conv(rows, w, bias), x, **runs))
    return seconds[0], seconds[1]
