"""torch.nn.Module -> sparse_rt: every form pruned weights come in, and structured layers."""

import tempfile

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import sparse_rt
from sparse_rt.pruning.butterfly import ButterflyLinear
from sparse_rt.pruning.magnitude import magnitude_prune
from sparse_rt.pruning.permuted import PermutedBlockLinear
from tests.helpers import relative_error


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 10))


def zeros_baked_in(model):
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                w = layer.weight
                w.mul_(w.abs() > w.abs().flatten().kthvalue(int(0.9 * w.numel())).values)


def torch_nn_utils_prune(model):
    for layer in model:
        if isinstance(layer, nn.Linear):
            torch_prune.l1_unstructured(layer, "weight", amount=0.9)  # weight_orig * weight_mask, hooks attached


def torch_ao_pruning(model):
    from torch.ao.pruning import WeightNormSparsifier

    sparsifier = WeightNormSparsifier(sparsity_level=0.9, sparse_block_shape=(1, 1), zeros_per_block=1)
    config = [{"tensor_fqn": f"{i}.weight"} for i, layer in enumerate(model) if isinstance(layer, nn.Linear)]
    sparsifier.prepare(model, config)
    sparsifier.step()  # masks live in parametrizations, not squashed


def sparse_rt_pruners(model):
    magnitude_prune(model, 0.9)  # our masks, still attached


@pytest.mark.parametrize("prune", [zeros_baked_in, torch_nn_utils_prune, torch_ao_pruning, sparse_rt_pruners],
                         ids=lambda f: f.__name__)
def test_every_mask_form_converts_to_sparse_layers_with_equal_outputs(prune):
    model = mlp().eval()
    prune(model)
    x = torch.randn(7, 64)
    with torch.no_grad():
        expected = model(x).numpy()
    graph = sparse_rt.convert(model, example_inputs=(torch.randn(2, 64),), batch_sizes=(1,), tune=False)
    formats = [n.attributes["format"] for n in graph.nodes if n.op_type == "SparseLinear"]
    assert len(formats) == 3 and all(f != "dense" for f in formats), formats
    (y,) = sparse_rt.InferenceSession(graph).run(None, {graph.inputs[0].name: x.numpy()})
    assert relative_error(y, expected) <= 1e-4
    # the user's module is left as it was
    with torch.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), expected)


class StructuredNet(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.butterfly = ButterflyLinear(48, 64, bias=True, generator=g)
        self.permuted = PermutedBlockLinear(64, 40, depth=3, bias=True, generator=g)
        self.head = nn.Linear(40, 10)

    def forward(self, x):
        return self.head(torch.relu(self.permuted(torch.relu(self.butterfly(x)))))


def test_structured_layers_arrive_as_their_formats():
    model = StructuredNet().eval()
    x = torch.randn(5, 48)
    with torch.no_grad():
        expected = model(x).numpy()
    graph = sparse_rt.convert(model, example_inputs=(torch.randn(2, 48),), tune=False)
    formats = sorted(n.attributes["format"] for n in graph.nodes if n.op_type == "SparseLinear")
    assert "butterfly" in formats and "permuted" in formats
    (y,) = sparse_rt.InferenceSession(graph).run(None, {graph.inputs[0].name: x.numpy()})
    assert relative_error(y, expected) <= 1e-4


def test_module_without_example_inputs_is_rejected():
    with pytest.raises(TypeError, match="example_inputs"):
        sparse_rt.convert(mlp())


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_a_module_past_the_limit_goes_through_a_file_and_its_weights_are_mapped(exporter, tmp_path, monkeypatch):
    """Past EXPORT_TO_FILE_BYTES (2 GiB modules; lowered here) a module is exported to a file with
    its weights beside it, which conversion maps; the graph stays whole once that directory is gone."""
    from sparse_rt.converters import torch as torch_converter

    model = mlp()
    zeros_baked_in(model)
    x = torch.randn(3, 64)
    monkeypatch.setattr(torch_converter, "EXPORT_TO_FILE_BYTES", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    exported, _ = torch_converter.export_module(model, (x,), exporter=exporter, directory=tmp_path)
    assert exported == tmp_path / "model.onnx" and exported.exists()
    graph = sparse_rt.convert(model, example_inputs=(x,))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("sparse_rt_export_")]  # removed after conversion
    assert "SparseLinear" in [n.op_type for n in graph.nodes]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(sparse_rt.InferenceSession(graph).run(None, {"input": x.numpy()})[0], expected,
                               rtol=1e-5, atol=1e-6)
