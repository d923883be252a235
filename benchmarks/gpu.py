"""GPU benchmark: every Triton kernel against cuBLAS dense and torch's BSR matmul, side by side.

    python benchmarks/gpu.py                        # suite "square": 4096x4096, the full grid
    python benchmarks/gpu.py --suite quick          # one sparsity, two batches, fp16
    python benchmarks/gpu.py --tune --json out.json # time every config of each kernel, keep the best

For each dtype (fp16, fp32) and batch (1, 16, 128), y = x @ W.T with W 4096x4096 is
timed with triton.testing.do_bench (untimed warm-up, then the median and the
20th/80th percentiles of repeated runs) for:

  dense        torch F.linear (cuBLAS), the baseline every speedup is against
  torch_bsr    torch's own BSR matmul on the block-sparse weight (32x32 blocks)
  csr          csr_triton_rows on W pruned at random (unstructured)
  bsr          bsr_triton_dot on the block-sparse weight (32x32 blocks)
  nm           nm_triton_gather: 2:4 at 50% sparsity, 1:8, 1:16, 1:32 at 90/95/98%
  butterfly    butterfly_triton, a 4096 butterfly (12 stages; one per dtype and batch)
  permuted     permuted_triton, 12 layers of 2x2 blocks (one per dtype and batch)

at sparsities 50/90/95/98%. Each row reports milliseconds, useful TFLOP/s (the
format's FLOPs: 2 per kept weight per input row), GB/s (weight arrays at the
activation dtype plus x and y, read or written once), the speedup over dense and
the error relative to the fp32 dense product. Without a CUDA device the script
says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BLOCK = 32  # block side of the block-sparse weights (Triton BSR and torch BSR)
NM_PATTERNS = {0.5: (2, 4), 0.9: (1, 8), 0.95: (1, 16), 0.98: (1, 32)}  # sparsity -> (n, m)
LAYERS = 12  # permuted-block layers, as many as a 4096 butterfly has stages


@dataclass(frozen=True)
class Suite:
    size: int
    sparsities: tuple[float, ...]
    batches: tuple[int, ...]
    dtypes: tuple[str, ...]


SUITES = {
    "square": Suite(4096, (0.5, 0.9, 0.95, 0.98), (1, 16, 128), ("float16", "float32")),
    "quick": Suite(4096, (0.95,), (1, 16), ("float16",)),
}


@dataclass
class Row:
    dtype: str
    batch: int
    sparsity: str  # nominal, e.g. "95%"; "-" for butterfly and permuted
    kernel: str
    density: float  # kept fraction of the weight's entries (actual)
    ms: float
    p20_ms: float
    p80_ms: float
    tflops: float
    gbps: float
    speedup: float
    rel_error: float
    config: str


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="square")
    parser.add_argument("--tune", action="store_true", help="time every config of each kernel, report the best")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- weights


def unstructured(size: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    weight = torch.randn(size, size, generator=generator)
    return weight * (torch.rand(size, size, generator=generator) >= sparsity)


def block_sparse(size: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    blocks = size // BLOCK
    keep = torch.rand(blocks, blocks, generator=generator) >= sparsity
    mask = keep.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)
    return torch.randn(size, size, generator=generator) * mask


def n_of_m(size: int, n: int, m: int, generator: torch.Generator) -> torch.Tensor:
    groups = size // m
    kept = torch.rand(size, groups, m, generator=generator).argsort(-1)[..., :n]
    mask = torch.zeros(size, groups, m, dtype=torch.bool).scatter_(-1, kept, True)
    return torch.randn(size, size, generator=generator) * mask.reshape(size, size)


def butterfly_weight(size: int, generator: torch.Generator):
    from sparse_rt.formats import ButterflyFormat

    stages = size.bit_length() - 1
    # twiddles of norm ~1 keep |W x| near |x| through every stage
    twiddles = torch.randn(stages, size // 2, 2, 2, generator=generator) / 2**0.5
    return ButterflyFormat(in_features=size, out_features=size, twiddles=twiddles)


def permuted_weight(size: int, generator: torch.Generator):
    from sparse_rt.formats import PermutedFormat
    from sparse_rt.formats.base import narrowest_index_dtype

    permutations = torch.stack([torch.randperm(size, generator=generator) for _ in range(LAYERS)])
    return PermutedFormat(
        in_features=size,
        out_features=size,
        permutations=permutations.to(narrowest_index_dtype(size - 1)),
        blocks=torch.randn(LAYERS, size // 2, 2, 2, generator=generator) / 2**0.5,
    )


# ----------------------------------------------------------------------------- timing


def time_ms(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(median, 20th, 80th percentile) milliseconds of fn() by triton.testing.do_bench."""
    from triton.testing import do_bench

    median, low, high = do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    return median, low, high


