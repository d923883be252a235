"""`python -m sparse_rt.bench --model-family llama|gpt2`: token generation, side by side.

A decoder of the family (`--size full`: Llama-shaped 118M or GPT-2-shaped 106M
parameters; `small`: 31M / 32M; `tiny` for tests; seeded weights) is pruned one-shot (Wanda for unstructured sparsity, SparseGPT for N:M; the
LM head stays dense), exported with past/present key values, and generates greedily in
three engines: sparse_rt (`runtime.generate.Generator`, the cache in preallocated
buffers), onnxruntime on the same pruned file (its presents fed back as pasts) and
torch (`model.generate`). The tokens of all three must be identical. Each engine
generates `--new-tokens` tokens from a `--prompt-len` prompt per round, the engines
taking turns; reported: prefill ms (the prompt's step), decode tokens/s over the other
steps (batch x steps / seconds), and for sparse_rt the GB/s of linear-weight bytes that
decoding streams per step.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

import sparse_rt
from sparse_rt.decoders import FAMILIES, GPT2_32M, GPT2_106M, LLAMA_31M, LLAMA_118M, TINY, DecoderShape
from sparse_rt.decoders import build_decoder, export_decoder
from sparse_rt.runtime.generate import Generator, greedy_stream_with_session, load_layout
from sparse_rt.runtime.session import set_threads

SHAPES = {
    "full": {"llama": LLAMA_118M, "gpt2": GPT2_106M},
    "small": {"llama": LLAMA_31M, "gpt2": GPT2_32M},
    "tiny": {"llama": TINY, "gpt2": TINY},
}


@dataclass
class DecodeFigures:
    engine: str
    batch: int
    prefill_ms: float
    decode_tokens_per_s: float
    rounds: int


@dataclass
class DecodeReport:
    family: str
    parameters: int
    pattern: str
    pruner: str
    sparsity: float
    prompt_len: int
    new_tokens: int
    threads: int
    tokens_match: dict[str, bool] = field(default_factory=dict)
    figures: list[DecodeFigures] = field(default_factory=list)
    linear_bytes_sparse_rt: int = 0
    linear_bytes_dense: int = 0
    kernels: dict[str, int] = field(default_factory=dict)


def not_lm_head(module: torch.nn.Module, name: str) -> bool:
    return not name.endswith("lm_head")


def prune_decoder(model: torch.nn.Module, pattern: str, sparsity: float, pruner: str, vocab: int) -> None:
    """Prune every linear layer but the LM head in place (seeded random calibration tokens)."""
    from sparse_rt.pruning import finalize, magnitude_prune, nm_prune, sparsegpt_prune, wanda_prune

    nm = None if pattern == "unstructured" else tuple(int(v) for v in pattern.split(":"))
    generator = torch.Generator().manual_seed(0)
    calibration = [torch.randint(0, vocab, (2, 64), generator=generator) for _ in range(2)]
    if pruner == "wanda":
        wanda_prune(model, calibration, sparsity, nm=nm, filter_fn=not_lm_head)
    elif pruner == "sparsegpt":
        sparsegpt_prune(model, calibration, sparsity, nm=nm, filter_fn=not_lm_head)
    elif nm is None:
        magnitude_prune(model, sparsity, filter_fn=not_lm_head)
    else:
        nm_prune(model, *nm, filter_fn=not_lm_head)
    finalize(model)


def timed_stream(stream: Iterator[np.ndarray]) -> tuple[float, float, list[np.ndarray]]:
    """(seconds to the first token, seconds for the rest, tokens) of a token stream."""
    start = time.perf_counter()
    tokens = [next(stream)]
    first = time.perf_counter()
    tokens.extend(stream)
    return first - start, time.perf_counter() - first, tokens


class _TimingStreamer:
    """transformers streamer recording when the first new token arrives."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def put(self, value) -> None:
        self.calls.append(time.perf_counter())

    def end(self) -> None:
        self.calls.append(time.perf_counter())


