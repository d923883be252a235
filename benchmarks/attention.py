"""Attention on the CPU: sparse_rt's native kernel against torch's fused kernel
(`scaled_dot_product_attention`) and torch's two matmuls and softmax, on the operands as a
converted encoder hands them (q, kT, v: strided views of one fused QKV projection, kT as a
view of k) with an additive key mask, in one process, round-robin, medians of warm calls.

    python benchmarks/attention.py --threads 2 --json benchmarks/results/attention.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from sparse_rt.bench_layers import time_round_robin
from sparse_rt.kernels.cpu.attention import native_attention

# (batch, heads, tokens, head width): BERT-base and MiniLM-shaped encoders, a long sequence
SHAPES = [(1, 12, 128, 64), (8, 12, 128, 64), (1, 12, 384, 32), (1, 12, 512, 64), (1, 12, 16, 64)]


def operands(batch: int, heads: int, tokens: int, width: int):
    qkv = torch.randn(batch, tokens, 3, heads, width)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    mask = torch.where(torch.rand(batch, 1, 1, tokens) < 0.1, -10000.0, 0.0)
    return q, k.transpose(-1, -2), v, mask, width ** -0.5


def contenders(q, k_t, v, mask, scale) -> dict:
    return {
        "sparse_rt": lambda: native_attention(q, k_t, v, mask, scale),
        "torch_sdpa": lambda: F.scaled_dot_product_attention(q, k_t.transpose(-1, -2).contiguous(), v,
                                                             attn_mask=mask, scale=scale),
        "torch_matmuls": lambda: torch.softmax(q @ k_t * scale + mask, dim=-1) @ v,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'batch x heads x tokens x width':>30} {'sparse_rt':>10} {'sdpa':>8} {'matmuls':>8}  (ms)")
    for shape in SHAPES:
        runs = contenders(*operands(*shape))
        samples = time_round_robin(runs, args.iters)
        ms = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
        rows.append({"shape": list(shape), "threads": args.threads, **{f"{n}_ms": m for n, m in ms.items()}})
        print(f"{' x '.join(map(str, shape)):>30} {ms['sparse_rt']:10.3f} {ms['torch_sdpa']:8.3f} {ms['torch_matmuls']:8.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
