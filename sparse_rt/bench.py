"""`python -m sparse_rt.bench`: dense onnxruntime, dense torch and sparse_rt, side by side.

With no arguments: a BERT-base-shaped encoder (12 layers, hidden 768, FFN 3072,
12 heads, seq 128, seeded random weights) pruned to 90% by magnitude, exported
to ONNX, converted and tuned, then timed in one process against onnxruntime on
the same pruned file and against the pruned torch module, the engines taking turns
in four rounds so that a slow spell of the machine does not favour one of them.

`--model` also takes the real architectures of `sparse_rt.zoo_hf` (bert-base,
distilbert, roberta-base, minilm, vit-base, gpt2, resnet50, resnet50-all-convs,
convnext-tiny, mobilenet-v2: transformers configs, seeded weights, exported by
torch.onnx.export with dynamic axes) or any ONNX file. The exported file is
converted with default options, as a user converts it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from tqdm.auto import tqdm

import sparse_rt
from sparse_rt import zoo, zoo_hf
from sparse_rt.bench_memory import session_memory_mb
from sparse_rt.converters.torch import export_module
from sparse_rt.ir.graph import SPARSE_DOMAIN
from sparse_rt.ir.onnx_io import onnx_dtype_name
from sparse_rt.runtime.session import set_threads

MODELS = ("bert", "mlp", "cnn", *zoo_hf.ARCHITECTURES)


@dataclass
class Workload:
    """A model to benchmark: the torch module (None for a file), its ONNX file, inputs per batch size.

    converted: the file was saved by sparse_rt (run as it is, no dense engines to compare)."""

    name: str
    onnx_path: Path
    make_feeds: Callable[..., dict[str, np.ndarray]]  # (batch, seed=None): seeded by batch unless seed given
    module: torch.nn.Module | None = None
    converted: bool = False


@dataclass
class Latency:
    engine: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput: float  # samples per second at p50
    runs: int
    speedup_vs_ort: float | None = None
    max_rel_error_vs_ort: float | None = None
    speedup_vs_ort_int8: float | None = None


@dataclass
class Report:
    model: str
    sparsity: float | None
    pattern: str
    threads: int
    convert_seconds: float
    weight_bytes: dict[str, int]
    rss_mb: dict[str, float]
    peak_rss_mb: float
    latencies: list[Latency] = field(default_factory=list)
    per_layer: list[dict] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    quantize: str | None = None
    calibration: int = 0  # feeds the int8 layers' biases were corrected on (0: none)
    rounding: str = "nearest"  # how the int8 weights were rounded ("nearest", "gptq")
    precision: dict[str, int] = field(default_factory=dict)  # layers by precision ("int8", "fp32")
    agreement: list[dict] = field(default_factory=list)  # per engine, against onnxruntime fp32


# ----------------------------------------------------------------------------- models


def build_workload(kind: str, sparsity: float, pattern: str, seq_len: int, workdir: Path) -> Workload:
    """Build a seeded zoo model, prune its linear layers, export it to ONNX."""
    torch.manual_seed(0)
    if kind in zoo_hf.ARCHITECTURES:
        return transformers_workload(kind, sparsity, pattern, seq_len, workdir)
    if kind == "bert":
        module = zoo.seeded(zoo.Encoder(zoo.BERT_BASE))
        vocab = zoo.BERT_BASE.vocab_size

        def make_inputs(batch: int, seed: int | None = None) -> tuple[torch.Tensor, ...]:
            g = torch.Generator().manual_seed(batch if seed is None else seed)
            return (torch.randint(0, vocab, (batch, seq_len), generator=g),
                    torch.ones(batch, seq_len, dtype=torch.int64))

        dims = {1: "seq"}
    elif kind == "mlp":
        module = zoo.seeded(zoo.MLP((768, 3072, 768, 3072, 768, 3072, 768, 3072, 768)))

        def make_inputs(batch: int, seed: int | None = None) -> tuple[torch.Tensor, ...]:
            return (torch.randn(batch, 768, generator=torch.Generator().manual_seed(batch if seed is None else seed)),)

        dims = {}
    elif kind == "cnn":
        module = zoo.seeded(zoo.SmallCNN(channels=128, blocks=4, classes=1000))

        def make_inputs(batch: int, seed: int | None = None) -> tuple[torch.Tensor, ...]:
            generator = torch.Generator().manual_seed(batch if seed is None else seed)
            return (torch.randn(batch, 3, 64, 64, generator=generator),)

        dims = {}
    else:
        raise ValueError(f"model: expected one of {MODELS} or a path, got {kind!r}")
    prune(module, sparsity, pattern)
    proto, _ = export_module(module, make_inputs(1), dynamic_dims=dims)
    path = workdir / f"{kind}.onnx"
    onnx.save(proto, str(path))
    names = [i.name for i in proto.graph.input]

    def make_feeds(batch: int, seed: int | None = None) -> dict[str, np.ndarray]:
        return {n: t.numpy() for n, t in zip(names, make_inputs(batch, seed))}

    return Workload(kind, path, make_feeds, module)


def transformers_workload(name: str, sparsity: float, pattern: str, seq_len: int, workdir: Path) -> Workload:
    """A `zoo_hf` architecture: built from its transformers config, pruned, exported by torch.onnx.export."""
    model = zoo_hf.build(name)
    if sparsity > 0:
        zoo_hf.prune(model, name, sparsity, pattern)
    path = zoo_hf.export(model, name, workdir / f"{name}.onnx")

    def make_feeds(batch: int, seed: int | None = None) -> dict[str, np.ndarray]:
        inputs = zoo_hf.example_inputs(name, batch, seq_len=seq_len, seed=batch if seed is None else seed)
        return {k: v.numpy() for k, v in inputs.items()}

    names = list(zoo_hf.example_inputs(name, 1, seq_len=1))
    return Workload(name, path, make_feeds, zoo_hf.TupleOutputs(model, names))


def prune(module: torch.nn.Module, sparsity: float, pattern: str, filter_fn=None) -> None:
    """Prune every linear (and conv) layer chosen by `filter_fn(module, name)` (default: all)
    with the project's pruners, then bake the zeros in."""
    from sparse_rt.pruning.magnitude import magnitude_prune
    from sparse_rt.pruning.masks import finalize
    from sparse_rt.pruning.structured import block_prune, nm_prune

    if sparsity <= 0 and not pattern.startswith("n:m"):
        return
    kind, _, arg = pattern.partition(":")
    if kind == "unstructured":
        magnitude_prune(module, sparsity, filter_fn=filter_fn)
    elif kind == "block":
        magnitude_block = parse_block(arg)
        block_prune(module, sparsity, magnitude_block, filter_fn=filter_fn)
    elif pattern == "n:m" or kind.isdigit():
        n, m = parse_nm(pattern)
        nm_prune(module, n, m, filter_fn=filter_fn)
    else:
        raise ValueError(f"pattern: expected unstructured, block:RxC or N:M (e.g. 2:4), got {pattern!r}")
    finalize(module)