def torch_generation(model: torch.nn.Module, prompt: np.ndarray, new_tokens: int) -> tuple[float, float, list]:
    ids = torch.from_numpy(prompt)
    streamer = _TimingStreamer()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                             min_new_tokens=new_tokens, streamer=streamer, pad_token_id=0)
    first = streamer.calls[1]  # calls[0]: the prompt
    return first - start, streamer.calls[-1] - first, [out[:, i].numpy() for i in range(prompt.shape[1], out.shape[1])]


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_decode_bench(args: argparse.Namespace) -> DecodeReport:
    import onnxruntime

    set_threads(args.threads)
    _say(args, f"building the {args.size} {args.model_family} decoder")
    shape: DecoderShape = SHAPES[args.size][args.model_family]
    model = build_decoder(args.model_family, shape)
    pruner = args.pruner or ("wanda" if args.pattern == "unstructured" else "sparsegpt")
    if args.sparsity > 0 or args.pattern != "unstructured":
        _say(args, f"pruning with {pruner}")
        prune_decoder(model, args.pattern, args.sparsity, pruner, shape.vocab)
    workdir = Path(tempfile.mkdtemp(prefix="sparse_rt_decode_"))
    path = workdir / f"{args.model_family}.onnx"
    _say(args, "exporting")
    export_decoder(model, path)
    _say(args, "converting" + ("" if args.no_tune else " and tuning"))
    graph = sparse_rt.convert(path, batch_sizes=generation_rows(args.batch_sizes, args.prompt_len, args.new_tokens),
                              tune=not args.no_tune)
    session = sparse_rt.InferenceSession(graph)
    layout = load_layout(graph)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    ort_session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    from sparse_rt.bench import weight_bytes

    sizes = weight_bytes(graph)
    report = DecodeReport(
        family=args.model_family, parameters=sum(p.numel() for p in model.parameters()), pattern=args.pattern,
        pruner=pruner, sparsity=args.sparsity if args.pattern == "unstructured" else _nm_sparsity(args.pattern),
        prompt_len=args.prompt_len, new_tokens=args.new_tokens, threads=args.threads,
        linear_bytes_sparse_rt=sizes["linear_sparse_rt"], linear_bytes_dense=sizes["linear_dense"],
        kernels=_kernel_counts(graph),
    )
    n = args.new_tokens
    for batch in args.batch_sizes:
        _say(args, f"generating at batch {batch}")
        prompt = np.random.default_rng(batch).integers(0, shape.vocab, (batch, args.prompt_len))
        engines: dict[str, Callable[[], tuple]] = {
            # a new generator each round over the same bound session: its shape cache starts
            # empty, so every step computes its shape values as a first generation's do (a
            # warm cache would hide that cost)
            "sparse_rt": lambda: timed_stream(Generator(session, context=shape.context).stream(prompt, n)),
            "onnxruntime": lambda: timed_stream(greedy_stream_with_session(ort_session, layout, prompt, n)),
            "torch": lambda: torch_generation(model, prompt, n),
        }
        samples: dict[str, list] = {name: [] for name in engines}
        for _ in range(args.rounds + 1):  # the first round warms up and is dropped
            for name, fn in engines.items():
                samples[name].append(fn())
        reference = np.stack(samples["onnxruntime"][0][2], axis=1)
        for name, runs in samples.items():
            tokens = np.stack(runs[0][2], axis=1)
            report.tokens_match[f"{name}@{batch}"] = bool(np.array_equal(tokens, reference))
            timed = runs[1:]
            report.figures.append(DecodeFigures(
                engine=name, batch=batch, rounds=len(timed),
                prefill_ms=statistics.median(r[0] for r in timed) * 1e3,
                decode_tokens_per_s=statistics.median(batch * (n - 1) / r[1] for r in timed),
            ))
    return report


