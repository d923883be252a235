"""KxK convolutions lowered to Im2Col + SparseLinear, and those that stay convolutions."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.converters import lowering
from sparse_rt.converters.lowering import (
    IM2COL_MIN_CHANNELS,
    Choice,
    LinearLayer,
    _Match,
    _lowering_pays,
    linear_inputs,
    lower_linear_layers,
)
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.formats import get_format
from sparse_rt.kernels.registry import get_kernel
from sparse_rt.ops.im2col import im2col
from sparse_rt.scheduler.candidates import Candidate
from sparse_rt.scheduler.heuristic import heuristic_choice
from sparse_rt.scheduler.workload import rows_per_input
from tests.helpers import assert_close

RNG = np.random.default_rng(0)


def conv_model(channels=16, out=24, kernel=(3, 3), density=0.1, size=(11, 13), **attributes):
    """x [n, channels, *size] -> Conv(x, W [out, channels / group, *kernel], b) -> y."""
    group = attributes.get("group", 1)
    shape = (out, channels // group, *kernel)
    w = (RNG.standard_normal(shape) * (RNG.random(shape) < density)).astype(np.float32)
    b = RNG.standard_normal(out).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=list(kernel), **attributes)
    spatial = ["h", "w"][:len(size)]
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, *size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", out, *[None] * len(spatial)])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def run_both(proto, batch=2, **convert_options):
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = RNG.standard_normal((batch, *shape)).astype(np.float32)
    graph = sparse_rt.convert(proto, **convert_options)
    (y,) = sparse_rt.InferenceSession(graph).run(None, {"x": x})
    reference = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = reference.run(None, {"x": x})
    return graph, y, expected


@pytest.mark.parametrize("attributes", [
    dict(pads=[1, 1, 1, 1]),
    dict(pads=[1, 1, 1, 1], strides=[2, 2]),
    dict(pads=[0, 1, 2, 0], strides=[2, 1], dilations=[1, 2]),
    dict(),
], ids=["3x3", "stride 2", "asymmetric pads, dilated", "no pads"])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_sparse_kxk_conv_runs_as_im2col_and_sparse_linear_and_matches_onnxruntime(attributes, batch):
    graph, y, expected = run_both(conv_model(**attributes), batch, tune=False)
    assert [n.op_type for n in graph.nodes] == ["Transpose", "Im2Col", "SparseLinear", "Transpose"]
    assert graph.nodes[2].attributes["format"] != "dense"
    assert_close(y, expected)


@pytest.mark.parametrize("case", ["few channels", "grouped", "dense weight", "1-D kernel 3", "SAME_UPPER"])
def test_convs_that_stay_convolutions(case):
    options = {
        "few channels": dict(channels=IM2COL_MIN_CHANNELS - 1, pads=[1, 1, 1, 1]),
        "grouped": dict(group=2, pads=[1, 1, 1, 1]),
        "dense weight": dict(density=1.0, pads=[1, 1, 1, 1]),
        "1-D kernel 3": dict(kernel=(3,), size=(11,), pads=[1, 1]),
        "SAME_UPPER": dict(auto_pad="SAME_UPPER"),
    }[case]
    graph, y, expected = run_both(conv_model(**options), tune=False)
    assert [n.op_type for n in graph.nodes] == ["Conv"]
    assert_close(y, expected)


def test_a_kxk_conv_is_tuned_at_its_output_positions():
    graph = import_onnx(conv_model(size=(16, 16), pads=[1, 1, 1, 1], strides=[2, 2]))
    rows = rows_per_input(graph, linear_inputs(graph))
    seen = []

    def choose(layer):
        seen.append(layer)
        return heuristic_choice(layer, torch.device("cpu"), None, batch=layer.rows)

    lower_linear_layers(graph, choose, rows=rows)
    (layer,) = seen
    assert layer.rows == 8 * 8  # one 16x16 image, stride 2: 64 output positions, not 256 input ones
    assert layer.weight.shape == (24, 3 * 3 * 16)


def test_lowering_pays_only_when_the_sparse_kernel_and_the_copy_beat_the_convolution(monkeypatch):
    graph = import_onnx(conv_model(pads=[1, 1, 1, 1]))
    node = graph.nodes[0]
    weight = graph.constants["w"].transpose(0, 2, 3, 1).reshape(24, -1)
    match = _Match(node, LinearLayer("conv", weight, None, rows=143), "x", ("y",), (24,), ())
    csr = get_format("csr").from_dense(torch.from_numpy(weight))
    label = Candidate(csr, "csr_cpu", {}).label
    monkeypatch.setattr(lowering, "_conv_seconds", lambda x, w, geometry, pointwise: 1.0)
    monkeypatch.setattr(lowering, "_im2col_seconds", lambda x, geometry: 0.1)

    def timed(sparse_seconds):  # the kernel timed afresh, beside the copy and the convolution
        monkeypatch.setattr(lowering, "_kernel_seconds", lambda layer, choice, rows, device: sparse_seconds)
        return Choice(csr, "csr_cpu", {}, {label: {143: 0.01}}, tuned_rows=(143,))

    cpu = torch.device("cpu")
    assert _lowering_pays(graph, match, timed(0.5), cpu)
    assert not _lowering_pays(graph, match, timed(0.7), cpu)  # 0.8 with the copy: not PATCH_MARGIN below 1.0
    assert _lowering_pays(graph, match, Choice(csr, "csr_cpu", {}), cpu)  # untimed (the heuristic)
    dense = get_format("dense").from_dense(torch.from_numpy(weight))
    assert not _lowering_pays(graph, match, Choice(dense, "dense_cpu_native", {}), cpu)


def test_a_pointwise_conv_is_lowered_only_when_its_kernel_alone_beats_the_convolution(monkeypatch):
    graph = import_onnx(conv_model(kernel=(1, 1), channels=3))  # few channels: no Im2Col, so no floor
    node = graph.nodes[0]
    weight = graph.constants["w"].reshape(24, 3)
    match = _Match(node, LinearLayer("conv", weight, None, rows=143), "x", ("y",), (24,), ())
    bitmask = get_format("bitmask").from_dense(torch.from_numpy(weight))
    label = Candidate(bitmask, "bitmask_cpu", {}).label
    monkeypatch.setattr(lowering, "_conv_seconds", lambda x, w, geometry, pointwise: 1.0)
    monkeypatch.setattr(lowering, "_im2col_seconds", lambda x, geometry: pytest.fail("a 1x1 conv copies nothing"))

    def timed(sparse_seconds):
        monkeypatch.setattr(lowering, "_kernel_seconds", lambda layer, choice, rows, device: sparse_seconds)
        return Choice(bitmask, "bitmask_cpu", {}, {label: {143: 0.01}}, tuned_rows=(143,))

    cpu = torch.device("cpu")
    assert _lowering_pays(graph, match, timed(0.7), cpu)
    assert not _lowering_pays(graph, match, timed(0.8), cpu)  # a dense-equivalent format by a hair: the Conv stays


def test_the_convolution_is_timed_on_the_layer_s_output_positions():
    weight = np.ones((8, 16, 3, 3), np.float32)
    attributes = {"strides": [2, 1], "dilations": [1, 2]}
    x, geometry = lowering._conv_input(weight.shape, attributes, 60, torch.device("cpu"))
    assert geometry == {"kernel": (3, 3), "strides": (2, 1), "dilations": (1, 2)}
    rows = im2col(x, (3, 3), (2, 1), (0, 0, 0, 0), (1, 2)).shape
    assert rows[1] * rows[2] >= 60 and rows[3] == 9 * 16
    assert lowering._conv_seconds(x, weight, geometry, pointwise=False) > 0 and lowering._im2col_seconds(x, geometry) > 0
    matrix = np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(8, -1))
    csr = get_format("csr").from_dense(torch.from_numpy(matrix))
    choice = Choice(csr, "csr_cpu_rowwise", get_kernel("csr_cpu_rowwise").configs(csr, torch.device("cpu"))[0])
    assert lowering._kernel_seconds(LinearLayer("conv", matrix, None), choice, 60, torch.device("cpu")) > 0


def test_int8_quantization_lowers_a_sparse_kxk_conv_to_an_int8_format():
    proto = conv_model(channels=32, out=32, size=(12, 12), pads=[1, 1, 1, 1])
    graph, y, expected = run_both(proto, 1, tune=False, quantize="int8")
    assert [n.op_type for n in graph.nodes] == ["Transpose", "Im2Col", "SparseLinear", "Transpose"]
    assert graph.nodes[2].attributes["format"].endswith("int8")
    assert np.abs(y - expected).max() <= 0.03 * np.abs(expected).max()