def parse_block(text: str) -> tuple[int, int]:
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"pattern block: expected block:RxC such as block:4x4, got block:{text!r}") from None
    return r, c


def parse_nm(pattern: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in pattern.split(":"))
    except ValueError:
        raise ValueError(f"pattern: expected N:M such as 2:4, got {pattern!r}") from None
    if not 0 < n < m:
        raise ValueError(f"pattern: expected 0 < N < M, got {pattern!r}")
    return n, m


def file_workload(path: str) -> Workload:
    """A workload from any ONNX file (or one saved by sparse_rt): random inputs from its signature.

    Dynamic dims are filled with the batch size (axis 0) or 16 (other axes);
    integer inputs get zeros and ones (valid ids and masks).
    """
    proto = onnx.load(path, load_external_data=False)  # read once: signature and kind
    graph = proto.graph
    converted = any(o.domain == SPARSE_DOMAIN for o in proto.opset_import)
    initializers = {t.name for t in graph.initializer}
    described = [
        (v.name, onnx_dtype_name(v.type.tensor_type.elem_type),
         [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim])
        for v in graph.input if v.name not in initializers
    ]

    def make_feeds(batch: int, seed: int | None = None) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(batch if seed is None else seed)
        feeds = {}
        for name, dtype, shape in described:
            dims = [d if d else (batch if axis == 0 else 16) for axis, d in enumerate(shape)]
            if dtype.startswith("float"):
                feeds[name] = rng.standard_normal(dims).astype(dtype)
            else:
                feeds[name] = rng.integers(0, 2, dims).astype(dtype)
        return feeds

    return Workload(Path(path).stem, Path(path), make_feeds, converted=converted)


