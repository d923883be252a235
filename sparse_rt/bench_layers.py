"""Single linear layers on the CPU: the sparse_rt kernels against dense and sparse baselines.

For every format, density, batch and shape this times, in one process and
round-robin (so a noisy machine slows every contender alike):

  ours        the format's sparse_rt CPU kernel, default config (and the best config
              of its tuning space with --tune)
  torch       torch dense F.linear on the same weight
  ort         onnxruntime on a one-node Gemm model of the dense weight
              (intra_op_num_threads = --threads)
  torch_csr   torch.sparse CSR (to_sparse_csr + torch.addmm)

and prints a table of median milliseconds (warm: each contender runs blocks of
consecutive calls, the first few of a block untimed), the speedup of ours against onnxruntime,
and our achieved GB/s (weight bytes of the format / time). Shapes are IN->OUT
("768x3072": x [batch, 768] -> y [batch, 3072]).

    python benchmarks/layers.py --quick
    python benchmarks/layers.py --formats csr,bsr --shapes 768x3072 --batches 1,32 --tune --json out.json

--stack adds a small model: 4 x (768->3072, GELU, 3072->768) with unstructured
weights at each density, run layer by layer with the kernels `pick_cpu_kernel`
chooses (GELU in torch) against the same model in onnxruntime (dense Gemm + Gelu
nodes), torch dense and torch.sparse CSR.

Weights: csr takes an unstructured random mask at the density; bsr keeps that share
of r x c blocks for each --block-shapes entry; nm uses the N:M pattern whose n / m
is closest to the density; butterfly and permuted have no density (random twiddles
and blocks on n = max(in, out), padded to a power of two for butterfly); dense is
the dense weight itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper


from sparse_rt.formats import (
    BsrFormat,
    ButterflyFormat,
    CsrFormat,
    DenseFormat,
    NmFormat,
    PermutedFormat,
)
from sparse_rt.kernels.cpu.heuristic import pick_cpu_kernel
from sparse_rt.kernels.registry import get_kernel, kernels_for

FORMATS = ("dense", "csr", "bsr", "nm", "butterfly", "permuted")
SHAPES = ("768x3072", "3072x768", "4096x4096")
DENSITIES = (50, 20, 10, 5, 2)
BATCHES = (1, 8, 32)
BLOCK_SHAPES = ((1, 4), (4, 1), (8, 1), (1, 8), (4, 4), (8, 8), (16, 16), (32, 32))
NM_PATTERNS = ((2, 4), (1, 4), (1, 8), (1, 16), (1, 32))
QUICK = {
    "formats": ("dense", "csr", "bsr", "nm", "butterfly", "permuted"),
    "shapes": ("768x3072", "3072x768"),
    "densities": (50, 10),
    "batches": (1, 32),
    "block_shapes": ((8, 1), (16, 16)),
    "iters": 60,
}


@dataclass
class Case:
    """One benchmarked layer: a weight in one format at one batch size."""

    format: str
    detail: str
    in_features: int
    out_features: int
    density: float
    batch: int
    weight: object
    dense: torch.Tensor
    times: dict[str, list[float]] = field(default_factory=dict)


def parse_shape(text: str) -> tuple[int, int]:
    inp, _, out = text.partition("x")
    if not inp.isdigit() or not out.isdigit():
        raise argparse.ArgumentTypeError(f"shape: expected IN x OUT such as 768x3072, got {text!r}")
    return int(inp), int(out)


def masked(out_features: int, in_features: int, keep: torch.Tensor) -> torch.Tensor:
    weight = torch.randn(out_features, in_features)
    return weight * keep


def block_mask(out_features: int, in_features: int, block: tuple[int, int], density: float) -> torch.Tensor:
    r, c = block
    grid = torch.rand(-(-out_features // r), -(-in_features // c)) < density
    return grid.repeat_interleave(r, 0).repeat_interleave(c, 1)[:out_features, :in_features]


def nm_mask(out_features: int, in_features: int, n: int, m: int) -> torch.Tensor:
    groups = -(-in_features // m)
    scores = torch.rand(out_features, groups, m)
    keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(2, scores.topk(n, dim=2).indices, True)
    return keep.reshape(out_features, groups * m)[:, :in_features]


def weights_for(fmt: str, in_features: int, out_features: int, density: float, block_shapes):
    """(detail, density, format instance, dense W) for each weight of `fmt` at this point."""
    if fmt == "dense":
        dense = torch.randn(out_features, in_features)
        yield "", 1.0, DenseFormat.from_dense(dense), dense
    elif fmt == "csr":
        dense = masked(out_features, in_features, torch.rand(out_features, in_features) < density)
        yield "", density, CsrFormat.from_dense(dense), dense
    elif fmt == "bsr":
        for block in block_shapes:
            dense = masked(out_features, in_features, block_mask(out_features, in_features, block, density))
            yield "{}x{}".format(*block), density, BsrFormat.from_dense(dense, block_shape=block), dense
    elif fmt == "nm":
        n, m = min(NM_PATTERNS, key=lambda p: abs(p[0] / p[1] - density))
        dense = masked(out_features, in_features, nm_mask(out_features, in_features, n, m))
        yield f"{n}:{m}", n / m, NmFormat.from_dense(dense, n=n, m=m), dense
    elif fmt == "butterfly":
        stages = (max(in_features, out_features) - 1).bit_length()
        n = 2**stages
        twiddles = torch.randn(stages, n // 2, 2, 2) / 2**0.5
        weight = ButterflyFormat(in_features=in_features, out_features=out_features, twiddles=twiddles)
        yield f"n={n}", 4 * stages * n / (2 * in_features * out_features), weight, weight.to_dense()
    elif fmt == "permuted":
        n = max(in_features, out_features) + max(in_features, out_features) % 2
        layers = max(2, n.bit_length() - 1)
        permutations = torch.stack([torch.randperm(n) for _ in range(layers)])
        permutations = permutations.to(torch.int16 if n <= 32768 else torch.int32)
        blocks = torch.randn(layers, n // 2, 2, 2) / 2**0.5
        weight = PermutedFormat(
            in_features=in_features, out_features=out_features, permutations=permutations, blocks=blocks
        )
        yield f"L={layers}", 4 * layers * n / (2 * in_features * out_features), weight, weight.to_dense()


def ort_session(dense: torch.Tensor, bias: torch.Tensor, threads: int) -> ort.InferenceSession:
    out_features, in_features = dense.shape
    node = helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)
    graph = helper.make_graph(
        [node],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_features])],
        [numpy_helper.from_array(dense.numpy(), "W"), numpy_helper.from_array(bias.numpy(), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


STACK_BLOCKS = 4
STACK_DIMS = (768, 3072)


def stack_weights(density: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(W, b) of the stack's layers: 768->3072, 3072->768, repeated STACK_BLOCKS times."""
    model, hidden = STACK_DIMS
    layers = []
    for _ in range(STACK_BLOCKS):
        for out_features, in_features in ((hidden, model), (model, hidden)):
            keep = torch.rand(out_features, in_features) < density
            layers.append((masked(out_features, in_features, keep), torch.randn(out_features)))
    return layers


