"""The project's own op: SparseLinear (domain ai.sparse_rt), y = x @ W.T + b.

Node layout (the same in memory and on disk):
  inputs:     [x, bias or "", *format arrays]  (arrays and bias are constants)
  attributes: format (str), arrays (names of the format fields, in input order),
              kernel (str), config (JSON str), the format's own attributes, and
              optionally activation ("gelu": y = GELU(x @ W.T + b), erf form; "relu"), which
              kernels with that activation apply in registers, others after, and
              dispatch (JSON [[from rows, kernel, config], ...]): kernels of the same
              format by row count, where the tuner found different ones fastest, and
              output_layout ("batch_tiles": batched outputs stay in the CSR kernel's
              input tiles, for the one CSR layer that reads them; see chain_csr_layers),
              tuned_rows (ints: the row counts the tuner chose the format at),
              cold_rows (ints: those of them timed with the weight evicted from the caches), and
              quantization (JSON): the int8-or-fp32 verdict and the error measured for it.
"""

from __future__ import annotations

import bisect
import json
from typing import Any

import numpy as np
import torch

from sparse_rt.formats.base import WeightFormat, get_format
from sparse_rt.ir.graph import SPARSE_DOMAIN, Node
from sparse_rt.ir.tensors import tensor_view
from sparse_rt.kernels.activation import bind_with_activation
from sparse_rt.kernels.registry import BoundLinear, Config, Kernel, kernels_for
from sparse_rt.ops.registry import BindContext, register_op

_RESERVED = ("format", "arrays", "kernel", "config", "tuned_config", "timings", "activation", "dispatch",
             "output_layout", "tuned_rows", "cold_rows", "quantization")
# The kernel that can leave its output in batch tiles, and read them.
TILED_KERNEL = "csr_cpu_rowwise"


def sparse_linear_node(
    name: str,
    x: str,
    y: str,
    bias: str,
    weight_arrays: dict[str, str],
    weight: WeightFormat,
    kernel: str,
    config: Config,
    timings: dict[str, dict[int, float]] | None = None,
    dispatch: list[tuple[int, str, Config]] | None = None,
    tuned_rows: tuple[int, ...] | None = None,
    quantization: str | None = None,
    cold_rows: tuple[int, ...] = (),
) -> Node:
    """Build a SparseLinear node; `weight_arrays` maps format field -> constant name.

    timings (optional): the tuner's measurements, kept for `explain`.
    dispatch (optional): [(from rows, kernel, config)], ascending from 1 row.
    tuned_rows (optional): the row counts the format was chosen at, for `explain`.
    quantization (optional): the precision verdict (JSON), kept for `explain`.
    cold_rows (optional): the tuned row counts timed with the weight out of the caches.
    """
    attributes: dict[str, Any] = {
        "format": weight.name,
        "arrays": list(weight_arrays),
        "kernel": kernel,
        "config": json.dumps(config, sort_keys=True),
    }
    if timings is not None:
        attributes["timings"] = json.dumps(timings, sort_keys=True)
    if tuned_rows:
        attributes["tuned_rows"] = [int(r) for r in tuned_rows]
    if cold_rows:
        attributes["cold_rows"] = [int(r) for r in cold_rows]
    if dispatch:
        attributes["dispatch"] = json.dumps([[rows, name, cfg] for rows, name, cfg in dispatch], sort_keys=True)
    if quantization is not None:
        attributes["quantization"] = quantization
    for key, value in weight.attributes().items():
        if key in _RESERVED:
            raise ValueError(f"format {weight.name!r}: attribute name {key!r} is reserved")
        attributes[key] = list(value) if isinstance(value, (tuple, list)) else int(value)
    return Node("SparseLinear", [x, bias, *weight_arrays.values()], [y], attributes, name, SPARSE_DOMAIN)


def check_node(node: Node) -> None:
    """The layout above: inputs [x, bias or ""], a string `format`, `arrays` a list of names, and `kernel`
    and `config` strings when present; ValueError if not."""
    if len(node.inputs) < 2 or len(node.outputs) != 1:
        raise ValueError(f"SparseLinear {node.label()!r}: expected inputs [x, bias or '', *weight arrays] and one "
                         f"output, got {len(node.inputs)} inputs and {len(node.outputs)} outputs")
    for name, kind in (("format", str), ("arrays", list), ("kernel", str), ("config", str)):
        value = node.attributes.get(name)
        if value is None and name in ("kernel", "config"):
            continue
        if not isinstance(value, kind) or (kind is list and not all(isinstance(v, str) for v in value)):
            raise ValueError(f"SparseLinear {node.label()!r}: expected attribute {name!r} to be a "
                             f"{'list of strings' if kind is list else 'string'}, got {value!r}")


