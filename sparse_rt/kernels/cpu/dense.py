"""Dense linear on the CPU: y = x @ W.T + b with W in DenseFormat.

`dense_cpu_native` packs W once into panels of 2 * VL outputs ([panels, in, 2 * VL],
see `_dense_native`) and runs one C GEMM for every batch size: at batch 1 the row
meets up to 4 panels at a time (4 weight streams), batched each panel feeds a
rows_per_tile x 2 * VL register tile over blocks of 256 rows. On 2 cores it beat torch's F.linear (MKL) and onnxruntime's Gemm at batch
1..32 (benchmarks/layers.py has the numbers).

`DenseChain` runs layers that feed each other (each bound by `bind_dense`) in one C
call: between layers there is no Python, whose cost after a layer has streamed its
weight through the caches was about 17 us a layer (8 layers of 768x3072 at batch 1:
1.41 against 1.56 ms).

`dense_cpu_torch` calls torch's GEMM; it runs everywhere (also where the C kernels
cannot be built) and is the scheduler's other dense candidate.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from sparse_rt.kernels.cpu._dense_native import dense_chain_library, dense_library
from sparse_rt.kernels.cpu._launch import bias_of, check_activation, check_cpu, pointer, rows_of, shaped_like, threads
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.configs import (
    DenseOptions,
    TorchDenseOptions,
    dense_configs,
    parse_options,
    simd_width,
    torch_dense_configs,
)
from sparse_rt.kernels.registry import Config, Kernel, register_kernel

# The epilogue codes of the C kernel (ACT_GELU, ACT_RELU, ACT_CLIP in `_dense_native`).
ACTIVATION_CODES = {None: 0, "gelu": 1, "relu": 2, "clip": 3}
DENSE_CPU_NATIVE_ACTIVATIONS = ("gelu", "relu")


@dataclass(frozen=True)
class DensePacked:
    """W packed for the native GEMM.

    panels: float32 [ceil(out / NR), in, NR], NR = 2 * VL; panels[p, k, j] = W[p * NR + j, k]
    bias:   float32 [ceil(out / NR) * NR] (zeros past `out`, and everywhere without a bias)
    """

    shape: tuple[int, int]
    panels: torch.Tensor
    bias: torch.Tensor


def panel_bias(bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """float32 [ceil(out / NR) * NR], NR = 2 * SIMD width, as the register tiles read it: the
    bias (float32 [out], as `bias_of` returns it), zeros past `out` and everywhere without one."""
    width = 2 * simd_width()
    padded = torch.zeros(-(-out_features // width) * width, dtype=torch.float32)
    if bias is not None:
        padded[:out_features] = bias
    return padded


def pack_dense(weight, bias: torch.Tensor | None) -> DensePacked:
    """Pack a DenseFormat (and bias [out]) into NR-wide panels."""
    out_features, in_features = weight.shape
    width = 2 * simd_width()
    count = -(-out_features // width)
    padded = torch.zeros(count * width, in_features, dtype=torch.float32)
    padded[:out_features] = weight.to_dense()
    panels = padded.view(count, width, in_features).transpose(1, 2).contiguous()
    bias = panel_bias(bias_of(bias, out_features, "dense_linear"), out_features)
    return DensePacked(shape=(out_features, in_features), panels=panels, bias=bias)


def dense_linear(x: torch.Tensor, packed: DensePacked, options: DenseOptions,
                 activation: str | None = None, residual: torch.Tensor | None = None,
                 bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """x: float32 [..., in] -> y: float32 [..., out] = activation(x @ W.T + bias (+ residual)).
    activation: None, "gelu", "relu" or "clip" to `bounds` (lo, hi); residual: float32 [rows, out]
    contiguous, rows as in x, added before the activation."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, "dense_linear")
    if residual is not None and (residual.dtype != torch.float32 or tuple(residual.shape) != (rows.shape[0], out_features)
                                 or not residual.is_contiguous()):
        raise ValueError(f"dense_linear: expected a contiguous float32 residual [{rows.shape[0]}, {out_features}], "
                         f"got {str(residual.dtype).removeprefix('torch.')} {list(residual.shape)}")
    if activation == "clip" and bounds is None:
        raise ValueError("dense_linear: activation 'clip' needs bounds (lo, hi)")
    lo, hi = bounds if activation == "clip" else (0.0, 0.0)
    y = torch.empty(rows.shape[0], out_features, dtype=torch.float32)
    if rows.shape[0]:
        dense_library()(
            threads(), rows.shape[0], in_features, out_features, pointer(packed.panels), pointer(packed.bias),
            pointer(rows), pointer(residual), pointer(y), options.panels_per_task, options.rows_per_tile,
            options.k_block, ACTIVATION_CODES[activation], lo, hi,
        )
    return shaped_like(y, x)


