"""Batched sparse kernels, their two task splits side by side: tasks of output rows (the
input transposed or quantized into tiles first, each task running its rows against every
tile) against tasks of input-row tiles (each task against every output row; the fp32 CSR
kernel transposes its own tile). `splits_by_inputs` picks between them at run time; this
script forces each in turn, with the dense native kernel and onnxruntime's Gemm on the
same layer, in one process, round-robin.

Shapes are ROWSxINxOUT: ResNet-50's 1x1 convolutions at batch 1 (pixels x channels) and
BERT-base's layers at 128 and 1024 tokens. Weights 90 % unstructured (int8: the same,
quantized per channel), a bias, medians of warm calls in ms.

    python benchmarks/batched_split.py --json benchmarks/results/batched_split.json
    python benchmarks/batched_split.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import onnxruntime as ort
import torch

from sparse_rt.bench_layers import ort_session, time_round_robin
from sparse_rt.formats import CsrFormat, CsrInt8Format, DenseFormat
from sparse_rt.kernels.cpu import _launch, csr
from sparse_rt.kernels.registry import get_kernel

SHAPES = ("3136x64x256", "3136x256x64", "784x128x512", "784x512x128", "196x256x1024", "49x2048x512",
          "128x768x3072", "128x3072x768", "1024x768x3072")
# where each format's kernel looks the split up (int8: through _launch.tile_tasks)
SPLIT_SITES = {"csr": csr, "csr_int8": _launch}


def bound(kernel_name: str, fmt, bias: torch.Tensor):
    kernel = get_kernel(kernel_name)
    return kernel.bind(fmt, bias, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))


def forced(fn, site, by_inputs: bool):
    """fn with the split decided by `by_inputs` instead of `splits_by_inputs` (set on each call:
    the round-robin interleaves the contenders; `main` puts the rule back)."""
    def policy(*args):
        return by_inputs

    def run(x):
        site.splits_by_inputs = policy
        return fn(x)
    return run


def measure(shape: str, density: float, iters: int, threads: int) -> dict:
    rows, in_features, out_features = (int(v) for v in shape.split("x"))
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, in_features, generator=generator)
    weight *= torch.rand(out_features, in_features, generator=generator) < density
    bias = torch.randn(out_features, generator=generator)
    x = torch.randn(rows, in_features, generator=generator)
    layers = {
        "csr": bound("csr_cpu_rowwise", CsrFormat.from_dense(weight), bias),
        "csr_int8": bound("csr_int8_cpu", CsrInt8Format.from_dense(weight), bias),
    }
    runs = {}
    for name, layer in layers.items():
        for split, by_inputs in (("outputs", False), ("inputs", True)):
            call = forced(layer, SPLIT_SITES[name], by_inputs)
            runs[f"{name}/{split}"] = lambda call=call: call(x)
    dense = bound("dense_cpu_native", DenseFormat.from_dense(weight), bias)
    runs["dense"] = lambda: dense(x)
    session = ort_session(weight, bias, threads)
    feeds = {"x": x.numpy()}
    runs["onnxruntime"] = lambda: session.run(None, feeds)
    expected = x @ weight.T + bias
    for name in ("csr/outputs", "csr/inputs"):
        assert torch.allclose(runs[name](), expected, rtol=1e-4, atol=1e-3), name
    samples = time_round_robin(runs, iters)
    return {"shape": shape, "density": density, "threads": threads,
            "ms": {name: statistics.median(s) * 1e3 for name, s in samples.items()},
            "min_ms": {name: min(s) * 1e3 for name, s in samples.items()}}


def table(results: list[dict]) -> str:
    names = list(results[0]["ms"])
    lines = ["| rows x in x out | " + " | ".join(names) + " | csr inputs vs outputs | csr_int8 inputs vs outputs |",
             "|---|" + "---:|" * (len(names) + 2)]
    for r in results:
        ms = r["ms"]
        gains = [f"{ms[f'{k}/outputs'] / ms[f'{k}/inputs']:.2f}x" for k in ("csr", "csr_int8")]
        lines.append(f"| {r['shape']} | " + " | ".join(f"{ms[n]:.3f}" for n in names) + " | " + " | ".join(gains) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), help="ROWSxINxOUT")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ort.set_default_logger_severity(3)
    rules = {site: site.splits_by_inputs for site in SPLIT_SITES.values()}
    try:
        results = [measure(shape, args.density, args.iters, args.threads) for shape in args.shapes]
    finally:
        for site, rule in rules.items():
            site.splits_by_inputs = rule
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
