"""The zoo_hf architectures on one thread, timed in CPU time: onnxruntime vs sparse_rt.

    python benchmarks/transformers_cpu_time.py bert-base gpt2 --sparsity 0.9 --pattern unstructured

For a machine shared with other work: each engine runs on one thread and is timed
by the process's CPU time (time.process_time), which waiting for a core does not
inflate, engines interleaved, medians. Each model is built (transformers config,
seeded weights), pruned, exported with torch.onnx.export (dynamic batch and
sequence) into --workdir (kept between runs), then converted twice: with default
options (`sparse_rt.convert(path)`) and tuned at --tune-rows rows. Batch 1 and 8,
sequence 128, images 224. --profile adds sparse_rt's CPU time per op type at batch 1.
"""

import argparse
import collections
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

import sparse_rt
import sparse_rt.runtime.session as session_module
from sparse_rt import zoo_hf
from sparse_rt.runtime.session import set_threads


def exported(name: str, sparsity: float, pattern: str, workdir: Path) -> Path:
    path = workdir / f"{name}_{round(sparsity * 100)}_{pattern.replace(':', '')}.onnx"
    if not path.exists():
        model = zoo_hf.build(name)
        if sparsity:
            zoo_hf.prune(model, name, sparsity, pattern)
        zoo_hf.export(model, name, path)
    return path


def cpu_ms(run, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        run()
        samples.append(time.process_time() - start)
    return statistics.median(samples) * 1e3


def measure(name: str, path: Path, tune_rows: int, profile: bool) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    engines = {"onnxruntime": ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])}
    engines["sparse_rt default"] = sparse_rt.InferenceSession(sparse_rt.convert(str(path)), threads=1)
    engines[f"sparse_rt tuned at {tune_rows} rows"] = sparse_rt.InferenceSession(
        sparse_rt.convert(str(path), batch_sizes=(tune_rows,)), threads=1)
    for batch in (1, 8):
        feeds = {k: v.numpy() for k, v in zoo_hf.example_inputs(name, batch, seed=batch).items()}
        reference = engines["onnxruntime"].run(None, feeds)
        errors = {}
        for label, engine in list(engines.items())[1:]:
            out = engine.run(None, feeds)
            errors[label] = max(float(np.abs(a - e).max() / np.abs(e).max()) for a, e in zip(out, reference))
        times = collections.defaultdict(list)
        for _ in range(5 if batch == 1 else 3):
            for label, engine in engines.items():
                times[label].append(cpu_ms(lambda: engine.run(None, feeds), 1))
        base = statistics.median(times["onnxruntime"])
        row = ", ".join(f"{label} {statistics.median(t):.1f} ms ({base / statistics.median(t):.2f}x"
                        + (f", err {errors[label]:.1e})" if label in errors else ")") for label, t in times.items())
        print(f"{path.stem} batch {batch}: {row}", flush=True)
    if profile:
        session_module.time.perf_counter = time.thread_time  # the session's per-node timer, in CPU time
        feeds = {k: v.numpy() for k, v in zoo_hf.example_inputs(name, 1, seed=1).items()}
        by_op = collections.Counter()
        for label, seconds in list(engines.values())[-1].profile(feeds, repeats=3):
            by_op[label.rsplit("(", 1)[-1].rstrip(")")] += seconds * 1e3
        print(f"{path.stem} sparse_rt CPU ms per op type, batch 1:",
              ", ".join(f"{op} {ms:.2f}" for op, ms in by_op.most_common(10)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", choices=sorted(zoo_hf.ARCHITECTURES))
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--pattern", default="unstructured", help="unstructured | block:RxC")
    parser.add_argument("--tune-rows", type=int, default=128)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sparse_rt_transformers"))
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    set_threads(1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        measure(name, exported(name, args.sparsity, args.pattern, args.workdir), args.tune_rows, args.profile)


if __name__ == "__main__":
    main()
