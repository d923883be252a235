"""Choosing per conv between the direct convolution and Winograd (3x3) or the native GEMM
(1x1): which convs are candidates, the choice as timed, the bound op, and save/load; each model
checked against onnxruntime."""

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
import sparse_rt.__main__
from sparse_rt.converters import conv_algorithms
from sparse_rt.converters.conv_algorithms import choose_conv_algorithms
from sparse_rt.ir.graph import SPARSE_DOMAIN
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.winograd import WinogradConv3x3
from sparse_rt.ops.conv import ConstantWeightConv2d
from tests.helpers import assert_close

pytestmark = pytest.mark.skipif(not native_available(), reason="no C compiler for the native kernels")
RNG = np.random.default_rng(0)


def conv_model(convs, channels=16, size=12):
    """x [n, channels, size, size] through Conv nodes given as attribute dicts (each followed
    by a Relu when it says relu=True), channels kept; output y."""
    nodes, inits, previous = [], [], "x"
    for index, spec in enumerate(convs):
        spec = dict(spec)
        relu = spec.pop("relu", False)
        kernel = spec.pop("kernel", 3)
        group = spec.get("group", 1)
        w = (RNG.standard_normal((channels, channels // group, kernel, kernel)) * 0.2).astype(np.float32)
        b = RNG.standard_normal(channels).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{index}"), numpy_helper.from_array(b, f"b{index}")]
        out = f"c{index}"
        nodes.append(helper.make_node("Conv", [previous, f"w{index}", f"b{index}"], [out], **spec))
        if relu:
            nodes.append(helper.make_node("Relu", [out], [f"r{index}"]))
            out = f"r{index}"
        previous = out
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", channels, None, None])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def onnxruntime_output(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def force(monkeypatch, winograd_faster: bool):
    """Make every timed conv look faster (or slower) as Winograd."""
    monkeypatch.setattr(conv_algorithms, "_timings", lambda *args: (1.0, 0.5 if winograd_faster else 2.0))


SAME = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}


def test_faster_convs_run_as_winograd_and_match_onnxruntime(monkeypatch, tmp_path):
    model = conv_model([{**SAME, "relu": True}, SAME, {**SAME, "relu": True}])
    force(monkeypatch, True)
    graph = sparse_rt.convert(model)
    convs = [node for node in graph.nodes if node.op_type in ("Conv", "FusedConv")]
    assert len(convs) == 3
    assert all(node.domain == SPARSE_DOMAIN and node.attributes["winograd_from"] == 1 for node in convs)
    x = RNG.standard_normal((2, 16, 12, 12)).astype(np.float32)
    expected = onnxruntime_output(model, x)
    assert_close(sparse_rt.InferenceSession(graph).run(None, {"x": x})[0], expected, rtol=1e-4)
    path = tmp_path / "winograd.onnx"
    sparse_rt.save(graph, path)
    loaded = sparse_rt.load(path)
    assert [n.attributes.get("winograd_from") for n in loaded.nodes if n.op_type == "FusedConv"] == [1] * 3
    assert_close(sparse_rt.InferenceSession(loaded).run(None, {"x": x})[0], expected, rtol=1e-4)


def test_slower_convs_stay_direct(monkeypatch):
    model = conv_model([{**SAME, "relu": True}, SAME])
    force(monkeypatch, False)
    graph = sparse_rt.convert(model)
    assert [node.op_type for node in graph.nodes if "Conv" in node.op_type] == ["FusedConv", "FusedConv"]
    assert not any("winograd_from" in node.attributes for node in graph.nodes)
    x = RNG.standard_normal((2, 16, 12, 12)).astype(np.float32)
    assert_close(sparse_rt.InferenceSession(graph).run(None, {"x": x})[0], onnxruntime_output(model, x), rtol=1e-4)


def test_explain_reports_each_timed_conv(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(conv_algorithms, "_timings", lambda node, weight, x, evict, algorithm: (1e-3, 2e-3 if len(x) == 1 else 4e-4))
    graph = sparse_rt.convert(conv_model([{**SAME, "relu": True}, {"kernel_shape": [3, 3], "strides": [2, 2]}]))
    path = tmp_path / "convs.onnx"
    sparse_rt.save(graph, path)
    assert sparse_rt.__main__.main(["explain", str(path)]) == 0
    out = capsys.readouterr().out
    assert "convolutions (ms direct / winograd (3x3) or gemm (1x1), as timed at conversion):" in out
    assert re.search(r"r0 +winograd from batch 8 +batch 1: 1\.000 / 2\.000  batch 8: 1\.000 / 0\.400", out)
    assert "c1" not in out.split("as timed at conversion")[1]  # stride 2: not timed


def test_a_conv_faster_only_batched_runs_as_winograd_from_that_batch(monkeypatch):
    monkeypatch.setattr(conv_algorithms, "_timings", lambda node, weight, x, evict, algorithm: (1.0, 2.0 if len(x) == 1 else 0.5))
    graph = sparse_rt.convert(conv_model([{**SAME, "relu": True}]), shapes={"x": (1, 16, 12, 12)})
    (conv,) = [node for node in graph.nodes if node.op_type == "FusedConv"]
    assert conv.attributes["winograd_from"] == conv_algorithms.BATCH_FACTOR
    calls = []
    original = WinogradConv3x3.__call__
    monkeypatch.setattr(WinogradConv3x3, "__call__", lambda self, *args: calls.append(len(args[0])) or original(self, *args))
    session = sparse_rt.InferenceSession(graph)
    for batch in (1, 7, 8, 9):
        session.run(None, {"x": RNG.standard_normal((batch, 16, 12, 12)).astype(np.float32)})
    assert calls == [8, 9]


def test_only_3x3_stride_1_ungrouped_symmetric_convs_are_timed(monkeypatch):
    timed = []
    monkeypatch.setattr(conv_algorithms, "_timings",
                        lambda node, weight, x, evict, algorithm: timed.append(node.outputs[0]) or (1.0, 0.5))
    model = conv_model([
        SAME,
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},
        {"kernel_shape": [3, 3], "pads": [2, 2, 2, 2], "dilations": [2, 2]},
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 4},
        {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2], "kernel": 5},
        {"kernel_shape": [3, 3], "pads": [0, 0, 1, 1]},
        {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER"},
        {"kernel_shape": [1, 1], "kernel": 1},
        {"kernel_shape": [1, 1], "kernel": 1, "pads": [1, 1, 1, 1]},
        {"kernel_shape": [1, 1], "kernel": 1, "group": 4},
    ], size=24)
    graph = sparse_rt.convert(model, tune=False)
    choose_conv_algorithms(graph)
    assert timed == ["c0", "c0", "c7", "c7"]  # at batch 1 and BATCH_FACTOR
    x = RNG.standard_normal((1, 16, 24, 24)).astype(np.float32)
    assert_close(sparse_rt.InferenceSession(graph).run(None, {"x": x})[0], onnxruntime_output(model, x),
                 rtol=1e-4)


def test_timings_cover_every_candidate_and_the_choice_follows_them():
    """The real timings, warm and cold: whatever they choose runs as onnxruntime does."""
    model = conv_model([{**SAME, "relu": True}, SAME], channels=32, size=28)
    graph = sparse_rt.convert(model, tune=False)
    for cold in (False, True):
        timings = choose_conv_algorithms(graph, cold=cold)
        assert set(timings) == {node.name or node.outputs[0] for node in graph.nodes if "Conv" in node.op_type}
        assert all(set(by_batch) == {1, conv_algorithms.BATCH_FACTOR} for by_batch in timings.values())
        assert all(direct > 0 and winograd > 0 for by_batch in timings.values() for direct, winograd in by_batch.values())
    faster = {label: [b for b, (d, w) in by_batch.items() if w < conv_algorithms.MARGINS["winograd"] * d]
              for label, by_batch in timings.items()}
    assert {node.label(): node.attributes.get("winograd_from") for node in graph.nodes if "Conv" in node.op_type} == \
        {label: min(batches, default=None) for label, batches in faster.items()}
    x = RNG.standard_normal((1, 32, 28, 28)).astype(np.float32)
    assert_close(sparse_rt.InferenceSession(graph).run(None, {"x": x})[0], onnxruntime_output(model, x),
                 rtol=1e-4)


def test_untuned_conversion_keeps_direct_convs(monkeypatch):
    monkeypatch.setattr(conv_algorithms, "_timings", lambda *args: pytest.fail("timed without tuning"))
    graph = sparse_rt.convert(conv_model([SAME]), tune=False)
    assert not any("winograd_from" in node.attributes for node in graph.nodes)


def test_bound_winograd_conv_with_a_broadcast_residual():
    w = torch.randn(8, 8, 3, 3)
    x, z, b = torch.randn(2, 8, 7, 7), torch.randn(1, 8, 1, 1), torch.randn(8)
    direct = ConstantWeightConv2d(w, 1, 1, 1, 1, "relu")
    winograd = ConstantWeightConv2d(w, 1, 1, 1, 1, "relu", 2)
    winograd(x[:1], w, b)
    assert winograd.winograd is None  # made at the first call from batch 2 on
    for residual in (None, z, torch.randn(2, 8, 7, 7)):
        assert_close(winograd(x, w, b, residual), direct(x, w, b, residual), rtol=1e-4)
    assert winograd.winograd is not None
    assert ConstantWeightConv2d(w, 2, 1, 1, 1, None, 1).winograd_from is None  # stride 2: direct


def test_bad_winograd_batch_is_named():
    model = conv_model([SAME])
    graph = sparse_rt.convert(model, tune=False)
    node = next(node for node in graph.nodes if node.op_type == "Conv")
    node.op_type, node.domain = "FusedConv", SPARSE_DOMAIN
    node.attributes["winograd_from"] = 0
    with pytest.raises(ValueError, match=r"attribute 'winograd_from': expected a batch size \(an int >= 1\), got 0"):
        sparse_rt.InferenceSession(graph)


def pointwise_model():
    """x [n, 16, 9, 9] -> 1x1 conv, ReLU -> 1x1 conv + x, ReLU -> 1x1 conv, Clip(0, 6) -> y:
    the epilogues a 1x1 conv fuses."""
    def weight(name):
        return numpy_helper.from_array((RNG.standard_normal((16, 16, 1, 1)) * 0.3).astype(np.float32), name)

    inits = [weight("w0"), weight("w1"), weight("w2"), numpy_helper.from_array(np.float32(0), "lo"),
             numpy_helper.from_array(np.float32(6), "hi"),
             *(numpy_helper.from_array(RNG.standard_normal(16).astype(np.float32), f"b{i}") for i in range(3))]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"]), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"]), helper.make_node("Add", ["c1", "x"], ["s1"]),
             helper.make_node("Relu", ["s1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]), helper.make_node("Clip", ["c2", "lo", "hi"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, 9, 9])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_faster_1x1_convs_run_as_the_gemm_with_their_epilogues(monkeypatch, tmp_path):
    model = pointwise_model()
    graph = sparse_rt.convert(model, tune=False)
    force(monkeypatch, True)
    choose_conv_algorithms(graph)
    convs = [node for node in graph.nodes if node.op_type == "FusedConv"]
    assert [(node.attributes.get("activation"), len(node.inputs)) for node in convs] == \
        [("relu", 3), ("relu", 4), ("clip", 3)]  # the residual and the activations fused
    assert all(node.attributes["gemm_from"] == 1 and "winograd_from" not in node.attributes for node in convs)
    calls = []
    original = ConstantWeightConv2d._gemm
    monkeypatch.setattr(ConstantWeightConv2d, "_gemm", lambda self, *args: calls.append(1) or original(self, *args))
    x = RNG.standard_normal((2, 16, 9, 9)).astype(np.float32)
    expected = onnxruntime_output(model, x)
    assert_close(sparse_rt.InferenceSession(graph).run(None, {"x": x})[0], expected, rtol=1e-4)
    assert len(calls) == 3
    path = tmp_path / "gemm.onnx"
    sparse_rt.save(graph, path)
    loaded = sparse_rt.load(path)
    assert [n.attributes.get("gemm_from") for n in loaded.nodes if n.op_type == "FusedConv"] == [1] * 3
    assert_close(sparse_rt.InferenceSession(loaded).run(None, {"x": x})[0], expected, rtol=1e-4)


def test_bound_gemm_conv_matches_the_direct_one():
    w, b = torch.randn(40, 24, 1, 1), torch.randn(40)
    x = torch.randn(2, 24, 5, 7).contiguous(memory_format=torch.channels_last)
    for activation, bounds in ((None, None), ("relu", None), ("clip", (0.0, 0.5))):
        direct = ConstantWeightConv2d(w, 1, 0, 1, 1, activation, bounds=bounds)
        gemm = ConstantWeightConv2d(w, 1, 0, 1, 1, activation, bounds=bounds, gemm_from=2)
        for residual in (None, torch.randn(1, 40, 1, 1), torch.randn(2, 40, 5, 7), torch.randn(2, 40, 5, 7)[..., :7]):
            y = gemm(x, w, b, residual)
            assert y.is_contiguous(memory_format=torch.channels_last)
            assert_close(y, direct(x, w, b, residual), rtol=1e-4)
        assert gemm.gemm is not None
        assert gemm(x[:1], w, b).shape == (1, 40, 5, 7)
    assert ConstantWeightConv2d(w, 1, 1, 1, 1, None, gemm_from=1).gemm_from is None  # padded: direct
    assert ConstantWeightConv2d(w, 2, 0, 1, 1, None, gemm_from=1).gemm_from is None  # strided: direct


def test_bad_gemm_batch_is_named():
    graph = sparse_rt.convert(pointwise_model(), tune=False)
    node = next(node for node in graph.nodes if node.op_type == "FusedConv")
    node.attributes["gemm_from"] = "1"
    with pytest.raises(ValueError, match=r"attribute 'gemm_from': expected a batch size \(an int >= 1\), got '1'"):
        sparse_rt.InferenceSession(graph)
