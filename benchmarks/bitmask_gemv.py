"""Bitmask at batch 1 (and, with --batches, more rows) against CSR, N:M and dense, in GB/s of
each format's own bytes, in one process, round-robin.

For each shape (IN x OUT), weight ("50", "70", "90": unstructured random at that share of
zeros; "2:4") and batch, with a bias, every contender's bound layer as a session calls it
(Python included), its default config:

  bitmask   bitmask_cpu_expand on BitmaskFormat
  csr       csr_cpu_rowwise on CsrFormat
  nm        nm_cpu_grouped on NmFormat (2:4 only)
  dense     dense_cpu_native on the dense weight
  ort       onnxruntime Gemm on the dense weight (intra_op_num_threads = --threads)

GB/s = the format's `nbytes` (dense and ort: 4 bytes per weight) / median time; `vs ort` is
ort's time over the bitmask's.

    python benchmarks/bitmask_gemv.py
    python benchmarks/bitmask_gemv.py --shapes 2048x2048 --weights 50,2:4 --json out.json
    python benchmarks/bitmask_gemv.py --shapes 768x3072,3072x768 --weights 50,70 --batches 8,32
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from sparse_rt.bench_layers import nm_mask, ort_session, parse_shape, time_round_robin
from sparse_rt.formats import BitmaskFormat, CsrFormat, DenseFormat, NmFormat
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.registry import get_kernel

SHAPES = ("512x512", "1408x512", "512x1408", "768x3072", "3072x768", "2048x2048")
WEIGHTS = ("50", "70", "90", "2:4")
CONTENDERS = {
    "bitmask": (BitmaskFormat, "bitmask_cpu_expand"),
    "csr": (CsrFormat, "csr_cpu_rowwise"),
    "nm": (NmFormat, "nm_cpu_grouped"),
    "dense": (DenseFormat, "dense_cpu_native"),
}


def weight_of(kind: str, in_features: int, out_features: int) -> torch.Tensor:
    if kind == "2:4":
        keep = nm_mask(out_features, in_features, 2, 4)
    else:
        keep = torch.rand(out_features, in_features) >= int(kind) / 100
    return torch.randn(out_features, in_features) * keep


def run_case(in_features: int, out_features: int, kind: str, batch: int, threads: int, iters: int) -> dict:
    weight = weight_of(kind, in_features, out_features)
    bias = torch.randn(out_features)
    x = torch.randn(batch, in_features)
    expected = x @ weight.T + bias
    device = torch.device("cpu")
    runs, nbytes = {}, {}
    for name, (fmt_class, kernel_name) in CONTENDERS.items():
        if name == "nm" and kind != "2:4":
            continue
        fmt = fmt_class.from_dense(weight)
        kernel = get_kernel(kernel_name)
        bound = kernel.bind(fmt, bias, kernel.configs(fmt, device)[0], device)
        torch.testing.assert_close(bound(x), expected, rtol=1e-4, atol=1e-3)
        runs[name] = lambda bound=bound: bound(x)
        nbytes[name] = fmt.nbytes
    session = ort_session(weight, bias, threads)
    x_numpy = x.numpy()
    runs["ort"] = lambda: session.run(None, {"x": x_numpy})
    nbytes["ort"] = nbytes["dense"]
    samples = time_round_robin(runs, iters)
    row = {"shape": f"{in_features}x{out_features}", "weight": kind, "batch": batch, "threads": threads,
           "simd_width": simd_width(),
           "density": float((weight != 0).float().mean()), "bytes": nbytes}
    for name, times in samples.items():
        seconds = statistics.median(times)
        row[f"{name}_us"] = seconds * 1e6
        row[f"{name}_gbs"] = nbytes[name] / seconds / 1e9
    row["bitmask_vs_ort"] = row["ort_us"] / row["bitmask_us"]
    return row


NAMES = ("bitmask", "csr", "nm", "dense", "ort")


def print_header() -> None:
    print(f"{'shape':<10}{'weight':>7}{'batch':>6}" + "".join(f"{name:>16}" for name in NAMES) + "   bitmask vs ort")


def print_row(row: dict) -> None:
    cells = "".join(
        f"{row[f'{name}_us']:>7.1f}us{row[f'{name}_gbs']:>5.1f}GB" if f"{name}_us" in row else f"{'-':>16}"
        for name in NAMES
    )
    print(f"{row['shape']:<10}{row['weight']:>7}{row['batch']:>6}{cells}   {row['bitmask_vs_ort']:.2f}x", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", default=",".join(SHAPES), help="IN x OUT, comma separated")
    parser.add_argument("--weights", default=",".join(WEIGHTS), help="percent zeros or 2:4, comma separated")
    parser.add_argument("--batches", default="1", help="input rows, comma separated")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    print_header()
    for shape in filter(None, args.shapes.split(",")):
        in_features, out_features = parse_shape(shape)
        for kind in filter(None, args.weights.split(",")):
            for batch in (int(b) for b in args.batches.split(",")):
                rows.append(run_case(in_features, out_features, kind, batch, args.threads, args.iters))
                print_row(rows[-1])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
