"""Models suite: MLP, CNN and BERT-base-shaped models at 0-98% sparsity, unstructured and block, and the
real architectures of sparse_rt.zoo_hf (BERT-base, DistilBERT, RoBERTa, MiniLM, ViT-base, GPT-2, ResNet-50)
dense, 90% unstructured and 90% 16x16 blocks, each at batch 1 and 8 against onnxruntime and torch.

    python benchmarks/models.py   (same as python -m sparse_rt.bench --suite models --seconds 1 ...)

Writes benchmarks/results/models.json and prints the markdown table of the README.
"""

import sys
from pathlib import Path

from sparse_rt.bench import main

if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "results"
    sys.exit(main(["--suite", "models", "--seconds", "1", "--batch-sizes", "1", "8", "--quiet",
                   "--json", str(out / "models.json"), "--plot", str(out / "models.png"), *sys.argv[1:]]))
