"""ResNet-50 with every convolution pruned, as CNNs are usually pruned: the transformers
ResNet-50 (seeded weights) with each Conv2d and the classifier magnitude-pruned by
torch.nn.utils.prune.l1_unstructured, exported by torch.onnx.export, then the bench on that
file (onnxruntime dense against sparse_rt, taking turns in one process). Its 3x3 convs run
as Im2Col + SparseLinear; the RGB stem stays a convolution.

    python benchmarks/resnet50_all_convs.py --sparsity 0.9 --json benchmarks/results/r.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from torch import nn
from torch.nn.utils import prune

from sparse_rt import bench, zoo_hf


def pruned_export(sparsity: float, path: Path) -> Path:
    model = zoo_hf.build("resnet50")
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(module, "weight", sparsity)
            prune.remove(module, "weight")
    return zoo_hf.export(model, "resnet50", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        path = pruned_export(args.sparsity, Path(workdir) / f"resnet50_all_convs_{round(args.sparsity * 100)}.onnx")
        argv = ["--model", str(path), "--batch-sizes", *map(str, args.batch_sizes), "--threads", str(args.threads),
                "--no-memory", "--quiet"]
        bench.main(argv + (["--json", args.json_path] if args.json_path else []))


if __name__ == "__main__":
    main()
