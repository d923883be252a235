"""Kernels with a fused GELU or ReLU epilogue, the SparseLinear op applying it, and the fusion that sets it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sparse_rt
from sparse_rt.converters.fusion import fuse_linear_activation
from sparse_rt.formats import CsrFormat, DenseFormat
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.registry import get_kernel
from sparse_rt.ir.graph import Node, Value
from sparse_rt.zoo import MLP, seeded
from tests.helpers import masked_weight

pytestmark = pytest.mark.skipif(not native_available(), reason="no C compiler for the CPU kernels")


def expected(x, weight, bias):
    return F.gelu(x.double() @ weight.double().T + bias.double())


@pytest.mark.parametrize("kernel_name, make", [("dense_cpu_native", DenseFormat.from_dense),
                                                ("csr_cpu_rowwise", CsrFormat.from_dense)], ids=["dense", "csr"])
@pytest.mark.parametrize("shape", [(37, 53), (70, 300), (1, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_gelu_epilogue_every_config(kernel_name, make, shape):
    weight = masked_weight(*shape, density=0.3) if kernel_name.startswith("csr") else torch.randn(*shape)
    bias = torch.randn(shape[0])
    kernel = get_kernel(kernel_name)
    fmt = make(weight)
    for config in kernel.configs(fmt, torch.device("cpu")):
        linear = kernel.bind(fmt, bias, config, torch.device("cpu"), activation="gelu")
        for batch in (1, 3, 40):
            x = torch.randn(batch, shape[1])
            torch.testing.assert_close(linear(x).double(), expected(x, weight, bias), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("shape", [(37, 53), (70, 300), (1, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_dense_relu_epilogue_every_config(shape):
    weight, bias = torch.randn(*shape), torch.randn(shape[0])
    kernel = get_kernel("dense_cpu_native")
    fmt = DenseFormat.from_dense(weight)
    for config in kernel.configs(fmt, torch.device("cpu")):
        linear = kernel.bind(fmt, bias, config, torch.device("cpu"), activation="relu")
        for batch in (1, 3, 40):
            x = torch.randn(batch, shape[1])
            torch.testing.assert_close(linear(x).double(), F.relu(x.double() @ weight.double().T + bias.double()),
                                       rtol=1e-4, atol=2e-5)


def test_unknown_activation_is_refused():
    fmt = DenseFormat.from_dense(torch.randn(4, 3))
    config = get_kernel("dense_cpu_native").configs(fmt, torch.device("cpu"))[0]
    with pytest.raises(ValueError, match=r"activation: expected None or one of \['gelu', 'relu'\], got 'swish'"):
        get_kernel("dense_cpu_native").bind(fmt, None, config, torch.device("cpu"), activation="swish")


def test_mlp_gelus_fold_into_the_linear_layers_and_match_torch():
    module = seeded(MLP((12, 40, 24, 5)))
    x = torch.randn(3, 12)
    graph = sparse_rt.convert(module, (x,), tune=False)
    assert [n.op_type for n in graph.nodes] == ["SparseLinear"] * 3
    assert [n.attributes.get("activation") for n in graph.nodes] == ["gelu", "gelu", None]
    (y,) = sparse_rt.InferenceSession(graph).run(None, {graph.inputs[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, module(x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_kernel_without_the_epilogue_gets_gelu_applied_after():
    module = seeded(MLP((12, 40, 5)))
    x = torch.randn(3, 12)
    graph = sparse_rt.convert(module, (x,), tune=False)
    for node in graph.nodes:
        node.attributes["kernel"], node.attributes["config"] = "dense_cpu_torch", '{"layout": "out_in"}'
    (y,) = sparse_rt.InferenceSession(graph).run(None, {graph.inputs[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(y, module(x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_gelu_with_another_reader_stays():
    module = seeded(MLP((12, 40, 5)))
    graph = sparse_rt.convert(module, (torch.randn(2, 12),), tune=False, lower=True)
    for node in graph.nodes:
        node.attributes.pop("activation", None)
    first = graph.nodes[0]
    hidden = first.outputs[0] + "_pre"
    gelu = Node("Gelu", [hidden], [first.outputs[0]], {}, "gelu", "ai.sparse_rt")
    first.outputs[0] = hidden
    graph.nodes.insert(1, gelu)
    graph.outputs.append(Value(hidden, "float32", (2, 40)))
    assert fuse_linear_activation(graph) == 0


@pytest.mark.parametrize("num_threads", [1, 2, 3])
@pytest.mark.parametrize("batch_vectors", [1, 2, 4])
@pytest.mark.parametrize("rows", [2, 5, 17, 40, 100])
def test_csr_layers_chained_through_batch_tiles_match_unchained(batch_vectors, rows, num_threads, monkeypatch):
    """Every split of the batched kernel (by output rows, by input tiles) reading and writing tiles."""
    from sparse_rt.kernels.cpu.csr import BatchTiles

    monkeypatch.setattr(torch, "get_num_threads", lambda: num_threads)

    config = {"tasks_per_thread": 2, "unroll": 1, "batch_vectors": batch_vectors}
    shapes = [(48, 24), (40, 48), (8, 40)]  # 24 -> 48 -> 40 -> 8
    weights = [masked_weight(o, i, density=0.3, seed=s) for s, (o, i) in enumerate(shapes)]
    biases = [torch.randn(o) for o, _ in shapes]
    kernel = get_kernel("csr_cpu_rowwise")
    cpu = torch.device("cpu")
    chained = [kernel.bind(CsrFormat.from_dense(w), b, config, cpu, activation="gelu", tiles_out=True)
               for w, b in zip(weights[:2], biases[:2])]
    last = kernel.bind(CsrFormat.from_dense(weights[2]), biases[2], config, cpu)
    x = torch.randn(3, rows, 24)
    h = chained[1](chained[0](x))
    assert isinstance(h, BatchTiles) and h.leading == (3, rows) and h.features == 40
    y = last(h)
    expected = x.double()
    for w, b, act in zip(weights, biases, (True, True, False)):
        expected = expected @ w.double().T + b.double()
        expected = F.gelu(expected) if act else expected
    assert y.shape == (3, rows, 8)
    torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=5e-5)


def test_tiles_of_another_width_are_refused():
    from sparse_rt.kernels.cpu.csr import BatchTiles

    kernel = get_kernel("csr_cpu_rowwise")
    linear = kernel.bind(CsrFormat.from_dense(masked_weight(8, 16, density=0.5)), None,
                         {"tasks_per_thread": 1, "unroll": 1, "batch_vectors": 2}, torch.device("cpu"))
    other_width = 4 * simd_width()  # the layer cuts tiles 2 * simd_width() rows wide
    with pytest.raises(ValueError, match=f"input tiles: expected 16 features cut {2 * simd_width()} rows wide"):
        linear(BatchTiles(torch.zeros(16 * other_width), 4, 16, (4,), other_width))


def test_conversion_chains_csr_layers_read_by_one_csr_layer():
    from sparse_rt.converters.fusion import chain_csr_layers, fuse_graph
    from sparse_rt.converters.lowering import Choice, lower_linear_layers
    from sparse_rt.converters.onnx import import_onnx
    from sparse_rt.converters.torch import export_module

    module = seeded(MLP((12, 40, 24, 5)))
    x = torch.randn(6, 12)
    proto, _ = export_module(module, (x,))
    graph = import_onnx(proto)
    fuse_graph(graph)

    def csr(layer):
        config = {"batch_vectors": 1 if layer.weight.shape[0] == 5 else 2, "tasks_per_thread": 1, "unroll": 1}
        return Choice(CsrFormat.from_dense(torch.from_numpy(layer.weight)), "csr_cpu_rowwise", config)

    lower_linear_layers(graph, csr)
    fuse_linear_activation(graph)
    assert chain_csr_layers(graph) == 2
    assert [n.attributes.get("output_layout") for n in graph.nodes] == ["batch_tiles", "batch_tiles", None]
    assert '"batch_vectors": 1' in graph.nodes[1].attributes["config"]  # the reader's tile width
    assert '"batch_vectors": 2' in graph.nodes[1].attributes["tuned_config"]  # as chosen, for explain
    assert "tuned_config" not in graph.nodes[2].attributes
    for rows in (1, 6, 33):
        x = torch.randn(rows, 12)
        (y,) = sparse_rt.InferenceSession(graph).run(None, {graph.inputs[0].name: x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(y, module(x).numpy(), rtol=1e-4, atol=1e-5)