def ort_stack(layers: list[tuple[torch.Tensor, torch.Tensor]], threads: int) -> ort.InferenceSession:
    """onnxruntime on a stack of (weight [out, in], bias [out]) layers: Gemm, with a Gelu after every
    first layer of a block; x [batch, in of the first] -> y [batch, out of the last]."""
    nodes, initializers, current = [], [], "x"
    for index, (weight, bias) in enumerate(layers):
        initializers += [numpy_helper.from_array(weight.numpy(), f"W{index}"), numpy_helper.from_array(bias.numpy(), f"b{index}")]
        nodes.append(helper.make_node("Gemm", [current, f"W{index}", f"b{index}"], [f"y{index}"], transB=1))
        current = f"y{index}"
        if index % 2 == 0:
            nodes.append(helper.make_node("Gelu", [current], [f"g{index}"]))
            current = f"g{index}"
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", layers[0][0].shape[1]])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["batch", layers[-1][0].shape[0]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def stack_contenders(layers, batch: int, threads: int) -> tuple[dict[str, callable], list[str]]:
    """The stack per contender, and the kernel picked for each layer."""
    x = torch.randn(batch, STACK_DIMS[0])
    x_numpy = x.numpy()
    bound, picks = [], []
    for weight, bias in layers:
        fmt, kernel_name, config = pick_cpu_kernel(weight, batch)
        bound.append(get_kernel(kernel_name).bind(fmt, bias, config, torch.device("cpu")))
        params = {k: v for k, v in fmt.attributes().items() if k != "shape"}
        picks.append(fmt.name + "".join(str(tuple(v) if isinstance(v, list) else v) for v in params.values()))

    def run(functions):
        y = x
        for index, function in enumerate(functions):
            y = function(y)
            if index % 2 == 0:
                y = torch.nn.functional.gelu(y)
        return y

    dense = [lambda y, w=w, b=b: torch.nn.functional.linear(y, w, b) for w, b in layers]
    sparse = [(w.to_sparse_csr(), b[:, None]) for w, b in layers]
    torch_csr = [lambda y, w=w, b=b: torch.addmm(b, w, y.T).T for w, b in sparse]
    session = ort_stack(layers, threads)
    runs = {
        "ours": lambda: run(bound),
        "torch": lambda: run(dense),
        "ort": lambda: session.run(None, {"x": x_numpy}),
        "torch_csr": lambda: run(torch_csr),
    }
    return runs, picks