# ----------------------------------------------------------------------------- measuring


# The first seed of the calibration inputs (--calibration): apart from the timing feeds
# (seed = batch) and the agreement's inputs (100_000 on).
CALIBRATION_SEED = 200_000
# Calibration inputs with --quantize unless told: on the BERT-base-shaped model, 8 sequences
# correct the biases as well as 32 do.
DEFAULT_CALIBRATION = 8


def default_calibration(quantize: str | None) -> int:
    """Calibration inputs when none are asked for: DEFAULT_CALIBRATION for an int8 run, else none."""
    return DEFAULT_CALIBRATION if quantize else 0


# Rounds the engines take turns in: a slow spell of the machine hits every engine alike.
ROUNDS = 4


def measure_interleaved(
    engines: dict[str, Callable[[], object]], warmup: int, iters: int | None, seconds: float
) -> dict[str, list[float]]:
    """Latencies in seconds of warm calls of each engine, taken in ROUNDS turns: `iters` calls
    per engine in all, or as many as fit in `seconds` per engine (at least 3)."""
    for fn in engines.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for round_index in range(ROUNDS):
        for name, fn in engines.items():
            taken = samples[name]
            if iters is not None:
                goal = iters * (round_index + 1) // ROUNDS
            else:
                goal = 3 * (round_index + 1) // ROUNDS
            start = time.perf_counter()
            while len(taken) < goal or (iters is None and time.perf_counter() - start < seconds / ROUNDS):
                t0 = time.perf_counter()
                fn()
                taken.append(time.perf_counter() - t0)
    return samples


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def max_relative_error(actual: list[np.ndarray], expected: list[np.ndarray]) -> float:
    worst = 0.0
    for a, e in zip(actual, expected):
        scale = max(float(np.abs(e).max(initial=0.0)), 1e-12)
        worst = max(worst, float(np.abs(a.astype(np.float64) - e).max(initial=0.0)) / scale)
    return worst


# ----------------------------------------------------------------------------- the run