def weight_bytes(fmt, dtype: torch.dtype) -> int:
    """Bytes of the format's arrays with float arrays at the activation dtype."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return sum(t.numel() * (itemsize if t.is_floating_point() else t.element_size()) for t in fmt.arrays().values())


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().max().clamp_min(1e-12)
    return float((y.float() - reference).abs().max() / scale)


@dataclass
class Case:
    """One timing: what runs, what it costs, what it should give."""

    sparsity: str
    kernel: str
    density: float
    flops: int
    bytes: int
    reference: torch.Tensor


def measure(case: Case, runs: list[tuple[str, Callable[[], torch.Tensor]]], dense_ms: float, dtype: str, batch: int) -> Row:
    """Time each (config, fn) of `runs`, keep the fastest, make its row."""
    best = None
    for config, fn in runs:
        y = fn()
        timing = time_ms(fn)
        if best is None or timing[0] < best[1][0]:
            best = (config, timing, y)
    config, (ms, low, high), y = best
    return Row(
        dtype=dtype,
        batch=batch,
        sparsity=case.sparsity,
        kernel=case.kernel,
        density=case.density,
        ms=ms,
        p20_ms=low,
        p80_ms=high,
        tflops=case.flops / (ms * 1e-3) / 1e12,
        gbps=case.bytes / (ms * 1e-3) / 1e9,
        speedup=dense_ms / ms,
        rel_error=relative_error(y, case.reference),
        config=config,
    )


def kernel_runs(kernel, fmt, x: torch.Tensor, device: torch.device, tune: bool) -> list[tuple[str, Callable]]:
    """(config as JSON, x -> y) for the default config, or for every config with --tune."""
    configs = kernel.configs(fmt, device)
    runs = []
    for config in configs if tune else configs[:1]:
        bound = kernel.bind(fmt, None, config, device)
        runs.append((json.dumps(config, sort_keys=True), lambda bound=bound: bound(x)))
    return runs


def torch_bsr_run(weight: torch.Tensor, x: torch.Tensor) -> Callable[[], torch.Tensor] | None:
    """y = x @ W.T through torch's BSR matmul, or None where torch has no kernel for this dtype."""
    bsr = weight.to(x.dtype).to_sparse_bsr((BLOCK, BLOCK))
    candidates = [lambda: torch.nn.functional.linear(x, bsr), lambda: torch.mm(bsr, x.t()).t()]
    for run in candidates:
        try:
            run()
        except (RuntimeError, NotImplementedError):
            continue
        return run
    return None


# ----------------------------------------------------------------------------- suite


