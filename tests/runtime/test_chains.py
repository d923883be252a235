"""Dense or CSR layers that feed each other run as one planned step, with the same results."""

import json

import pytest
import torch
from torch import nn

import sparse_rt
from sparse_rt.converters.fusion import fuse_graph, fuse_linear_activation
from sparse_rt.converters.lowering import Choice, lower_linear_layers
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.converters.torch import export_module
from sparse_rt.formats import CsrFormat
from sparse_rt.ir.graph import SPARSE_DOMAIN, Node, Value
from sparse_rt.kernels.cpu.csr import CsrRowChain
from sparse_rt.kernels.registry import get_kernel
from tests.helpers import assert_close, masked_weight

CHAINED = "chained layers"


def mlp(density: float = 1.0) -> nn.Sequential:
    """Linear+GELU -> Linear -> Tanh -> Linear -> Linear: two chains of two (the Tanh breaks them)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 17), nn.Tanh(), nn.Linear(17, 33), nn.Linear(33, 5))
    with torch.no_grad():
        for i, layer in enumerate(m for m in model if isinstance(m, nn.Linear)):
            layer.weight.copy_(masked_weight(*layer.weight.shape, density, seed=i))
    return model.eval()


def converted(model: nn.Module):
    return sparse_rt.convert(model, (torch.randn(2, 24),), batch_sizes=(1,), tune=False)


def step_labels(session, rows: int = 1) -> list[str]:
    return [label for label, _ in session.profile({session.get_inputs()[0].name: torch.randn(rows, 24)}, repeats=1)]


def linear_nodes(graph):
    return [node for node in graph.nodes if node.op_type == "SparseLinear" and node.domain == SPARSE_DOMAIN]


def check_outputs(session, model, rows=(1, 3, 40)):
    name = session.get_inputs()[0].name
    for count in rows:
        x = torch.randn(count, 24)
        (y,) = session.run(None, {name: x})
        with torch.no_grad():
            assert_close(y, model(x), rtol=1e-5)


def test_dense_layers_that_feed_each_other_run_as_one_step():
    model = mlp()
    graph = converted(model)
    assert {node.attributes["kernel"] for node in linear_nodes(graph)} == {"dense_cpu_native"}
    session = sparse_rt.InferenceSession(graph)
    labels = step_labels(session)
    assert sum(CHAINED in label for label in labels) == 2
    assert len(labels) == 3  # chain, Tanh, chain
    check_outputs(session, model)


@pytest.mark.parametrize("other_reader", ["graph output", "later node"])
def test_a_value_read_elsewhere_is_not_chained_through(other_reader):
    model = mlp()
    graph = converted(model)
    between = linear_nodes(graph)[0].outputs[0]  # GELU(first linear), read by the second
    if other_reader == "graph output":
        graph.outputs.append(Value(between, "float32", None))
    else:
        graph.nodes.append(Node("Neg", [between], ["negated"], {}, "neg"))
        graph.outputs.append(Value("negated", "float32", None))
    session = sparse_rt.InferenceSession(graph)
    assert sum(CHAINED in label for label in step_labels(session)) == 1
    x = torch.randn(3, 24)
    y, extra = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        assert_close(y, model(x), rtol=1e-5)
        hidden = model[1](model[0](x))
        assert_close(extra, hidden if other_reader == "graph output" else -hidden, rtol=1e-5)


def test_rows_dispatched_to_another_kernel_run_layer_by_layer():
    model = mlp()
    graph = converted(model)
    node = linear_nodes(graph)[0]
    node.attributes["dispatch"] = json.dumps([[1, "dense_cpu_native", json.loads(node.attributes["config"])],
                                              [8, "dense_cpu_torch", {"layout": "out_in"}]])
    session = sparse_rt.InferenceSession(graph)
    assert sum(CHAINED in label for label in step_labels(session, rows=1)) == 2
    check_outputs(session, model, rows=(1, 7, 8, 40))


@pytest.mark.parametrize("density", [0.1, 0.0])
def test_layers_on_other_kernels_are_not_chained(density):
    model = mlp(density)
    session = sparse_rt.InferenceSession(converted(model))
    kernels = [node.attributes["kernel"] for node in linear_nodes(session.graph)]
    assert kernels == ["dense_cpu_native", "csr_cpu_rowwise"] * 2  # no two dense layers in a row
    assert not any(CHAINED in label for label in step_labels(session))
    check_outputs(session, model)


def all_csr(model: nn.Module, gemv_layout: str):
    """The model's graph with every linear layer on the CPU CSR kernel (its default config, but
    for the batch-1 layout), GELU fused into the layer before it."""
    proto, _ = export_module(model, (torch.randn(2, 24),))
    graph = import_onnx(proto)
    fuse_graph(graph)
    kernel = get_kernel("csr_cpu_rowwise")

    def csr(layer):
        fmt = CsrFormat.from_dense(torch.from_numpy(layer.weight))
        return Choice(fmt, kernel.name, {**kernel.configs(fmt, torch.device("cpu"))[0], "gemv_layout": gemv_layout})

    lower_linear_layers(graph, csr)
    fuse_linear_activation(graph)
    return graph


@pytest.mark.parametrize("threads", [1, 2])
def test_csr_layers_that_feed_each_other_run_one_row_in_one_call(threads):
    torch.set_num_threads(threads)
    model = mlp(density=0.3)
    session = sparse_rt.InferenceSession(all_csr(model, "slices"))
    labels = step_labels(session)
    assert sum(CHAINED in label for label in labels) == 2 and len(labels) == 3  # chain, Tanh, chain
    chained = [step.fn for step in session._steps if CHAINED in step.label]
    assert all(isinstance(fn.row_chain, CsrRowChain) for fn in chained)
    check_outputs(session, model, rows=(1, 3, 40))


def test_csr_rows_layout_is_not_chained():
    model = mlp(density=0.3)
    session = sparse_rt.InferenceSession(all_csr(model, "rows"))
    assert not any(CHAINED in label for label in step_labels(session))
    check_outputs(session, model, rows=(1, 3))


def test_csr_row_chain_takes_any_single_row_shape():
    kernel = get_kernel("csr_cpu_rowwise")
    weights = [masked_weight(6, 6, 0.5, seed=1), masked_weight(9, 6, 0.5, seed=2)]
    biases = [torch.randn(6), torch.randn(9)]
    layers = []
    # the second layer runs on one thread at most, the first on all
    for weight, bias, activation, cap in zip(weights, biases, ({"activation": "gelu"}, {}), (0, 1)):
        fmt = CsrFormat.from_dense(weight)
        config = {**kernel.configs(fmt, torch.device("cpu"))[0], "gemv_layout": "slices", "gemv_threads": cap}
        layers.append(kernel.bind(fmt, bias, config, torch.device("cpu"), **activation))
    chain = CsrRowChain(layers)
    torch.set_num_threads(2)
    assert chain._table(2)[:, 1].tolist() == [2, 1]  # threads per layer
    for x in (torch.randn(1, 6), torch.randn(6), torch.randn(1, 1, 6)):
        expected = torch.nn.functional.linear(torch.nn.functional.gelu(x @ weights[0].T + biases[0]), weights[1], biases[1])
        y = chain(x)
        assert y.shape == expected.shape
        assert_close(y, expected, rtol=1e-5)


def test_csr_row_chain_rejects_mismatched_layers():
    kernel = get_kernel("csr_cpu_rowwise")
    fmt = CsrFormat.from_dense(masked_weight(8, 6, 0.5))
    config = {**kernel.configs(fmt, torch.device("cpu"))[0], "gemv_layout": "slices"}
    layer = kernel.bind(fmt, None, config, torch.device("cpu"))
    with pytest.raises(ValueError, match="layer 0 gives 8 features but layer 1 takes 6"):
        CsrRowChain([layer, layer])
    rows_layer = kernel.bind(fmt, None, {**config, "gemv_layout": "rows"}, torch.device("cpu"))
    with pytest.raises(ValueError, match="layer 1: expected gemv_layout 'slices', got 'rows'"):
        CsrRowChain([layer, rows_layer])
    square = kernel.bind(CsrFormat.from_dense(masked_weight(6, 6, 0.5)), None, config, torch.device("cpu"))
    with pytest.raises(ValueError, match="expected one row of 6"):
        CsrRowChain([square, square])(torch.randn(2, 6))


def test_a_relu_between_dense_layers_is_fused_and_they_run_as_one_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 17), nn.ReLU(), nn.Linear(17, 5)).eval()
    graph = converted(model)
    assert [node.attributes.get("activation") for node in graph.nodes] == ["relu", "relu", None]
    session = sparse_rt.InferenceSession(graph)
    assert [CHAINED in label for label in step_labels(session)] == [True]
    check_outputs(session, model)
