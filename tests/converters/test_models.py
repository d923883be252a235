"""Exported torch models convert and match onnxruntime (dense and with lowered linear layers)."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import sparse_rt
from sparse_rt.converters.torch import export_module
from sparse_rt.zoo import MLP, Decoder, Encoder, SmallCNN, TransformerConfig, seeded
from tests.helpers import relative_error

TINY = TransformerConfig(vocab_size=50, hidden=32, layers=2, heads=4, ffn=64, max_positions=32)


def _mlp():
    return seeded(MLP((24, 48, 40, 10))), lambda b, s: (torch.randn(b, 24),), {}


def _cnn():
    return seeded(SmallCNN(channels=8, blocks=2, classes=5)), lambda b, s: (torch.randn(b, 3, 17, 15),), {}


def _encoder():
    def inputs(b, s):
        mask = torch.ones(b, s, dtype=torch.int64)
        mask[0, s // 2 :] = 0
        return torch.randint(0, TINY.vocab_size, (b, s)), mask

    return seeded(Encoder(TINY)), inputs, {1: "seq"}


def _decoder():
    return seeded(Decoder(TINY)), lambda b, s: (torch.randint(0, TINY.vocab_size, (b, s)),), {1: "seq"}


MODELS = {"mlp": _mlp, "cnn": _cnn, "bert": _encoder, "gpt2": _decoder}


def _prune(module: torch.nn.Module, sparsity: float) -> None:
    """Zero the smallest-magnitude weights of every Linear and 1x1 Conv (test-local pruning)."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, torch.nn.Linear) or (isinstance(sub, torch.nn.Conv2d) and sub.kernel_size == (1, 1)):
                w = sub.weight
                k = int(w.numel() * sparsity)
                threshold = w.abs().flatten().kthvalue(k).values
                w.mul_(w.abs() > threshold)


@pytest.fixture(scope="module", params=[(m, e) for m in MODELS for e in ("torchscript", "dynamo")], ids=lambda p: f"{p[0]}-{p[1]}")
def exported(request):
    name, exporter = request.param
    torch.manual_seed(0)
    module, make_inputs, dims = MODELS[name]()
    _prune(module, 0.8)
    proto, _ = export_module(module, make_inputs(2, 6), dynamic_dims=dims, exporter=exporter)
    return proto, make_inputs


def _feeds(proto, tensors):
    return {i.name: t.numpy() for i, t in zip(proto.graph.input, tensors)}


@pytest.mark.parametrize("lower", [False, True], ids=["dense", "lowered"])
def test_converted_model_matches_onnxruntime(exported, lower):
    proto, make_inputs = exported
    graph = sparse_rt.convert(proto, lower=lower, tune=False)
    if lower:
        assert any(n.op_type == "SparseLinear" for n in graph.nodes)
    session = sparse_rt.InferenceSession(graph)
    reference = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch, seq in [(1, 5), (3, 9)]:
        torch.manual_seed(batch)
        feeds = _feeds(proto, make_inputs(batch, seq))
        expected = reference.run(None, feeds)
        actual = session.run(None, feeds)
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert a.shape == e.shape and a.dtype == e.dtype
            assert relative_error(a, e) <= 1e-4


def test_saved_model_reloads_and_runs(exported, tmp_path):
    proto, make_inputs = exported
    graph = sparse_rt.convert(proto, tune=False)
    path = tmp_path / "model.onnx"
    sparse_rt.save(graph, path)
    feeds = _feeds(proto, make_inputs(2, 7))
    expected = sparse_rt.InferenceSession(graph).run(None, feeds)
    actual = sparse_rt.InferenceSession(path).run(None, feeds)
    for a, e in zip(actual, expected):
        np.testing.assert_array_equal(a, e)
