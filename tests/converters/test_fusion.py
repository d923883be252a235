"""Fusion of exporter op chains (Erf GELU) into one op, and the cases that must not fuse."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.converters.fusion import fuse_graph
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.converters.torch import export_module
from sparse_rt.zoo import MLP, seeded


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_exported_erf_gelu_becomes_one_op(exporter):
    proto, _ = export_module(seeded(MLP((8, 16, 4))), (torch.randn(2, 8),), exporter=exporter)
    graph = import_onnx(proto)
    assert fuse_graph(graph) == 1
    assert [n.op_type for n in graph.nodes] == ["Gemm", "Gelu", "Gemm"]


def gelu_chain(sqrt2=1.4142135, half=0.5, expose_erf=False):
    nodes = [
        helper.make_node("Div", ["x", "c_sqrt2"], ["d"]),
        helper.make_node("Erf", ["d"], ["e"]),
        helper.make_node("Add", ["e", "c_one"], ["a"]),
        helper.make_node("Mul", ["x", "a"], ["m"]),
        helper.make_node("Mul", ["m", "c_half"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])]
    if expose_erf:
        outputs.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, [3]))
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
             [("c_sqrt2", sqrt2), ("c_one", 1.0), ("c_half", half)]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_fused_gelu_computes_gelu():
    graph = sparse_rt.convert(gelu_chain())
    assert [n.op_type for n in graph.nodes] == ["Gelu"]
    x = np.array([-2.0, 0.3, 1.7], np.float32)
    (y,) = sparse_rt.InferenceSession(graph).run(None, {"x": x})
    np.testing.assert_allclose(y, torch.nn.functional.gelu(torch.from_numpy(x)).numpy(), rtol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(sqrt2=2.0), dict(half=0.25), dict(expose_erf=True)],
                         ids=["other-divisor", "other-scale", "intermediate-is-output"])
def test_chains_that_are_not_gelu_stay(kwargs):
    graph = import_onnx(gelu_chain(**kwargs))
    assert fuse_graph(graph) == 0
    assert "Erf" in [n.op_type for n in graph.nodes]