class BoundDense:
    """x -> dense_linear(x, packed, options, activation): a layer bound to the native kernel."""

    def __init__(self, packed: DensePacked, options: DenseOptions, activation: str | None) -> None:
        self.packed = packed
        self.options = options
        self.activation = activation

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return dense_linear(x, self.packed, self.options, self.activation)


# weight -> (bias, its DensePacked): a layer bound for several row ranges (or configs) shares
# one packed copy of its weight, for as long as the weight format object lives.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packed_once(weight, bias: torch.Tensor | None) -> DensePacked:
    """pack_dense(weight, bias), packed once for every bind of the same weight and bias objects."""
    cached = _PACKED.get(weight)
    if cached is None or cached[0] is not bias:
        cached = (bias, pack_dense(weight, bias))
        _PACKED[weight] = cached
    return cached[1]


def bind_dense(weight, bias: torch.Tensor | None, config: Config, device: torch.device,
               activation: str | None = None) -> BoundDense:
    """Kernel.bind: pack once (shared by every bind of the same weight and bias), return
    x -> dense_linear(x), its activation ("gelu" or "relu") fused."""
    check_cpu(device, "dense_linear")
    check_activation(activation, "dense_linear", DENSE_CPU_NATIVE_ACTIVATIONS)
    return BoundDense(packed_once(weight, bias), parse_options(DenseOptions, config), activation)


class DenseChain:
    """Layers bound by `bind_dense` where each reads the previous one's output, run in one
    C call: x float32 [..., in of the first] -> y float32 [..., out of the last]."""

    def __init__(self, layers: Sequence[BoundDense]) -> None:
        if len(layers) < 2:
            raise ValueError(f"DenseChain: expected at least 2 layers, got {len(layers)}")
        for i, (a, b) in enumerate(zip(layers, layers[1:])):
            if a.packed.shape[0] != b.packed.shape[1]:
                raise ValueError(f"DenseChain: layer {i} gives {a.packed.shape[0]} features but layer {i + 1} "
                                 f"takes {b.packed.shape[1]}")
        self.layers = tuple(layers)
        self.in_features = layers[0].packed.shape[1]
        self.out_features = layers[-1].packed.shape[0]
        self._max_between = max(layer.packed.shape[0] for layer in layers[:-1])
        self._table = torch.tensor(
            [[layer.packed.shape[1], layer.packed.shape[0], layer.options.panels_per_task,
              layer.options.rows_per_tile, layer.options.k_block, ACTIVATION_CODES[layer.activation],
              layer.packed.panels.data_ptr(), layer.packed.bias.data_ptr()] for layer in layers],
            dtype=torch.int64,
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = rows_of(x, self.in_features, "dense_chain")
        count = rows.shape[0]
        y = torch.empty(count, self.out_features, dtype=torch.float32)
        if count:
            work = torch.empty(2 * count * self._max_between, dtype=torch.float32)
            dense_chain_library()(
                threads(), count, len(self.layers), pointer(self._table), pointer(rows), pointer(work),
                self._max_between, pointer(y),
            )
        return shaped_like(y, x)


def bind_torch_dense(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind for torch's GEMM: W (or a contiguous W.T) in float32, then F.linear / addmm."""
    check_cpu(device, "torch_dense_linear")
    options = parse_options(TorchDenseOptions, config)
    out_features, in_features = weight.shape
    matrix = weight.to_dense().to(torch.float32).contiguous()
    bias = bias_of(bias, out_features, "torch_dense_linear")
    if options.layout == "in_out":
        matrix_t = matrix.T.contiguous()

        def run(x: torch.Tensor) -> torch.Tensor:
            rows = rows_of(x, in_features, "torch_dense_linear")
            y = rows @ matrix_t if bias is None else torch.addmm(bias, rows, matrix_t)
            return shaped_like(y, x)

        return run

    def run(x: torch.Tensor) -> torch.Tensor:
        rows = rows_of(x, in_features, "torch_dense_linear")
        return shaped_like(F.linear(rows, matrix, bias), x)

    return run


def dense_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: x @ W.T + b."""
    return F.linear(x, weight.to_dense().to(x.dtype), None if bias is None else bias.to(x.dtype))


DENSE_CPU_NATIVE = register_kernel(
    Kernel(
        name="dense_cpu_native",
        format="dense",
        backend="cpu",
        bind=bind_dense,
        configs=dense_configs,
        supports=lambda weight, device: native_available(),
        activations=DENSE_CPU_NATIVE_ACTIVATIONS,
    )
)

DENSE_CPU_TORCH = register_kernel(
    Kernel(
        name="dense_cpu_torch",
        format="dense",
        backend="cpu",
        bind=bind_torch_dense,
        configs=torch_dense_configs,
    )
)