def run_suite(suite: Suite, device: torch.device, tune: bool, progress: Callable[[Row], None]) -> list[Row]:
    from sparse_rt.formats import BsrFormat, CsrFormat, NmFormat
    from sparse_rt.kernels.registry import get_kernel

    generator = torch.Generator().manual_seed(0)
    size = suite.size
    rows: list[Row] = []
    weights = {}
    for sparsity in suite.sparsities:
        n, m = NM_PATTERNS[sparsity]
        weights[sparsity] = {
            "csr": CsrFormat.from_dense(unstructured(size, sparsity, generator)),
            "bsr": BsrFormat.from_dense(block_sparse(size, sparsity, generator), block_shape=(BLOCK, BLOCK)),
            "nm": NmFormat.from_dense(n_of_m(size, n, m, generator), n=n, m=m),
        }
    structured = {"butterfly": butterfly_weight(size, generator), "permuted": permuted_weight(size, generator)}
    kernels = {
        "csr": "csr_triton_rows",
        "bsr": "bsr_triton_dot",
        "nm": "nm_triton_gather",
        "butterfly": "butterfly_triton",
        "permuted": "permuted_triton",
    }

    def emit(row: Row) -> None:
        rows.append(row)
        progress(row)

    for dtype_name in suite.dtypes:
        dtype = getattr(torch, dtype_name)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        for batch in suite.batches:
            x = torch.randn(batch, size, generator=generator).to(device, dtype)
            io_bytes = 2 * batch * size * itemsize

            dense_weight = torch.randn(size, size, generator=generator).to(device)
            run = partial(torch.nn.functional.linear, x, dense_weight.to(dtype))
            case = Case("-", "dense", 1.0, 2 * size * size * batch, size * size * itemsize + io_bytes,
                        x.float() @ dense_weight.T)
            dense_ms = time_ms(run)[0]
            emit(measure(case, [("cuBLAS", run)], dense_ms, dtype_name, batch))
            for sparsity in suite.sparsities:
                label = f"{round(sparsity * 100)}%"
                for family, fmt in weights[sparsity].items():
                    dense = fmt.to_dense().to(device)
                    reference = x.float() @ dense.T
                    case = Case(label, family, fmt.flops_per_row / (2 * size * size), fmt.flops_per_row * batch,
                                weight_bytes(fmt, dtype) + io_bytes, reference)
                    emit(measure(case, kernel_runs(get_kernel(kernels[family]), fmt, x, device, tune), dense_ms,
                                 dtype_name, batch))
                    if family == "bsr":
                        run = torch_bsr_run(dense, x)
                        if run is not None:
                            bsr_case = Case(label, "torch_bsr", case.density, case.flops, case.bytes, reference)
                            emit(measure(bsr_case, [("torch.sparse bsr", run)], dense_ms, dtype_name, batch))
            for family, fmt in structured.items():
                reference = x.float() @ fmt.to_dense().to(device).T
                case = Case("-", family, fmt.flops_per_row / (2 * size * size), fmt.flops_per_row * batch,
                            weight_bytes(fmt, dtype) + io_bytes, reference)
                emit(measure(case, kernel_runs(get_kernel(kernels[family]), fmt, x, device, tune), dense_ms,
                             dtype_name, batch))
    return rows


# ----------------------------------------------------------------------------- report

COLUMNS = [
    ("dtype", "{:<8}"), ("batch", "{:>5}"), ("sparsity", "{:>8}"), ("kernel", "{:<10}"), ("density", "{:>7.3f}"),
    ("ms", "{:>9.4f}"), ("p20_ms", "{:>9.4f}"), ("p80_ms", "{:>9.4f}"), ("tflops", "{:>7.2f}"), ("gbps", "{:>8.1f}"),
    ("speedup", "{:>7.2f}"), ("rel_error", "{:>9.1e}"), ("config", "{}"),
]


def header() -> str:
    widths = {"dtype": 8, "batch": 5, "sparsity": 8, "kernel": 10, "density": 7, "ms": 9, "p20_ms": 9,
              "p80_ms": 9, "tflops": 7, "gbps": 8, "speedup": 7, "rel_error": 9, "config": 0}
    cells = [name.ljust(widths[name]) if name in ("dtype", "kernel", "config") else name.rjust(widths[name])
             for name, _ in COLUMNS]
    return "  ".join(cells)


def format_row(row: Row) -> str:
    values = asdict(row)
    return "  ".join(fmt.format(values[name]) for name, fmt in COLUMNS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device is present; the GPU benchmark needs one. Nothing to do.")
        return 0
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, suite {args.suite}"
          f"{', tuned' if args.tune else ', default configs'}")
    print(header())
    rows = run_suite(SUITES[args.suite], device, args.tune, lambda row: print(format_row(row), flush=True))
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
