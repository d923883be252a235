"""`python -m sparse_rt.experiments {topologies,permuted,methods} [--quick] [--out DIR] [--threads N]`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from sparse_rt.experiments import EXPERIMENTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_rt.experiments", description=__doc__)
    parser.add_argument("name", choices=sorted(EXPERIMENTS), help="the experiment to run")
    parser.add_argument("--quick", action="store_true", help="a tiny sweep that runs in seconds (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where the results go")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for training (default 1)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads: expected a positive integer, got {args.threads}")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    paths = EXPERIMENTS[args.name](args.out, args.quick)
    print(f"{args.name}: {time.perf_counter() - start:.1f} s")
    for path in paths.values():
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
