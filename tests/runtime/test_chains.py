"""Dense layers that feed each other run as one planned step, with the same results."""

import json

import pytest
import torch
from torch import nn

import sparse_rt
from sparse_rt.ir.graph import SPARSE_DOMAIN, Node, Value
from tests.helpers import assert_close, masked_weight

CHAINED = "chained dense layers"


def mlp(density: float = 1.0) -> nn.Sequential:
    """Linear+GELU -> Linear -> ReLU -> Linear -> Linear: two chains of two (the ReLU breaks them)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Linear(40, 17), nn.ReLU(), nn.Linear(17, 33), nn.Linear(33, 5))
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
    assert len(labels) == 3  # chain, Relu, chain
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
