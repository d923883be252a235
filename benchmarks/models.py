"""Models suite: MLP, CNN and BERT-base-shaped models at 0-98% sparsity, unstructured and block.

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