def run_bench(args: argparse.Namespace) -> Report:
    set_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="sparse_rt_bench_"))
    stages = ["build", "convert", "measure"]
    bar = tqdm(total=len(stages), desc="bench", unit="stage", disable=args.quiet, leave=False)
    bar.set_postfix_str("building and pruning the model")
    if args.model in MODELS:
        workload = build_workload(args.model, args.sparsity, args.pattern, args.seq_len, workdir)
    elif Path(args.model).exists():
        workload = file_workload(args.model)
    else:
        raise ValueError(f"--model: expected one of {MODELS} or an existing ONNX file, got {args.model!r}")
    bar.update(1)

    bar.set_postfix_str("converting and tuning")
    start = time.perf_counter()
    if workload.converted:
        graph = sparse_rt.load(workload.onnx_path)
    else:
        # default options, as a user converts an exported file
        calibration = [workload.make_feeds(1, seed=CALIBRATION_SEED + i) for i in range(args.calibration)]
        graph = sparse_rt.convert(str(workload.onnx_path), tune=not args.no_tune, progress=not args.quiet,
                                  quantize=args.quantize, calibration=calibration or None, rounding=args.rounding)
    ours = sparse_rt.InferenceSession(graph, threads=args.threads)
    convert_seconds = time.perf_counter() - start
    bar.update(1)

    engines: dict[str, Callable[[dict], list[np.ndarray]]] = {"sparse_rt": lambda feeds: ours.run(None, feeds)}
    if not args.no_compare and not workload.converted:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        ort_session = ort.InferenceSession(str(workload.onnx_path), options, providers=["CPUExecutionProvider"])
        engines = {"onnxruntime": lambda feeds: ort_session.run(None, feeds), **engines}
        if workload.module is not None:
            module = workload.module

            def torch_run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
                with torch.inference_mode():
                    out = module(*(torch.from_numpy(v) for v in feeds.values()))
                return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

            engines = {"onnxruntime": engines["onnxruntime"], "torch": torch_run, "sparse_rt": engines["sparse_rt"]}
        if args.quantize == "int8":
            ort_int8 = ort_quantized_session(workload.onnx_path, workdir, options)
            engines = {"onnxruntime": engines["onnxruntime"], "onnxruntime_int8": lambda feeds: ort_int8.run(None, feeds),
                       **{k: v for k, v in engines.items() if k != "onnxruntime"}}

    rss: dict[str, float] = {}
    if not args.no_memory:
        bar.set_postfix_str("measuring session memory")
        rss = session_memories(workload, graph, "onnxruntime" in engines, args, workdir)
    report = Report(
        model=workload.name, sparsity=args.sparsity if args.model in MODELS else None, pattern=args.pattern,
        threads=args.threads, convert_seconds=convert_seconds, weight_bytes=weight_bytes(graph),
        rss_mb=rss, peak_rss_mb=0.0, environment=environment(), quantize=args.quantize,
        calibration=0 if workload.converted else args.calibration,
        rounding="nearest" if workload.converted else args.rounding,
        precision=layer_precisions(graph),
    )
    bar.set_postfix_str("measuring")
    for batch in args.batch_sizes:
        feeds = workload.make_feeds(batch)
        reference = engines["onnxruntime"](feeds) if "onnxruntime" in engines else None
        base, base_int8 = None, None
        measured = measure_interleaved({name: (lambda engine=engine: engine(feeds)) for name, engine in engines.items()},
                                       args.warmup, args.iters, args.seconds)
        for name, engine in engines.items():
            samples = measured[name]
            p50 = percentile(samples, 50)
            row = Latency(name, batch, p50 * 1e3, percentile(samples, 90) * 1e3, percentile(samples, 99) * 1e3,
                          batch / p50, len(samples))
            if name == "onnxruntime":
                base = p50
            if name == "onnxruntime_int8":
                base_int8 = p50
            if base is not None:
                row.speedup_vs_ort = base / p50
            if base_int8 is not None:
                row.speedup_vs_ort_int8 = base_int8 / p50
            if reference is not None and name != "onnxruntime":
                row.max_rel_error_vs_ort = max_relative_error(engine(feeds), reference)
            report.latencies.append(row)
    if args.agreement and "onnxruntime" in engines:
        bar.set_postfix_str(f"agreement on {args.agreement} inputs")
        report.agreement = agreement(workload, engines, args.agreement)
    if args.per_layer:
        profile = ours.profile(workload.make_feeds(args.batch_sizes[0]))
        report.per_layer = [{"node": label, "ms": seconds * 1e3} for label, seconds in profile]
    report.peak_rss_mb = peak_rss_mb()
    bar.update(1)
    bar.close()
    return report


def ort_quantized_session(onnx_path: Path, workdir: Path, options):
    """onnxruntime on the model quantized by its own `quantize_dynamic` (int8 weights, activations
    quantized per call: MatMulInteger, fused by its optimizer into its int8 GEMM)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = workdir / f"{onnx_path.stem}.int8.onnx"
    quantize_dynamic(str(onnx_path), str(quantized), weight_type=QuantType.QInt8)
    return ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])


def layer_precisions(graph: sparse_rt.Graph) -> dict[str, int]:
    """{"int8": n, "fp32": m}: the converted linear layers by the precision of their weights."""
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op_type == "SparseLinear":
            precision = "int8" if node.attributes["format"].endswith("_int8") else "fp32"
            counts[precision] = counts.get(precision, 0) + 1
    return counts


def pooled(output: np.ndarray) -> np.ndarray:
    """One sample's output as a vector: sequence outputs [1, seq, hidden] averaged over seq."""
    output = np.asarray(output, dtype=np.float64)
    return output.reshape(output.shape[1], -1).mean(axis=0) if output.ndim >= 3 else output.reshape(-1)


