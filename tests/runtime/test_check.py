"""`python -m sparse_rt check` and check_against_onnxruntime: name the first diverging node."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from sparse_rt.__main__ import main
from sparse_rt.ops import registry
from sparse_rt.runtime.check import check_against_onnxruntime, random_feeds


def _model(path) -> str:
    """x [batch, 8] -> MatMul [8, 16] -> Sigmoid 'squash' -> MatMul [16, 4] -> Softmax -> y."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"),
        helper.make_node("Sigmoid", ["h"], ["s"], name="squash"),
        helper.make_node("MatMul", ["s", "w2"], ["z"], name="down"),
        helper.make_node("Softmax", ["z"], ["y"], name="probabilities", axis=-1),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return str(path)


@pytest.fixture
def broken_sigmoid():
    """Sigmoid replaced by a wrong kernel for the test's duration (the registry restored after)."""
    registry._load_builtin_ops()
    saved = list(registry._REGISTRY[("", "Sigmoid")])
    registry.register_op("Sigmoid", since_version=13)(lambda node, ctx: lambda x: torch.sigmoid(x) * 1.01)
    try:
        yield
    finally:
        registry._REGISTRY[("", "Sigmoid")] = saved


def test_matching_model_reports_no_divergence(tmp_path, capsys):
    path = _model(tmp_path / "mlp.onnx")
    report = check_against_onnxruntime(path, shapes={"x": (3, 8)})
    assert report.ok and report.first is None
    assert {e.value for e in report.compared} >= {"s", "y"}
    assert all(e.max_rel < 1e-5 for e in report.compared)
    assert main(["check", path, "--shapes", "x=3x8"]) == 0
    assert "no value diverges" in capsys.readouterr().out


def test_broken_op_is_named_first(tmp_path, capsys, broken_sigmoid):
    path = _model(tmp_path / "mlp.onnx")
    report = check_against_onnxruntime(path)
    assert not report.ok
    first = report.first
    assert (first.value, first.node, first.op_type) == ("s", "squash", "Sigmoid")
    assert 1e-3 < first.max_rel < 2e-2
    assert main(["check", path]) == 1
    out = capsys.readouterr().out
    assert "first divergence: value 's' of node 'squash' (Sigmoid)" in out


def test_random_feeds_rejects_unknown_input(tmp_path):
    model = onnx.load(_model(tmp_path / "mlp.onnx"))
    assert random_feeds(model, {"x": (5, 8)})["x"].shape == (5, 8)
    with pytest.raises(ValueError, match=r"unknown input\(s\) \['input'\]; the model's inputs are \['x'\]"):
        random_feeds(model, {"input": (1, 8)})


def test_cli_rejects_malformed_shapes(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["check", _model(tmp_path / "mlp.onnx"), "--shapes", "x=3by8"])
    assert "expected NAME=DxDx... such as input_ids=1x128, got 'x=3by8'" in capsys.readouterr().err