def weight_of(node: Node, constants: dict[str, np.ndarray]) -> WeightFormat:
    """Rebuild the weight format of a SparseLinear node from the graph's constants."""
    check_node(node)
    fields = node.attributes["arrays"]
    names = node.inputs[2:]
    if len(fields) != len(names):
        raise ValueError(
            f"SparseLinear {node.label()!r}: expected {len(fields)} weight arrays {fields}, got {len(names)} inputs"
        )
    missing = [n for n in names if n not in constants]
    if missing:
        raise ValueError(f"SparseLinear {node.label()!r}: weight arrays {missing} are not constants")
    arrays = {f: tensor_view(constants[n]) for f, n in zip(fields, names)}
    attributes = {k: v for k, v in node.attributes.items() if k not in _RESERVED}
    return get_format(node.attributes["format"]).from_arrays(arrays, attributes)


def bias_of(node: Node, constants: dict[str, np.ndarray]) -> torch.Tensor | None:
    name = node.inputs[1]
    if not name:
        return None
    if name not in constants:
        raise ValueError(f"SparseLinear {node.label()!r}: bias {name!r} is not a constant")
    return tensor_view(constants[name])


def choose_kernel(node: Node, weight: WeightFormat, device: torch.device) -> tuple[Kernel, Config]:
    """The node's recorded kernel if it runs here, else the default kernel for this device."""
    name = node.attributes.get("kernel", "")
    available = kernels_for(weight, device)
    for kernel in available:
        if kernel.name == name:
            config = json.loads(node.attributes.get("config", "{}") or "{}")
            if not isinstance(config, dict):
                raise ValueError(f"SparseLinear {node.label()!r}: config: expected a JSON object, got {config!r}")
            return kernel, config
    if not available:
        raise ValueError(f"no kernel for format {weight.name!r} on device {device}")
    kernel = available[0]
    return kernel, kernel.configs(weight, device)[0]


def dispatch_of(node: Node) -> list[tuple[int, str, Config]]:
    """The node's [(from rows, kernel, config)] by row count, [] when it has none."""
    text = node.attributes.get("dispatch")
    if not text:
        return []
    entries = json.loads(text)
    well_formed = (
        isinstance(entries, list) and entries
        and all(isinstance(e, list) and len(e) == 3 and type(e[0]) is int and isinstance(e[1], str)
                and isinstance(e[2], dict) for e in entries)
    )
    if not well_formed or entries[0][0] != 1 or any(a[0] >= b[0] for a, b in zip(entries, entries[1:])):
        raise ValueError(f"SparseLinear {node.label()!r}: dispatch: expected [[1, kernel, config], ...] with "
                         f"ascending row counts, got {text!r}")
    return [(rows, name, cfg) for rows, name, cfg in entries]


def batch_rows(x: torch.Tensor) -> int:
    """The rows a linear layer sees in x [..., in]: the product of the leading dims."""
    return x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0


def segment(starts: list[int], rows: int) -> int:
    """Index of the entry of ascending `starts` (starts[0] == 1) that covers `rows` rows (0 for none)."""
    return bisect.bisect_right(starts, rows) - 1 if rows else 0


class BoundSparseLinear:
    """A bound SparseLinear node: (x, *weight inputs) -> y; the bias and weight arrays are
    already inside its kernels. `linears[i]` runs from `starts[i]` rows on (starts[0] == 1;
    no rows run the first)."""

    def __init__(self, starts: list[int], linears: list[BoundLinear]) -> None:
        self.starts = starts
        self.linears = linears

    def __call__(self, x: torch.Tensor, *weight_inputs) -> torch.Tensor:
        if len(self.linears) == 1:
            return self.linears[0](x)
        return self.at(batch_rows(x))(x)

    def at(self, rows: int) -> BoundLinear:
        """The kernel that runs x with `rows` rows."""
        return self.linears[segment(self.starts, rows)]


@register_op("SparseLinear", domain=SPARSE_DOMAIN)
def bind_sparse_linear(node: Node, ctx: BindContext) -> BoundSparseLinear:
    weight = weight_of(node, ctx.constants)
    bias = bias_of(node, ctx.constants)
    kernel, config = choose_kernel(node, weight, ctx.device)
    activation = node.attributes.get("activation") or None
    available = {k.name: k for k in kernels_for(weight, ctx.device)}
    dispatch = dispatch_of(node)
    if dispatch and all(name in available for _, name, _ in dispatch):
        return BoundSparseLinear(
            [rows for rows, _, _ in dispatch],
            [bind_with_activation(available[name], weight, bias, cfg, ctx.device, activation) for _, name, cfg in dispatch],
        )
    options = {}
    fused = activation is None or activation in kernel.activations  # else applied to a tensor after the kernel
    if node.attributes.get("output_layout") == "batch_tiles" and kernel.name == TILED_KERNEL and fused:
        options["tiles_out"] = True
    return BoundSparseLinear([1], [bind_with_activation(kernel, weight, bias, config, ctx.device, activation, **options)])