def run_stack(densities: list[float], batches: list[int], threads: int, iters: int) -> list[dict]:
    print(f"\nstack: {STACK_BLOCKS} x ({STACK_DIMS[0]}->{STACK_DIMS[1]}, GELU, {STACK_DIMS[1]}->{STACK_DIMS[0]}), ms")
    print(f"{'dens':>6}{'batch':>6}{'ours':>9}{'torch':>9}{'ort':>9}{'t.csr':>9}{'x ort':>8}  kernels")
    rows = []
    for density in densities:
        layers = stack_weights(density)
        for batch in batches:
            runs, picks = stack_contenders(layers, batch, threads)
            medians = {k: statistics.median(v) * 1e3 for k, v in time_round_robin(runs, iters).items()}
            row = {"suite": "stack", "density": density, "batch": batch, "picks": picks,
                   **{f"{k}_ms": v for k, v in medians.items()}, "speedup_vs_ort": medians["ort"] / medians["ours"]}
            print(f"{density * 100:>5.1f}%{batch:>6}{medians['ours']:>9.3f}{medians['torch']:>9.3f}{medians['ort']:>9.3f}"
                  f"{medians['torch_csr']:>9.3f}{row['speedup_vs_ort']:>7.2f}x  {','.join(sorted(set(picks)))}", flush=True)
            rows.append(row)
    return rows


def contenders(case: Case, bias: torch.Tensor, threads: int, tune: bool) -> dict[str, callable]:
    """name -> zero-argument callable running that contender once on the case's input."""
    x = torch.randn(case.batch, case.in_features)
    x_numpy = x.numpy()
    device = torch.device("cpu")
    runs = {}
    kernels = kernels_for(case.weight, device)
    if case.format == "dense":
        kernels = [k for k in kernels if k.name == "dense_cpu_native"]
    for kernel in kernels:
        configs = kernel.configs(case.weight, device)
        for index, config in enumerate(configs if tune else configs[:1]):
            bound = kernel.bind(case.weight, bias, config, device)
            name = "ours" if index == 0 else f"ours:{kernel.name}:{json.dumps(config, sort_keys=True)}"
            runs[name] = lambda bound=bound: bound(x)
    dense = case.dense
    runs["torch"] = lambda: torch.nn.functional.linear(x, dense, bias)
    session = ort_session(dense, bias, threads)
    runs["ort"] = lambda: session.run(None, {"x": x_numpy})
    sparse = dense.to_sparse_csr()
    column_bias = bias[:, None]
    x_t = x.T
    runs["torch_csr"] = lambda: torch.addmm(column_bias, sparse, x_t)
    return runs


