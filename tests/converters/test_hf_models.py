"""Real architectures (tiny transformers configs), pruned, exported with torch.onnx.export and dynamic
axes, converted with default options: sparse_rt matches onnxruntime on the same file."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

pytest.importorskip("transformers")

import sparse_rt
from sparse_rt import zoo_hf
from tests.helpers import relative_error

# one architecture per family (MiniLM is a BertModel of another shape), each with a pruning pattern
CASES = [
    ("bert-base", "unstructured"),
    ("distilbert", "block:16x16"),
    ("roberta-base", "unstructured"),
    ("deberta-v3-base", "unstructured"),
    ("vit-base", "block:16x16"),
    ("gpt2", "unstructured"),
    ("resnet50", "block:16x16"),
    ("resnet50-all-convs", "unstructured"),
    ("convnext-tiny", "unstructured"),
    ("mobilenet-v2", "unstructured"),
]
CONVOLUTIONAL = {"resnet50", "resnet50-all-convs", "convnext-tiny", "mobilenet-v2"}


@pytest.mark.slow
@pytest.mark.parametrize("name,pattern", CASES, ids=[c[0] for c in CASES])
def test_pruned_export_matches_onnxruntime(name, pattern, tmp_path):
    model = zoo_hf.prune(zoo_hf.build(name, tiny=True), name, 0.9, pattern)
    densities = [float((m.weight != 0).float().mean()) for n, m in model.named_modules()
                 if hasattr(m, "weight") and m.weight.dim() in (2, 4) and zoo_hf.pruned_layers_filter(name)(m, n)]
    assert densities and max(densities) <= 0.13, densities  # 90% of the blocks: 2 of 16 kept in 64x64
    path = zoo_hf.export(model, name, tmp_path / f"{name}.onnx", tiny=True)

    graph = sparse_rt.convert(str(path))
    ops = {n.op_type for n in graph.nodes}
    assert "SparseLinear" in ops
    if name == "deberta-v3-base":  # the relative positions' products keep only the gathered entries
        assert "MatMulGatherElements" in ops and "GatherElements" not in ops
    elif name not in CONVOLUTIONAL:  # torch.export's attention decomposition is recognised
        assert "ScaledDotProductAttention" in ops and "Softmax" not in ops
    ours = sparse_rt.InferenceSession(graph)
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # other batch and sequence lengths than at export; a padded sample exercises the mask
    for batch, seq in ((1, 7), (3, 20)):
        feeds = {k: v.numpy() for k, v in zoo_hf.example_inputs(name, batch, seq_len=seq, tiny=True,
                                                                  padded=True, seed=batch).items()}
        expected = reference.run(None, feeds)
        actual = ours.run(None, feeds)
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert relative_error(a, e) < 1e-4
    with torch.no_grad():
        torch_out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})[0]
    assert relative_error(actual[0], torch_out) < 1e-4


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="expected one of .*bert-base.*got 'bart'"):
        zoo_hf.build("bart")
