"""More architectures users bring, beyond `sparse_rt.zoo_hf`: transformers configs of the base
(or small) sizes with seeded weights, every Linear of 64 to 30k features magnitude-pruned to
90% (not the embeddings), exported by torch.onnx.export with dynamic axes, converted with
`sparse_rt.convert(path)` and no options, checked against onnxruntime and timed at batch 1
(128 tokens, images 224; SegFormer 512) taking turns with onnxruntime in one process.

    python benchmarks/architectures.py [NAME ...]

Writes benchmarks/results/architectures.json and .md (medians over 5 rounds of 8 runs each;
the speedup is the median of the rounds' ratios).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers as t

import sparse_rt
from sparse_rt.bench import prune

ROUNDS, RUNS = 5, 8


def _text(config, model_class):
    def inputs(batch, length):
        generator = torch.Generator().manual_seed(batch)
        return {"input_ids": torch.randint(5, 1000, (batch, length), generator=generator),
                "attention_mask": torch.ones(batch, length, dtype=torch.int64)}
    return model_class(config), inputs, {0: "batch", 1: "sequence"}


def _image(config, model_class, size=224):
    def inputs(batch, _length):
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))}
    return model_class(config), inputs, {0: "batch"}


BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
SMALL = dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536)
ARCHITECTURES = {
    "deberta-v3-base": lambda: _text(t.DebertaV2Config(
        **BASE, vocab_size=128100, relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"],
        max_relative_positions=-1, position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True),
        t.DebertaV2Model),
    "t5-base-encoder": lambda: _text(t.T5Config(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64),
                                     t.T5EncoderModel),
    "albert-base": lambda: _text(t.AlbertConfig(**BASE, embedding_size=128), t.AlbertModel),
    "electra-base": lambda: _text(t.ElectraConfig(**BASE, embedding_size=768), t.ElectraModel),
    "mpnet-base": lambda: _text(t.MPNetConfig(), t.MPNetModel),
    "clip-vit-b32": lambda: _image(t.CLIPVisionConfig(patch_size=32), t.CLIPVisionModel),
    "swin-tiny": lambda: _image(t.SwinConfig(), t.SwinModel),
    "deit-small": lambda: _image(t.DeiTConfig(**SMALL), t.DeiTModel),
    "dinov2-small": lambda: _image(t.Dinov2Config(hidden_size=384, num_attention_heads=6, patch_size=14),
                                   t.Dinov2Model),
    "beit-base": lambda: _image(t.BeitConfig(), t.BeitModel),
    "segformer-b0": lambda: _image(t.SegformerConfig(), t.SegformerModel, size=512),
}


def pruned_linear(module: torch.nn.Module, _name: str) -> bool:
    """Every Linear of 64 to 30k features (the embeddings and vocabulary-wide layers stay dense)."""
    return isinstance(module, torch.nn.Linear) and 64 <= min(module.weight.shape) and max(module.weight.shape) < 30000


def measure(name: str, workdir: Path) -> dict:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, inputs, axes = ARCHITECTURES[name]()
    model.eval()
    prune(model, 0.9, "unstructured", filter_fn=pruned_linear)
    example = inputs(2, 16)
    with torch.no_grad():
        outputs = [k for k, v in model(**example).items() if isinstance(v, torch.Tensor)]
    path = workdir / f"{name}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (), str(path), kwargs=example, input_names=list(example), output_names=outputs,
                          dynamic_axes={k: axes for k in example}, opset_version=18, verbose=False)
    start = time.perf_counter()
    graph = sparse_rt.convert(str(path))
    convert_seconds = time.perf_counter() - start
    ours = sparse_rt.InferenceSession(graph, threads=2)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    reference = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() for k, v in inputs(1, 128).items()}
    error = max(float(np.abs(a - e).max() / (np.abs(e).max() + 1e-12))
                for a, e in zip(ours.run(None, feeds), reference.run(None, feeds)))
    rounds = {"sparse_rt": [], "onnxruntime": []}
    for _ in range(ROUNDS):
        for engine, session in (("sparse_rt", ours), ("onnxruntime", reference)):
            times = []
            for _ in range(RUNS):
                start = time.perf_counter()
                session.run(None, feeds)
                times.append(time.perf_counter() - start)
            rounds[engine].append(float(np.median(times)))
    ratios = np.array(rounds["onnxruntime"]) / np.array(rounds["sparse_rt"])
    ops = [n.op_type for n in graph.nodes]
    return {"model": name, "onnxruntime_ms": 1e3 * float(np.median(rounds["onnxruntime"])),
            "sparse_rt_ms": 1e3 * float(np.median(rounds["sparse_rt"])), "speedup": float(np.median(ratios)),
            "max_rel_error": error, "convert_seconds": convert_seconds, "sparse_linear_nodes": ops.count("SparseLinear"),
            "fused_attention_nodes": ops.count("ScaledDotProductAttention")}


def main(names: list[str]) -> None:
    torch.set_num_threads(2)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in names or ARCHITECTURES:
            results.append(measure(name, Path(workdir)))
            print(json.dumps(results[-1]), flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    lines = [f"{cpu}, 2 threads, {time.strftime('%Y-%m-%d')}, onnxruntime {ort.__version__}, torch {torch.__version__}: "
             "90% of every Linear pruned, batch 1, 128 tokens (images 224, SegFormer 512), p50 ms", "",
             "| model | onnxruntime ms | sparse_rt ms | vs onnxruntime | max rel error | SparseLinear | fused attention |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['onnxruntime_ms']:.1f} | {r['sparse_rt_ms']:.1f} | **{r['speedup']:.2f}x** | "
              f"{r['max_rel_error']:.1e} | {r['sparse_linear_nodes']} | {r['fused_attention_nodes']} |" for r in results]
    out = Path(__file__).resolve().parent / "results"
    (out / "architectures.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "architectures.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