def time_round_robin(runs: dict[str, callable], iters: int, block: int = 20, settle: int = 5) -> dict[str, list[float]]:
    """Seconds per call of each contender: rounds of `block` consecutive calls per contender,
    the first `settle` of each block untimed (they pay for the previous contender's threads
    and cache traffic), until each has `iters` timed calls."""
    samples = {name: [] for name in runs}
    for _ in range(max(1, -(-iters // (block - settle)))):
        for name, run in runs.items():
            for index in range(block):
                start = time.perf_counter()
                run()
                if index >= settle:
                    samples[name].append(time.perf_counter() - start)
    return samples


def summarize(case: Case, samples: dict[str, list[float]]) -> dict:
    medians = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
    tuned = {name: ms for name, ms in medians.items() if name.startswith("ours")}
    best_name = min(tuned, key=tuned.get)
    row = {
        "format": case.format,
        "detail": case.detail,
        "shape": f"{case.in_features}x{case.out_features}",
        "density": round(case.density, 4),
        "batch": case.batch,
        "ours_ms": medians["ours"],
        "ours_tuned_ms": tuned[best_name],
        "ours_tuned_config": best_name.partition(":")[2] or "default",
        "torch_ms": medians["torch"],
        "ort_ms": medians["ort"],
        "torch_csr_ms": medians["torch_csr"],
        "weight_bytes": case.weight.nbytes,
    }
    row["speedup_vs_ort"] = row["ort_ms"] / row["ours_tuned_ms"]
    row["gb_per_s"] = row["weight_bytes"] / (row["ours_tuned_ms"] * 1e-3) / 1e9
    return row


HEADER = (
    f"{'format':<10}{'detail':<8}{'shape':<11}{'dens':>6}{'batch':>6}{'ours ms':>10}{'tuned':>9}"
    f"{'torch':>9}{'ort':>9}{'t.csr':>9}{'x ort':>8}{'GB/s':>7}"
)


def print_row(r: dict) -> None:
    print(
        f"{r['format']:<10}{r['detail']:<8}{r['shape']:<11}{r['density'] * 100:>5.1f}%{r['batch']:>6}"
        f"{r['ours_ms']:>10.4f}{r['ours_tuned_ms']:>9.4f}{r['torch_ms']:>9.4f}{r['ort_ms']:>9.4f}"
        f"{r['torch_csr_ms']:>9.4f}{r['speedup_vs_ort']:>7.2f}x{r['gb_per_s']:>7.1f}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--shapes", default=",".join(SHAPES), help="IN x OUT, comma separated")
    parser.add_argument("--densities", default=",".join(map(str, DENSITIES)), help="percent, comma separated")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--block-shapes", default=",".join("{}x{}".format(*b) for b in BLOCK_SHAPES))
    parser.add_argument("--iters", type=int, default=200, help="timed calls per contender")
    parser.add_argument("--tune", action="store_true", help="also time every config of the kernel's space")
    parser.add_argument("--quick", action="store_true", help="a small grid that runs in a few minutes")
    parser.add_argument("--stack", action="store_true", help="also time the 4-block MLP stack")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    formats = args.formats.split(",")
    shapes = [parse_shape(s) for s in args.shapes.split(",")]
    densities = [float(d) / 100 for d in args.densities.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    block_shapes = [parse_shape(s) for s in args.block_shapes.split(",")]
    iters = args.iters
    if args.quick:
        formats = [f for f in formats if f in QUICK["formats"]]
        shapes = [parse_shape(s) for s in QUICK["shapes"]]
        densities = [d / 100 for d in QUICK["densities"]]
        batches = list(QUICK["batches"])
        block_shapes = list(QUICK["block_shapes"])
        iters = min(iters, QUICK["iters"])
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown formats {unknown}; known: {list(FORMATS)}")

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"median of {iters} warm calls", flush=True)
    print(HEADER)
    print("-" * len(HEADER))
    rows = []
    for fmt in formats:
        for in_features, out_features in shapes:
            for density in densities if fmt in ("csr", "bsr", "nm") else densities[:1]:
                for detail, actual, weight, dense in weights_for(fmt, in_features, out_features, density, block_shapes):
                    bias = torch.randn(out_features)
                    for batch in batches:
                        case = Case(fmt, detail, in_features, out_features, actual, batch, weight, dense)
                        samples = time_round_robin(contenders(case, bias, args.threads, args.tune), iters)
                        row = summarize(case, samples)
                        print_row(row)
                        rows.append(row)
    if args.stack:
        rows += run_stack(densities, batches, args.threads, iters)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
