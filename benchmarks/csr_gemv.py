"""CSR at batch 1 against dense, in GB/s: the row kernel, the slices kernel, the native dense
kernel and onnxruntime's dense Gemm on the same layer, in one process, round-robin.

For each shape (IN x OUT) and density, with a bias, one input row:

  rows        csr_cpu_rowwise, gemv_layout "rows" (a gather dot product per row: the kernel
              before the slices layout)
  slices      csr_cpu_rowwise, gemv_layout "slices", x read with scalar loads and with the gather
              (all on --threads threads: gemv_threads 0)
  dense       dense_cpu_native on the dense weight
  ort         onnxruntime Gemm on the dense weight (intra_op_num_threads = --threads)

Two timings per kernel of ours: `call` (the bound layer, Python included: what a session
pays) and `native` (the ctypes call of the C kernel alone, arguments made beforehand).
Medians of warm calls (the JSON also keeps each minimum). GB/s counts the bytes each reads: for CSR the real nonzeros'
values and indices (padding not counted), its row offsets (rows) or slice offsets, lane rows
and lane biases (slices), x and y; for dense the weight, bias, x and y (ort: the same bytes).
`vs dense` is CSR GB/s over dense GB/s at the same timing (the issue's 60 % target).

--chain adds a stack at batch 1: --blocks x (384->1536, GELU, 1536->384) at each density, its
layers called one by one (CSR slices; native dense) against one C call for all of them
(`CsrRowChain`; `DenseChain`), and onnxruntime (Gemm + Gelu nodes).

    python benchmarks/csr_gemv.py                     (2 threads, all shapes, 90 % and 95 %)
    python benchmarks/csr_gemv.py --threads 1 --json benchmarks/results/csr_gemv_1t.json
    python benchmarks/csr_gemv.py --shapes "" --chain
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import onnxruntime as ort
import torch

from sparse_rt.bench_layers import ort_session, ort_stack, parse_shape, time_round_robin
from sparse_rt.formats import CsrFormat, DenseFormat
from sparse_rt.kernels.cpu._dense_native import dense_library
from sparse_rt.kernels.cpu._launch import pointer
from sparse_rt.kernels.cpu.csr import CsrRowChain, csr_gemv
from sparse_rt.kernels.cpu.dense import DenseChain
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.registry import get_kernel

SHAPES = ("384x384", "1536x384", "384x1536", "768x3072", "3072x768")
DENSITIES = (10, 5)
# every layout on all --threads (gemv_threads 0), whatever the default config caps
CSR_LAYOUTS = {
    "rows": {"gemv_layout": "rows", "x_loads": "gather", "gemv_threads": 0},
    "slices_scalar": {"gemv_layout": "slices", "x_loads": "scalar", "gemv_threads": 0},
    "slices_gather": {"gemv_layout": "slices", "x_loads": "gather", "gemv_threads": 0},
}


def csr_native_call(bound, x: torch.Tensor, y: torch.Tensor, threads: int):
    """The C kernel call of a bound CSR layer alone, arguments made beforehand."""
    packed, options = bound.packed, bound.options
    if packed.slices is not None:
        launch = bound._launch(threads)
        return lambda: bound._slices_gemv(*launch, x.data_ptr(), y.data_ptr(), 0)
    split = packed.tasks(threads)
    function = csr_gemv(packed.index, options.unroll)
    args = (threads, split.shape[0] - 1, pointer(split), pointer(packed.row_offsets), pointer(packed.column_indices),
            pointer(packed.values), pointer(packed.bias), x.data_ptr(), y.data_ptr())
    return lambda: function(*args)


def csr_bytes(bound, fmt: CsrFormat) -> int:
    """Bytes a batch-1 call reads and writes (real nonzeros only, not the slices' padding)."""
    out_features, in_features = fmt.shape
    packed = bound.packed
    nonzeros = fmt.nnz * (4 + packed.column_indices.element_size())
    if packed.slices is not None:
        slices = packed.slices
        metadata = slices.slice_offsets.numel() * 8 + slices.slice_rows.numel() * 4 + slices.slice_bias.numel() * 4
    else:
        metadata = packed.row_offsets.numel() * 8 + (out_features * 4 if packed.bias is not None else 0)
    return nonzeros + metadata + 4 * in_features + 4 * out_features


def run_case(in_features: int, out_features: int, density: float, threads: int, iters: int) -> dict:
    weight = torch.randn(out_features, in_features) * (torch.rand(out_features, in_features) < density)
    bias = torch.randn(out_features)
    fmt, dense_fmt = CsrFormat.from_dense(weight), DenseFormat.from_dense(weight)
    device = torch.device("cpu")
    x = torch.randn(1, in_features)
    y = torch.empty(1, out_features)
    csr_kernel, dense_kernel = get_kernel("csr_cpu_rowwise"), get_kernel("dense_cpu_native")
    base = csr_kernel.configs(fmt, device)[0]
    runs, nbytes = {}, {}
    for name, layout in CSR_LAYOUTS.items():
        bound = csr_kernel.bind(fmt, bias, {**base, **layout}, device)
        torch.testing.assert_close(bound(x), x @ weight.T + bias, rtol=1e-4, atol=1e-4)
        runs[f"{name}:call"] = lambda bound=bound: bound(x)
        runs[f"{name}:native"] = csr_native_call(bound, x, y, threads)
        nbytes[name] = csr_bytes(bound, fmt)
    dense = dense_kernel.bind(dense_fmt, bias, dense_kernel.configs(dense_fmt, device)[0], device)
    options, packed = dense.options, dense.packed
    dense_args = (threads, 1, in_features, out_features, pointer(packed.panels), pointer(packed.bias), x.data_ptr(),
                  y.data_ptr(), options.panels_per_task, options.rows_per_tile, options.k_block, 0)
    runs["dense:call"] = lambda: dense(x)
    runs["dense:native"] = lambda: dense_library()(*dense_args)
    nbytes["dense"] = nbytes["ort"] = (out_features * in_features + 2 * out_features + in_features) * 4 + 4 * out_features
    session = ort_session(weight, bias, threads)
    x_numpy = x.numpy()
    runs["ort:call"] = lambda: session.run(None, {"x": x_numpy})
    samples = time_round_robin(runs, iters)
    medians = {name: statistics.median(times) for name, times in samples.items()}
    row = {"shape": f"{in_features}x{out_features}", "density": density, "nnz": fmt.nnz, "threads": threads,
           "index": str(fmt.column_indices.dtype).removeprefix("torch."), "simd_width": simd_width(), "bytes": nbytes}
    for name, seconds in medians.items():
        kernel, _, timing = name.partition(":")
        row[f"{kernel}_{timing}_us"] = seconds * 1e6
        row[f"{kernel}_{timing}_min_us"] = min(samples[name]) * 1e6
        row[f"{kernel}_{timing}_gbs"] = nbytes[kernel] / seconds / 1e9
    for name in CSR_LAYOUTS:
        for timing in ("call", "native"):
            row[f"{name}_{timing}_vs_dense"] = row[f"{name}_{timing}_gbs"] / row[f"dense_{timing}_gbs"]
    return row


CHAIN_DIMS = (384, 1536)


def run_chain(blocks: int, density: float, threads: int, iters: int) -> dict:
    """The stack's layers one by one against one C call, CSR and dense, and onnxruntime."""
    model, hidden = CHAIN_DIMS
    device = torch.device("cpu")
    csr_kernel, dense_kernel = get_kernel("csr_cpu_rowwise"), get_kernel("dense_cpu_native")
    layers, csr_layers, dense_layers = [], [], []
    for index in range(2 * blocks):
        out_features, in_features = (hidden, model) if index % 2 == 0 else (model, hidden)
        weight = torch.randn(out_features, in_features) * (torch.rand(out_features, in_features) < density)
        bias = torch.randn(out_features)
        layers.append((weight, bias))
        activation = {"activation": "gelu"} if index % 2 == 0 else {}
        fmt, dense_fmt = CsrFormat.from_dense(weight), DenseFormat.from_dense(weight)
        config = {**csr_kernel.configs(fmt, device)[0], "gemv_layout": "slices", "gemv_threads": 0}
        csr_layers.append(csr_kernel.bind(fmt, bias, config, device, **activation))
        dense_layers.append(dense_kernel.bind(dense_fmt, bias, dense_kernel.configs(dense_fmt, device)[0], device,
                                              **activation))
    x = torch.randn(1, model)
    x_numpy = x.numpy()

    def one_by_one(bound):
        y = x
        for layer in bound:
            y = layer(y)
        return y

    csr_chain, dense_chain = CsrRowChain(csr_layers), DenseChain(dense_layers)
    session = ort_stack(layers, threads)
    reference = torch.from_numpy(session.run(None, {"x": x_numpy})[0])
    for y in (one_by_one(csr_layers), csr_chain(x), dense_chain(x)):
        torch.testing.assert_close(y, reference, rtol=1e-3, atol=1e-3)
    runs = {
        "csr_layers": lambda: one_by_one(csr_layers),
        "csr_chain": lambda: csr_chain(x),
        "dense_layers": lambda: one_by_one(dense_layers),
        "dense_chain": lambda: dense_chain(x),
        "ort": lambda: session.run(None, {"x": x_numpy}),
    }
    samples = time_round_robin(runs, iters)
    row = {"suite": "chain", "blocks": blocks, "dims": list(CHAIN_DIMS), "density": density, "threads": threads}
    for name, times in samples.items():
        row[f"{name}_us"] = statistics.median(times) * 1e6
        row[f"{name}_min_us"] = min(times) * 1e6
    return row


def print_chain(row: dict) -> None:
    names = ("csr_layers", "csr_chain", "dense_layers", "dense_chain", "ort")
    print(f"{row['density'] * 100:>4.0f}%" + "".join(f"{row[f'{name}_us']:>14.1f}" for name in names)
          + f"{row['ort_us'] / row['csr_chain_us']:>10.2f}x", flush=True)


COLUMNS = [("rows", "rows"), ("sl.scal", "slices_scalar"), ("sl.gath", "slices_gather"), ("dense", "dense")]


def print_header() -> None:
    cells = "".join(f"{label:>16}" for label, _ in COLUMNS)
    print(f"{'shape':<10}{'dens':>5}{'timing':>8}{cells}{'ort':>16}   best CSR vs dense")


def print_row(row: dict) -> None:
    for timing in ("call", "native"):
        cells = "".join(f"{row[f'{key}_{timing}_us']:>7.1f}us{row[f'{key}_{timing}_gbs']:>5.1f}GB" for _, key in COLUMNS)
        ort_cell = f"{row['ort_call_us']:>7.1f}us{row['ort_call_gbs']:>5.1f}GB" if timing == "call" else " " * 16
        best = max(row[f"{name}_{timing}_vs_dense"] for name in CSR_LAYOUTS if name != "rows")
        print(f"{row['shape']:<10}{row['density'] * 100:>4.0f}%{timing:>8}{cells}{ort_cell}   "
              f"{best:.2f} (rows {row[f'rows_{timing}_vs_dense']:.2f})", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="IN x OUT, comma separated")
    parser.add_argument("--densities", default=",".join(map(str, DENSITIES)), help="percent nonzero, comma separated")
    parser.add_argument("--iters", type=int, default=300, help="timed calls per contender")
    parser.add_argument("--chain", action="store_true", help="also time the stack of --blocks FFN blocks")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, SIMD width {simd_width()}, torch {torch.__version__}, onnxruntime "
          f"{ort.__version__}, median of {args.iters} warm calls; us and GB/s per cell", flush=True)
    rows = []
    shapes = [parse_shape(shape) for shape in args.shapes.split(",") if shape]
    densities = [float(density) / 100 for density in args.densities.split(",")]
    if shapes:
        print_header()
    for in_features, out_features in shapes:
        for density in densities:
            row = run_case(in_features, out_features, density, args.threads, args.iters)
            print_row(row)
            rows.append(row)
    if args.chain:
        print(f"\nchain at batch 1: {args.blocks} x ({CHAIN_DIMS[0]}->{CHAIN_DIMS[1]}, GELU, "
              f"{CHAIN_DIMS[1]}->{CHAIN_DIMS[0]}), median us")
        print(f"{'dens':>5}{'CSR layers':>14}{'CSR chain':>14}{'dense layers':>14}{'dense chain':>14}{'ort':>14}"
              f"{'ort/chain':>10}")
        for density in densities:
            row = run_chain(args.blocks, density, args.threads, args.iters)
            print_chain(row)
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
