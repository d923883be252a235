"""Lowering of linear layers to SparseLinear nodes.

Recognised (after constant folding, so weights are constants):
  Gemm(x, B, C)           transA=0, transB 0 or 1; alpha and beta folded into W and b
  MatMul(x, W[in, out])   W constant and 2-D; a following Add of a constant [out] bias is fused
  Conv(x, W[out, in, 1, 1]) 1x1 kernel, group 1, stride 1, no padding (1-D and 2-D convs):
                          Transpose to channels-last, SparseLinear, Transpose back; where the
                          chosen format is dense, or a 2-D conv's chosen kernel does not beat
                          the convolution by PATCH_MARGIN (`_lowering_pays`), the Conv stays
                          (the convolution kernel reads the activations in place and fuses
                          the ReLU: no transposes)
  Conv(x, W[out, in, kh, kw]) any other 2-D conv of group 1 (strides, dilations, explicit
                          pads): Transpose to channels-last, Im2Col (its input patches as rows
                          of kh * kw * in, `sparse_rt.ops.im2col`), SparseLinear over W laid
                          out [out, kh, kw, in], Transpose back; tuned at its output positions
                          (N x H' x W' rows). The Conv stays where the chosen format is
                          dense, where the input has under IM2COL_MIN_CHANNELS channels, and
                          where the chosen kernel's time plus the Im2Col copy's is not well
                          below the dense convolution's, timed at the layer's rows
                          (`_lowering_pays`).
                          Int8 weights of such a layer are not calibrated on its patch rows.
Linear layers (Gemm, MatMul) that read the same input, as an attention block's
query, key and value projections do, are merged into one layer whose output a
Split cuts back apart: one kernel call instead of three, one transposition of x
for the batched kernels. Each linear layer's weight goes to `choose(layer)`, which
returns the format, kernel and config to use (a heuristic or the autotuner, see
sparse_rt.scheduler).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from sparse_rt.formats.base import WeightFormat
from sparse_rt.converters.fusion import only_gelu_reader
from sparse_rt.ir.graph import SPARSE_DOMAIN, Graph, Node
from sparse_rt.kernels.registry import Config
from sparse_rt.ops.conv import ConstantWeightConv2d
from sparse_rt.ops.im2col import im2col
from sparse_rt.ops.sparse_linear import sparse_linear_node


@dataclass(frozen=True)
class LinearLayer:
    """A linear layer found in a graph: weight [out, in] float32, bias [out] or None.

    activation: "gelu" when a GELU (erf form) is the only reader of its output, which
    conversion then fuses into it (so the tuner times kernels with it).
    rows: the rows per call it sees at the model's representative input shapes, when known.
    calibration: float32 [rows, in], its inputs on the conversion's calibration feeds, when
    given (int8 weights are then rounded against them)."""

    name: str
    weight: np.ndarray
    bias: np.ndarray | None
    activation: str | None = None
    rows: int | None = None
    calibration: np.ndarray | None = None


@dataclass(frozen=True)
class Choice:
    """What runs a layer: the weight in some format, a kernel of that format and its config.

    timings: when tuned, {candidate label: {batch: seconds}} (saved with the model).
    dispatch: when the best kernel of this format differs between batch sizes, the
    [(from rows, kernel, config)] to use from each row count on, ascending from 1.
    tuned_rows: the row counts the format was chosen at (the others in timings only
    decided the dispatch).
    quantization: when int8 was considered, the precision verdict as JSON
    (`sparse_rt.scheduler.quantize.Precision`).
    cold_rows: the tuned row counts timed with the weight evicted from the caches (a model
    too large for the last-level cache; `sparse_rt.scheduler.cold`).
    bias: float32 [out] to run with in place of the layer's own (int8 weights rounded against
    calibration inputs carry a bias corrected for the rounding's mean output error).
    """

    weight: WeightFormat
    kernel: str
    config: Config
    timings: dict[str, dict[int, float]] | None = None
    dispatch: list[tuple[int, str, Config]] | None = None
    tuned_rows: tuple[int, ...] | None = None
    quantization: str | None = None
    cold_rows: tuple[int, ...] = ()
    bias: np.ndarray | None = None


Chooser = Callable[[LinearLayer], Choice]


@dataclass(frozen=True)
class _Match:
    """A linear layer to lower: `node` is where its SparseLinear goes, `outputs` the values it
    defines (one per merged layer, in order, `sizes` their features), `absorbed` the other
    nodes it replaces."""

    node: Node
    layer: LinearLayer
    x: str
    outputs: tuple[str, ...]
    sizes: tuple[int, ...]
    absorbed: tuple[Node, ...]


def linear_inputs(graph: Graph) -> dict[str, int]:
    """{x name: its feature axis} for the values Gemm and MatMul (axis -1) and Conv (axis 1)
    nodes read as x, and for the outputs (axis 1) of Convs other than pointwise ones, whose
    rows are their output positions: a superset of the values whose rows
    `lower_linear_layers` looks up."""
    axes = {node.inputs[0]: 1 if node.op_type == "Conv" else -1 for node in graph.nodes
            if not node.domain and node.op_type in ("Gemm", "MatMul", "Conv") and node.inputs}
    axes.update({node.outputs[0]: 1 for node in graph.nodes if _patch_conv(graph, node)})
    return axes


def lower_linear_layers(
    graph: Graph, choose: Chooser, progress: bool = False, keep_apart: Callable[[LinearLayer], bool] | None = None,
    rows: Mapping[str, int] | None = None, calibration: Mapping[str, np.ndarray] | None = None,
    device: torch.device | str = "cpu",
) -> int:
    """Replace every recognised linear layer by a SparseLinear node (layers reading the same
    input merged into one; a 1x1 Conv given a dense weight stays); returns how many
    SparseLinear nodes.

    progress: show a progress bar over the layers while `choose` runs (tuning).
    keep_apart: layers never merged with their siblings (those arriving in a structured format).
    rows: {value name: rows per call} (`scheduler.workload.rows_per_input`), given to `choose`
    as LinearLayer.rows: x's for a layer, y's for a conv lowered through Im2Col.
    calibration: {x name: float32 [rows, in]} (`scheduler.workload.calibration_inputs`), given
    to `choose` as LinearLayer.calibration where its width is the layer's (not for Im2Col).
    device: where the model runs (the chooser's device): a KxK conv's lowering is weighed
    against the convolution there.
    """
    consumers = graph.consumers()
    graph_outputs = {v.name for v in graph.outputs}
    matches = []
    absorbed: set[int] = set()
    for node in graph.nodes:
        if id(node) in absorbed or node.domain:
            continue
        match = _match(graph, node, consumers, graph_outputs)
        if match is not None:
            layer, x, y, extra = match
            rows_key = y if _patch_conv(graph, node) else x
            if rows and rows_key in rows:
                layer = dataclasses.replace(layer, rows=int(rows[rows_key]))
            if calibration and x in calibration and calibration[x].shape[1] == layer.weight.shape[1]:
                layer = dataclasses.replace(layer, calibration=calibration[x])
            if only_gelu_reader(y, consumers, graph_outputs) is not None:  # fuse_linear_activation folds it
                layer = dataclasses.replace(layer, activation="gelu")
            matches.append(_Match(node, layer, x, (y,), (layer.weight.shape[0],), tuple(extra)))
            absorbed.update(id(n) for n in extra)
    matches = _merge_siblings(matches, keep_apart or (lambda layer: False))
    absorbed.update(id(n) for m in matches for n in m.absorbed)
    layers = tqdm(matches, desc="tuning layers", unit="layer", disable=not progress, leave=False)
    replaced = {}
    for m in layers:
        choice = choose(m.layer)
        if _conv_2d(graph, m.node) and not _lowering_pays(graph, m, choice, torch.device(device)):
            replaced[id(m.node)] = [m.node]
        else:
            replaced[id(m.node)] = _emit(graph, m, choice)
    nodes: list[Node] = []
    for node in graph.nodes:
        if id(node) in replaced:
            nodes.extend(replaced[id(node)])
        elif id(node) not in absorbed:
            nodes.append(node)
    graph.nodes = nodes
    graph.prune_unused()
    graph.validate()
    return sum(n.op_type == "SparseLinear" for emitted in replaced.values() for n in emitted)


def _merge_siblings(matches: list[_Match], keep_apart: Callable[[LinearLayer], bool]) -> list[_Match]:
    """Gemm/MatMul layers reading the same x merged into one layer (rows stacked in order);
    the merged layer sits at the first one's node, whose position comes before every reader."""
    siblings: dict[str, list[_Match]] = {}
    for m in matches:
        if m.node.op_type != "Conv" and not keep_apart(m.layer):
            siblings.setdefault(m.x, []).append(m)
    merged = {id(group[0]): group for group in siblings.values() if len(group) > 1}
    dropped = {id(m) for group in merged.values() for m in group[1:]}
    result = []
    for m in matches:
        if id(m) in dropped:
            continue
        group = merged.get(id(m))
        if group is None:
            result.append(m)
            continue
        weight = np.concatenate([g.layer.weight for g in group])
        bias = None
        if any(g.layer.bias is not None for g in group):
            bias = np.concatenate([
                g.layer.bias if g.layer.bias is not None else np.zeros(g.layer.weight.shape[0], np.float32)
                for g in group
            ])
        layer = LinearLayer("+".join(g.layer.name for g in group), weight, bias, rows=m.layer.rows,
                            calibration=m.layer.calibration)
        outputs = tuple(y for g in group for y in g.outputs)
        sizes = tuple(size for g in group for size in g.sizes)
        absorbed = tuple(n for g in group for n in g.absorbed) + tuple(g.node for g in group[1:])
        result.append(_Match(m.node, layer, m.x, outputs, sizes, absorbed))
    return result


def _float_constant(graph: Graph, name: str) -> np.ndarray | None:
    array = graph.constants.get(name) if name else None
    if array is None or array.dtype != np.float32:
        return None
    return array


def _match(graph, node, consumers, graph_outputs):
    """(layer, x name, y name, nodes absorbed) if `node` is a lowerable linear layer."""
    label = node.label()
    if node.op_type == "Gemm":
        b = _float_constant(graph, node.inputs[1])
        if b is None or b.ndim != 2 or node.attributes.get("transA", 0):
            return None
        alpha = float(node.attributes.get("alpha", 1.0))
        beta = float(node.attributes.get("beta", 1.0))
        weight = b if node.attributes.get("transB", 0) else b.T
        weight = weight * np.float32(alpha) if alpha != 1.0 else weight
        bias = None
        if len(node.inputs) > 2 and node.inputs[2]:
            c = _float_constant(graph, node.inputs[2])
            if c is None or c.size not in (1, weight.shape[0]) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
                return None
            bias = np.broadcast_to(c.reshape(-1), (weight.shape[0],)) * np.float32(beta)
        return LinearLayer(label, _contiguous(weight), _contiguous(bias)), node.inputs[0], node.outputs[0], []
    if node.op_type == "MatMul":
        w = _float_constant(graph, node.inputs[1])
        if w is None or w.ndim != 2 or node.inputs[0] in graph.constants:
            return None
        weight = _contiguous(w.T)
        y, extra, bias = node.outputs[0], [], None
        users = consumers.get(y, [])
        if y not in graph_outputs and len(users) == 1 and users[0].op_type == "Add" and not users[0].domain:
            add = users[0]
            other = add.inputs[1] if add.inputs[0] == y else add.inputs[0]
            c = _float_constant(graph, other)
            if c is not None and c.size == weight.shape[0] and c.shape[-1] == weight.shape[0] and c.ndim <= 1:
                bias, y, extra = c.reshape(-1), add.outputs[0], [add]
        return LinearLayer(label, weight, _contiguous(bias)), node.inputs[0], y, extra
    if node.op_type == "Conv":
        w = _float_constant(graph, node.inputs[1])
        if w is None or w.ndim not in (3, 4):
            return None
        attrs = node.attributes
        if attrs.get("group", 1) != 1 or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return None
        pointwise = pointwise_conv(graph, node)
        if not pointwise and w.ndim != 4:
            return None
        bias = _float_constant(graph, node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if len(node.inputs) > 2 and node.inputs[2] and bias is None:
            return None
        # [out, in, kh, kw] -> [out, kh, kw, in]: the order of Im2Col's rows
        weight = w.reshape(w.shape[0], w.shape[1]) if pointwise else w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        return LinearLayer(label, _contiguous(weight), _contiguous(bias)), node.inputs[0], node.outputs[0], []
    return None


def _lowering_pays(graph: Graph, match: _Match, choice: Choice, device: torch.device) -> bool:
    """Whether a 2-D conv chosen sparse runs faster lowered (a KxK one through Im2Col) than as
    the Conv: the chosen kernel's time, plus the Im2Col copy's for a KxK conv, below
    PATCH_MARGIN times the dense convolution's, all timed together and alike
    (`scheduler.tune.best_time`) at the layer's rows, when the choice was tuned; without timings
    (the heuristic), where a KxK conv's input has IM2COL_MIN_CHANNELS. A dense weight's 1x1 conv
    stays a Conv this way when the tuner gave it a dense-equivalent format by a hair (MobileNetV2
    dense: bitmask layers, with their transposes and a Clip after, in place of the fused conv)."""
    if choice.weight.name == "dense":
        return False
    weight = graph.constants[match.node.inputs[1]]
    pointwise = pointwise_conv(graph, match.node)
    if not pointwise and weight.shape[1] < IM2COL_MIN_CHANNELS:
        return False
    if not choice.timings:
        return True
    rows = max(choice.tuned_rows or (match.layer.rows or 1,))
    x, geometry = _conv_input(weight.shape, match.node.attributes, rows, device)
    copy = 0.0 if pointwise else _im2col_seconds(x, geometry)
    convolution = _conv_seconds(x, weight, geometry, pointwise)
    return _kernel_seconds(match.layer, choice, rows, device) + copy < PATCH_MARGIN * convolution


# Below this many input channels each patch row is copied in pieces too small to pay (an RGB
# stem: ResNet-50's 7x7 conv took 3.8 ms to copy into rows against 1.3 ms to convolve)
IM2COL_MIN_CHANNELS = 16
# The lowered conv must beat the convolution by this factor, as timed on a small hot input:
# in a model its input comes from memory, and the copy took 0.08-0.10 ms where the timing
# said 0.02 (a dense 128 -> 128 3x3 conv on 16x16 positions, whose dense-equivalent bitmask
# kernel had timed 0.354 + 0.023 against the convolution's 0.39 ms, then ran 0.53 against it)
PATCH_MARGIN = 0.75


def _conv_input(weight_shape, attributes, rows: int, device: torch.device) -> tuple[torch.Tensor, dict]:
    """A channels-last input [1, H, W, in] on `device` on which a conv of `weight_shape`
    [out, in, kh, kw] and the strides and dilations of `attributes`, unpadded, has about
    `rows` output positions (a square of them), and that geometry."""
    _, channels, kh, kw = weight_shape
    strides, dilations = attributes.get("strides", (1, 1)), attributes.get("dilations", (1, 1))
    out_h = max(1, round(rows ** 0.5))
    out_w = -(-rows // out_h)
    size = [(out - 1) * s + d * (k - 1) + 1 for out, s, d, k in zip((out_h, out_w), strides, dilations, (kh, kw))]
    geometry = {"kernel": (kh, kw), "strides": tuple(strides), "dilations": tuple(dilations)}
    return torch.randn(1, *size, channels, device=device), geometry


def _kernel_seconds(layer: LinearLayer, choice: Choice, rows: int, device: torch.device) -> float:
    """Seconds of the chosen kernel on `rows` rows, timed afresh beside the copy and the
    convolution: the tuner's figure may come from its cache, taken while the machine ran
    faster or slower (a VM's memory state moved the convolution from 0.36 to 0.57 ms, and
    a cached 0.353 ms then lowered a dense CNN's 3x3 convs)."""
    from sparse_rt.kernels.activation import bind_with_activation
    from sparse_rt.kernels.registry import get_kernel
    from sparse_rt.scheduler.tune import best_time

    bias = layer.bias if choice.bias is None else choice.bias
    bound = bind_with_activation(get_kernel(choice.kernel), choice.weight,
                                 None if bias is None else torch.from_numpy(bias), choice.config, device,
                                 layer.activation)
    return best_time(bound, torch.randn(rows, layer.weight.shape[1], device=device))


def _im2col_seconds(x: torch.Tensor, geometry: dict) -> float:
    """Seconds of Im2Col on x [1, H, W, in], no padding, timed as the tuner times kernels."""
    from sparse_rt.scheduler.tune import best_time

    return best_time(lambda rows: im2col(rows, geometry["kernel"], geometry["strides"], (0, 0, 0, 0),
                                         geometry["dilations"]), x)


def _conv_seconds(x: torch.Tensor, weight: np.ndarray, geometry: dict, pointwise: bool) -> float:
    """Seconds of the dense convolution the Conv runs as (`ConstantWeightConv2d`) on x, timed
    as the tuner times kernels (the weight is reordered at the untimed warm-up calls): for a
    pointwise conv (`pointwise_conv`) the faster of oneDNN's and the native GEMM
    (`converters.conv_algorithms` picks)."""
    from sparse_rt.scheduler.tune import best_time

    w = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)).to(x.device)
    seconds = []
    for gemm_from in ((None, 1) if pointwise else (None,)):
        conv = ConstantWeightConv2d(w, geometry["strides"], 0, geometry["dilations"], 1, None, gemm_from=gemm_from)
        seconds.append(best_time(lambda rows: conv(rows.permute(0, 3, 1, 2), w), x))  # NCHW shape, channels-last memory
    return min(seconds)


def _conv_2d(graph: Graph, node: Node) -> bool:
    """A Conv (of the default domain) with a constant 4-D weight."""
    weight = graph.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
    return not node.domain and node.op_type == "Conv" and weight is not None and weight.ndim == 4


def _patch_conv(graph: Graph, node: Node) -> bool:
    """A Conv (of the default domain) other than a pointwise one: lowered through Im2Col."""
    return not node.domain and node.op_type == "Conv" and not pointwise_conv(graph, node)


def pointwise_conv(graph: Graph, node: Node) -> bool:
    """A Conv with a 1x1 kernel, stride 1 and no padding: a linear layer over channels as it is."""
    w = graph.constants.get(node.inputs[1]) if len(node.inputs) > 1 else None
    kernel = list(w.shape[2:]) if w is not None else node.attributes.get("kernel_shape")
    if not kernel:
        return False
    spatial = len(kernel)
    attrs = node.attributes
    return (all(k == 1 for k in kernel) and all(s == 1 for s in attrs.get("strides", [1] * spatial))
            and all(p == 0 for p in attrs.get("pads", [0] * 2 * spatial)))


def _contiguous(array: np.ndarray | None) -> np.ndarray | None:
    """A private, writable, C-contiguous float32 copy (constants may be read-only views)."""
    return None if array is None else np.array(array, dtype=np.float32, order="C", copy=True)


def _emit(graph: Graph, match: _Match, choice: Choice) -> list[Node]:
    node, layer, x = match.node, match.layer, match.x
    base = graph.fresh_name(layer.name.replace("/", "_").strip("_") or "linear")
    arrays: dict[str, str] = {}
    for field_name, tensor in choice.weight.arrays().items():
        const = graph.fresh_name(f"{base}.{field_name}")
        graph.constants[const] = _to_numpy(tensor)
        arrays[field_name] = const
    bias = ""
    values = layer.bias if choice.bias is None else choice.bias
    if values is not None:
        bias = graph.fresh_name(f"{base}.bias")
        graph.constants[bias] = values
    def linear(x_name: str, y_name: str) -> Node:
        return sparse_linear_node(base, x_name, y_name, bias, arrays, choice.weight, choice.kernel, choice.config,
                                  choice.timings, choice.dispatch, choice.tuned_rows, choice.quantization,
                                  choice.cold_rows)

    if len(match.outputs) > 1:
        merged = graph.fresh_name(f"{base}.merged")
        return [linear(x, merged), _split(graph, base, merged, match)]
    (y,) = match.outputs
    if node.op_type != "Conv":
        return [linear(x, y)]
    if choice.weight.name == "dense":
        return [node]
    rank = graph.constants[node.inputs[1]].ndim
    to_last, to_first = ([0, 2, 1], [0, 2, 1]) if rank == 3 else ([0, 2, 3, 1], [0, 3, 1, 2])
    x_last, y_last = graph.fresh_name(f"{base}.x_channels_last"), graph.fresh_name(f"{base}.y_channels_last")
    nodes = [Node("Transpose", [x], [x_last], {"perm": to_last}, f"{base}.to_channels_last")]
    if _patch_conv(graph, node):
        attrs, patches = node.attributes, graph.fresh_name(f"{base}.patches")
        geometry = {"kernel_shape": list(graph.constants[node.inputs[1]].shape[2:]),
                    "strides": list(attrs.get("strides", [1, 1])), "dilations": list(attrs.get("dilations", [1, 1])),
                    "pads": list(attrs.get("pads", [0, 0, 0, 0]))}
        nodes.append(Node("Im2Col", [x_last], [patches], geometry, f"{base}.im2col", SPARSE_DOMAIN))
        x_last = patches
    return nodes + [linear(x_last, y_last),
                    Node("Transpose", [y_last], [y], {"perm": to_first}, f"{base}.to_channels_first")]


def _split(graph: Graph, base: str, merged: str, match: _Match) -> Node:
    """Split the merged layer's output [..., sum of outs] back into the layers' outputs."""
    sizes = np.array(match.sizes, dtype=np.int64)
    if graph.opset >= 13:
        split = graph.fresh_name(f"{base}.split_sizes")
        graph.constants[split] = sizes
        return Node("Split", [merged, split], list(match.outputs), {"axis": -1}, f"{base}.split")
    return Node("Split", [merged], list(match.outputs), {"axis": -1, "split": sizes.tolist()}, f"{base}.split")


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy())