def agreement(workload: Workload, engines: dict[str, Callable], samples: int) -> list[dict]:
    """Against onnxruntime fp32 on `samples` seeded single-sample inputs, per other engine (torch
    left out): share of inputs whose pooled output has the same argmax, share of pooled elements
    of the same sign, and the largest relative error of the whole output."""
    names = [n for n in engines if n not in ("onnxruntime", "torch")]
    stats = {n: {"argmax": 0, "sign": 0.0, "max_rel_error": 0.0} for n in names}
    for i in range(samples):
        feeds = workload.make_feeds(1, seed=100_000 + i)
        reference = engines["onnxruntime"](feeds)
        expected = pooled(reference[0])
        for name in names:
            actual = engines[name](feeds)
            vector = pooled(actual[0])
            stats[name]["argmax"] += int(np.argmax(vector) == np.argmax(expected))
            stats[name]["sign"] += float(np.mean(np.sign(vector) == np.sign(expected)))
            stats[name]["max_rel_error"] = max(stats[name]["max_rel_error"], max_relative_error(actual, reference))
    return [{"engine": n, "samples": samples, "argmax_agreement": s["argmax"] / samples,
             "sign_agreement": s["sign"] / samples, "max_rel_error": s["max_rel_error"]} for n, s in stats.items()]


def session_memories(workload: Workload, graph: sparse_rt.Graph, with_ort: bool, args: argparse.Namespace,
                     workdir: Path) -> dict[str, float]:
    """{engine: MiB} a session takes in a fresh process, after one run at the first batch size."""
    feeds = workload.make_feeds(args.batch_sizes[0])
    ours = workload.onnx_path
    if not workload.converted:
        ours = workdir / "sparse_rt.onnx"
        sparse_rt.save(graph, ours)
    memory = {"sparse_rt": session_memory_mb("sparse_rt", ours, feeds, args.threads, workdir)}
    if with_ort:
        memory["onnxruntime"] = session_memory_mb("onnxruntime", workload.onnx_path, feeds, args.threads, workdir)
    return memory


def weight_bytes(graph: sparse_rt.Graph) -> dict[str, int]:
    """Bytes of the linear layers' weights as converted vs as dense float32, and of all constants."""
    from sparse_rt.ops.sparse_linear import weight_of

    linear, dense = 0, 0
    for node in graph.nodes:
        if node.op_type == "SparseLinear":
            w = weight_of(node, graph.constants)
            linear += w.nbytes
            dense += w.shape[0] * w.shape[1] * 4
    constants = sum(a.nbytes for a in graph.constants.values())
    return {"linear_sparse_rt": linear, "linear_dense": dense, "all_constants_sparse_rt": constants}


def environment() -> dict[str, str]:
    import onnxruntime

    from sparse_rt.scheduler.cache import _cpu_model

    return {
        "date": time.strftime("%Y-%m-%d"), "cpu": _cpu_model(), "python": platform.python_version(),
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "sparse_rt": sparse_rt.__version__,
    }


# ----------------------------------------------------------------------------- output