def generation_rows(batch_sizes: list[int], prompt_len: int, new_tokens: int) -> dict[int, float]:
    """{rows: weight} of the calls one generation makes per batch size: the prefill once at
    batch x prompt rows, then new_tokens - 1 decode steps at batch rows."""
    rows: dict[int, float] = {}
    for batch in batch_sizes:
        rows[batch] = rows.get(batch, 0.0) + max(new_tokens - 1, 1)
        rows[batch * prompt_len] = rows.get(batch * prompt_len, 0.0) + 1.0
    return rows


def _nm_sparsity(pattern: str) -> float:
    n, m = (int(v) for v in pattern.split(":"))
    return 1 - n / m


def _kernel_counts(graph: sparse_rt.Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in graph.nodes:
        if node.op_type == "SparseLinear":
            key = str(node.attributes.get("format", "?"))
            counts[key] = counts.get(key, 0) + 1
    return counts


def format_decode_table(report: DecodeReport) -> str:
    def figure(engine: str, batch: int) -> DecodeFigures:
        return next(f for f in report.figures if f.engine == engine and f.batch == batch)

    lines = [
        f"{report.family} ({report.parameters / 1e6:.0f}M parameters), {report.pruner} {report.pattern} "
        f"sparsity {report.sparsity:.0%}, prompt {report.prompt_len}, {report.new_tokens} new tokens, "
        f"{report.threads} threads; linear weights {report.linear_bytes_sparse_rt / 2**20:.1f} MiB "
        f"(dense {report.linear_bytes_dense / 2**20:.1f} MiB), formats {report.kernels}",
        "| batch | engine | prefill ms | decode tokens/s | decode vs onnxruntime | prefill vs onnxruntime "
        "| weight GB/s | greedy tokens = onnxruntime |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for batch in sorted({f.batch for f in report.figures}):
        ort_figure = figure("onnxruntime", batch)
        for engine in ("sparse_rt", "onnxruntime", "torch"):
            f = figure(engine, batch)
            weights = report.linear_bytes_sparse_rt if engine == "sparse_rt" else report.linear_bytes_dense
            steps_per_s = f.decode_tokens_per_s / batch
            lines.append(
                f"| {batch} | {engine} | {f.prefill_ms:.1f} | {f.decode_tokens_per_s:.1f} "
                f"| {f.decode_tokens_per_s / ort_figure.decode_tokens_per_s:.2f}x "
                f"| {ort_figure.prefill_ms / f.prefill_ms:.2f}x | {weights * steps_per_s / 1e9:.2f} "
                f"| {report.tokens_match[f'{engine}@{batch}']} |"
            )
    return "\n".join(lines)


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-family", choices=FAMILIES, default=None,
                        help="benchmark token generation of a pruned decoder of this family instead")
    parser.add_argument("--size", choices=sorted(SHAPES), default="full", help="decoder size (--model-family)")
    parser.add_argument("--pruner", choices=["wanda", "sparsegpt", "magnitude"], default=None,
                        help="one-shot pruner (--model-family; default wanda, sparsegpt for N:M)")
    parser.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (--model-family)")
    parser.add_argument("--new-tokens", type=int, default=64, help="generated tokens (--model-family)")
    parser.add_argument("--rounds", type=int, default=3, help="timed generations per engine (--model-family)")


def main_decode(args: argparse.Namespace) -> DecodeReport:
    if args.pattern not in ("unstructured",) and ":" not in args.pattern:
        raise ValueError(f"--pattern: expected unstructured or N:M with --model-family, got {args.pattern!r}")
    shape = SHAPES[args.size][args.model_family]
    if args.prompt_len + args.new_tokens > shape.context:
        raise ValueError(f"--prompt-len + --new-tokens: expected at most the context {shape.context}, "
                         f"got {args.prompt_len + args.new_tokens}")
    report = run_decode_bench(copy.copy(args))
    print(format_decode_table(report))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(asdict(report), indent=2))
    return report
