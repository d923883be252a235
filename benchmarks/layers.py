"""Layer suite: every format x density x batch x shape against dense onnxruntime, torch and torch.sparse.

    python benchmarks/layers.py --quick        (same as python -m sparse_rt.bench --suite layers)
"""

import sys

from sparse_rt.bench_layers import main

if __name__ == "__main__":
    main(sys.argv[1:])