def format_table(report: Report) -> str:
    lines = [
        f"model {report.model}" + (f", {report.sparsity:.0%} {report.pattern}" if report.sparsity is not None else "")
        + f", {report.threads} threads; {report.environment.get('cpu', '')}",
        f"{'engine':<16} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'samples/s':>10} {'vs ort':>7} "
        f"{'vs ort int8':>11} {'max rel err':>11}",
    ]
    for r in report.latencies:
        speed = f"{r.speedup_vs_ort:.2f}x" if r.speedup_vs_ort is not None else "-"
        speed_int8 = f"{r.speedup_vs_ort_int8:.2f}x" if r.speedup_vs_ort_int8 is not None else "-"
        err = f"{r.max_rel_error_vs_ort:.1e}" if r.max_rel_error_vs_ort is not None else "-"
        lines.append(f"{r.engine:<16} {r.batch:>5} {r.p50_ms:>9.2f} {r.p90_ms:>9.2f} {r.p99_ms:>9.2f} "
                     f"{r.throughput:>10.1f} {speed:>7} {speed_int8:>11} {err:>11}")
    if report.quantize:
        rounding = "by GPTQ" if report.rounding == "gptq" else "to nearest"
        corrected = f"biases corrected on {report.calibration} calibration inputs" if report.calibration else "biases as given"
        lines.append(f"quantize {report.quantize}: linear layers by precision "
                     + ", ".join(f"{k} {v}" for k, v in sorted(report.precision.items()))
                     + f"; weights rounded {rounding}, {corrected}")
    for a in report.agreement:
        lines.append(f"agreement with onnxruntime fp32 over {a['samples']} inputs, {a['engine']}: pooled argmax "
                     f"{a['argmax_agreement']:.1%}, pooled signs {a['sign_agreement']:.2%}, max rel error "
                     f"{a['max_rel_error']:.2e}")
    wb = report.weight_bytes
    if wb["linear_dense"]:
        lines.append(f"linear weights: sparse_rt {wb['linear_sparse_rt'] / 2**20:.1f} MiB vs dense "
                     f"{wb['linear_dense'] / 2**20:.1f} MiB ({wb['linear_sparse_rt'] / wb['linear_dense']:.1%})")
    if report.rss_mb:
        lines.append("session memory (RSS growth of a fresh process, one run): "
                     + ", ".join(f"{k} {v:.0f} MiB" for k, v in report.rss_mb.items()))
    lines.append(f"bench process peak RSS {report.peak_rss_mb:.0f} MiB")
    lines.append(f"convert + tune: {report.convert_seconds:.1f} s")
    if report.per_layer:
        lines.append("slowest nodes (sparse_rt, batch %d):" % report.latencies[0].batch)
        lines.extend(f"  {row['ms']:8.3f} ms  {row['node']}" for row in report.per_layer[:15])
    return "\n".join(lines)


