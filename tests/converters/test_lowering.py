"""Lowering: linear layers reading the same input merge into one SparseLinear and a Split."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.converters.lowering import lower_linear_layers
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.scheduler.plan import make_chooser
from tests.helpers import assert_close

RNG = np.random.default_rng(0)
WEIGHTS = {name: RNG.standard_normal((6, out)).astype(np.float32) for name, out in [("wq", 4), ("wk", 5), ("wv", 3)]}
BIASES = {"bq": RNG.standard_normal(4).astype(np.float32), "bv": RNG.standard_normal(3).astype(np.float32)}


def projections_model(opset: int):
    """x [batch, 6] -> q = x wq + bq, k = x wk (no bias), v = x wv + bv; y = Relu(x) wk."""
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q0"], name="q"),
        helper.make_node("Add", ["q0", "bq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
        helper.make_node("MatMul", ["x", "wv"], ["v0"], name="v"),
        helper.make_node("Add", ["bv", "v0"], ["v"]),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MatMul", ["r", "wk"], ["y"], name="other"),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", w]) for n, w in
               [("q", 4), ("k", 5), ("v", 3), ("y", 5)]]
    graph = helper.make_graph(
        nodes, "projections", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])], outputs,
        initializer=[numpy_helper.from_array(a, n) for n, a in {**WEIGHTS, **BIASES}.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def expected(x):
    return [x @ WEIGHTS["wq"] + BIASES["bq"], x @ WEIGHTS["wk"], x @ WEIGHTS["wv"] + BIASES["bv"],
            np.maximum(x, 0) @ WEIGHTS["wk"]]


@pytest.mark.parametrize("opset", [11, 17])
def test_layers_reading_one_input_become_one_sparse_linear_and_a_split(opset):
    graph = import_onnx(projections_model(opset))
    count = lower_linear_layers(graph, make_chooser(torch.device("cpu"), tune=False))
    assert count == 2
    linear = [n for n in graph.nodes if n.op_type == "SparseLinear"]
    assert sorted(graph.constants[n.inputs[2]].shape[0] for n in linear) == [5, 12]  # dense weights [out, in]
    (split,) = [n for n in graph.nodes if n.op_type == "Split"]
    assert split.outputs == ["q", "k", "v"]
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    for actual, wanted in zip(sparse_rt.InferenceSession(graph).run(None, {"x": x}), expected(x)):
        assert_close(actual, wanted)


def test_layers_kept_apart_are_not_merged():
    graph = import_onnx(projections_model(17))
    count = lower_linear_layers(graph, make_chooser(torch.device("cpu"), tune=False), keep_apart=lambda layer: True)
    assert count == 4 and not any(n.op_type == "Split" for n in graph.nodes)
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    for actual, wanted in zip(sparse_rt.InferenceSession(graph).run(None, {"x": x}), expected(x)):
        assert_close(actual, wanted)


def test_a_layer_read_only_by_a_gelu_is_tuned_with_it():
    from sparse_rt.converters.fusion import fuse_graph
    from sparse_rt.converters.torch import export_module
    from sparse_rt.zoo import MLP, seeded

    proto, _ = export_module(seeded(MLP((8, 16, 12, 4))), (torch.randn(2, 8),))
    graph = import_onnx(proto)
    fuse_graph(graph)
    heuristic = make_chooser(torch.device("cpu"), tune=False)
    seen = []

    def choose(layer):
        seen.append(layer.activation)
        return heuristic(layer)

    lower_linear_layers(graph, choose)
    assert seen == ["gelu", "gelu", None]