def write_plot(reports: list[Report], path: str) -> None:
    """PNG: speedup over onnxruntime vs sparsity (if several), and time per layer (if measured)."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'sparse_rt[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_layer = reports[-1].per_layer
    fig, axes = plt.subplots(1, 2 if per_layer else 1, figsize=(13 if per_layer else 7, 5), squeeze=False)
    ax = axes[0][0]
    batches = sorted({r.batch for rep in reports for r in rep.latencies})
    for batch in batches:
        points = sorted((rep.sparsity or 0.0, r.speedup_vs_ort) for rep in reports for r in rep.latencies
                        if r.engine == "sparse_rt" and r.batch == batch and r.speedup_vs_ort)
        if points:
            xs, ys = zip(*points)
            ax.plot([x * 100 for x in xs], ys, marker="o", label=f"batch {batch}")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("sparsity of linear layers (%)")
    ax.set_ylabel("speedup over onnxruntime dense")
    ax.set_title(f"sparse_rt on {reports[-1].model}")
    ax.legend()
    if per_layer:
        ax2 = axes[0][1]
        top = per_layer[:20][::-1]
        ax2.barh([row["node"][:40] for row in top], [row["ms"] for row in top])
        ax2.set_xlabel("ms per call (median)")
        ax2.set_title("slowest nodes")
        ax2.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sparse_rt.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bert", help=f"built-in {'|'.join(MODELS)} or a path to an ONNX file")
    parser.add_argument("--sparsity", type=float, default=0.9, help="fraction of linear weights pruned (built-in models)")
    parser.add_argument("--pattern", default="unstructured", help="unstructured | block:RxC | N:M")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads for every engine (default: torch's, %(default)s here)")
    parser.add_argument("--warmup", type=int, default=2)
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--iters", type=int, default=None, help="timed runs per engine and batch")
    runs.add_argument("--seconds", type=float, default=4.0, help="time budget per engine and batch (default)")
    parser.add_argument("--suite", choices=["layers", "models", "targets"], default=None,
                        help="run a named suite instead (targets: the real architectures against their speed "
                             "targets, exit status 1 when one misses)")
    parser.add_argument("--suite-models", nargs="+", default=None, metavar="MODEL",
                        help="run only these models of the models or targets suite")
    parser.add_argument("--json", dest="json_path", default=None, help="write every figure to this JSON file")
    parser.add_argument("--per-layer", action="store_true", help="time each node of sparse_rt's graph")
    parser.add_argument("--plot", default=None, help="write a PNG (speedup vs sparsity, time per layer)")
    parser.add_argument("--no-compare", action="store_true", help="time sparse_rt only")
    parser.add_argument("--no-tune", action="store_true", help="heuristic kernel choice (no autotuning)")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip measuring each engine's session memory in a fresh process")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="convert with int8 candidates; adds onnxruntime on its quantize_dynamic model")
    parser.add_argument("--calibration", type=int, default=None,
                        help="with --quantize: random inputs (seeded apart from the agreement's) the int8 layers' "
                             "biases are corrected on (default 8; 0: none)")
    parser.add_argument("--rounding", choices=["nearest", "gptq"], default="nearest",
                        help="with --quantize: int8 weights rounded to nearest or by GPTQ against the calibration inputs")
    parser.add_argument("--agreement", type=int, default=None,
                        help="inputs to compare outputs with onnxruntime fp32 on (default 256 with --quantize, else 0)")
    from sparse_rt.bench_decoders import add_decode_arguments

    add_decode_arguments(parser)
    args = parser.parse_args(argv)
    if args.agreement is None:
        args.agreement = 256 if args.quantize else 0
    if args.calibration is None:
        args.calibration = default_calibration(args.quantize)
    if args.calibration < 0 or (args.calibration and not args.quantize):
        parser.error(f"--calibration: expected a count >= 0 with --quantize, got {args.calibration}")
    if args.rounding == "gptq" and not args.calibration:
        parser.error("--rounding gptq: rounds against calibration inputs, so it needs --calibration N > 0")
    if not 0.0 <= args.sparsity < 1.0:
        parser.error(f"--sparsity: expected a fraction in [0, 1), got {args.sparsity}")
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f"--batch-sizes: expected positive integers, got {args.batch_sizes}")
    if args.seq_len < 1 or args.threads < 1 or args.warmup < 0 or (args.iters is not None and args.iters < 1):
        parser.error("--seq-len, --threads and --iters must be positive, --warmup non-negative")
    unknown = sorted(set(args.suite_models or ()) - set(MODELS))
    if unknown:
        parser.error(f"--suite-models: expected names from {MODELS}, got {unknown}")
    try:
        kind = args.pattern.partition(":")[0]
        if kind == "block":
            parse_block(args.pattern.partition(":")[2])
        elif kind != "unstructured":
            parse_nm(args.pattern)
    except ValueError as exc:
        parser.error(f"--pattern: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.suite == "layers":
        from sparse_rt.bench_layers import main as layers_main

        layers_main(["--threads", str(args.threads)] + (["--json", args.json_path] if args.json_path else []))
        return 0
    if args.model_family:
        from sparse_rt.bench_decoders import main_decode

        try:
            main_decode(args)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    missed = False
    if args.suite == "models":
        from sparse_rt.bench_models import run_models_suite

        reports = run_models_suite(args)
    elif args.suite == "targets":
        from sparse_rt.bench_targets import format_checks, run_targets

        reports, checks = run_targets(args)
        print(format_checks(checks))
        missed = not all(check.met for check in checks)
    else:
        try:
            reports = [run_bench(args)]
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(format_table(reports[0]))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps([asdict(r) for r in reports], indent=2))
    if args.plot:
        write_plot(reports, args.plot)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
