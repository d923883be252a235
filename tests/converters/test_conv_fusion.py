"""Residual and ReLU fusions of conv networks (Conv, lowered 1x1 conv, residual Add), and the cases that must not fuse."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.converters.conv_fusion import fuse_relu
from sparse_rt.ir.graph import SPARSE_DOMAIN, Graph, Node, Value
from sparse_rt.ops.conv import ConstantWeightConv2d
from tests.helpers import assert_close

RNG = np.random.default_rng(0)


def weight(*shape, density=1.0):
    name = "w" + "x".join(map(str, shape))
    values = RNG.standard_normal(shape) * 0.2 * (RNG.random(shape) < density)
    return numpy_helper.from_array(values.astype(np.float32), name)


def model(nodes, inits, outputs=("y",), channels=8):
    """x [n, channels, 9, 9] -> outputs (float, shapes left to inference)."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", channels, 9, 9])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", None, None, None]) for name in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def bottleneck(density=0.1, channels=64):
    """A ResNet bottleneck: 1x1 conv + relu, 3x3 conv + relu, 1x1 conv, add x, relu; the 1x1
    convs' weights with `density` nonzeros (sparse enough for a sparse format at 0.1)."""
    mid = channels // 2
    w1, w3, w4 = (weight(mid, channels, 1, 1, density=density), weight(mid, mid, 3, 3),
                  weight(channels, mid, 1, 1, density=density))
    bias = numpy_helper.from_array(RNG.standard_normal(mid).astype(np.float32), "b3")
    nodes = [
        helper.make_node("Conv", ["x", w1.name], ["c1"], kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", w3.name, "b3"], ["c3"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("Conv", ["r3", w4.name], ["c4"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["c4", "x"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
    ]
    return model(nodes, [w1, w3, bias, w4], channels=channels)


def run_both(proto, batch=2):
    channels = proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x = RNG.standard_normal((batch, channels, 9, 9)).astype(np.float32)
    graph = sparse_rt.convert(proto, tune=False)
    ours = sparse_rt.InferenceSession(graph).run(None, {"x": x})
    ref = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    return graph, ours, ref


def ops(graph):
    return [n.op_type for n in graph.nodes if n.op_type != "Transpose"]


def test_every_relu_of_a_bottleneck_is_fused_and_the_output_matches_onnxruntime():
    graph, (y,), (expected,) = run_both(bottleneck())
    assert ops(graph) == ["SparseLinear", "FusedConv", "SparseLinear", "AddRelu"]
    assert [n.attributes.get("activation") for n in graph.nodes if n.op_type in ("SparseLinear", "FusedConv")] \
        == ["relu", "relu", None]
    assert (expected == 0).any()
    assert_close(y, expected)


def test_a_dense_bottleneck_becomes_three_convs_the_last_adding_the_residual():
    graph, (y,), (expected,) = run_both(bottleneck(density=1.0))
    assert ops(graph) == ["FusedConv", "FusedConv", "FusedConv"]
    last = graph.nodes[-1]
    assert last.inputs[2:] == ["", "x"] and last.attributes["activation"] == "relu" and last.outputs == ["y"]
    assert not any(n.op_type == "Transpose" for n in graph.nodes)
    assert_close(y, expected)


def residual_model(residual: str, then_relu: bool = True):
    """x [n, 8, 9, 9] -> Conv 3x3 -> Add(conv, z) (-> Relu) -> y, z by `residual`:
    "input" x itself, "later" Neg(x) computed between the Conv and the Add, "broadcast" a
    [8, 1, 1] constant, "itself" the conv's own output."""
    w = weight(8, 8, 3, 3)
    inits = [w]
    nodes = [helper.make_node("Conv", ["x", w.name], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    z = {"input": "x", "later": "neg", "broadcast": "shift", "itself": "c"}[residual]
    if residual == "later":
        nodes.append(helper.make_node("Neg", ["x"], ["neg"]))
    if residual == "broadcast":
        inits.append(numpy_helper.from_array(RNG.standard_normal((8, 1, 1)).astype(np.float32), "shift"))
    nodes.append(helper.make_node("Add", [z, "c"] if residual == "later" else ["c", z], ["s" if then_relu else "y"]))
    if then_relu:
        nodes.append(helper.make_node("Relu", ["s"], ["y"]))
    return model(nodes, inits)


@pytest.mark.parametrize("then_relu", [True, False], ids=["relu", "no relu"])
@pytest.mark.parametrize("residual", ["input", "later", "broadcast"])
def test_conv_add_fuses_with_or_without_relu_and_matches_onnxruntime(residual, then_relu):
    graph, (y,), (expected,) = run_both(residual_model(residual, then_relu))
    assert ops(graph) == ["Neg", "FusedConv"] if residual == "later" else ["FusedConv"]
    fused = graph.nodes[-1]
    assert fused.inputs[3] == {"input": "x", "later": "neg", "broadcast": "shift"}[residual]
    assert fused.attributes.get("activation") == ("relu" if then_relu else None)
    assert_close(y, expected)


def test_of_two_convs_meeting_in_an_add_the_first_takes_the_other_as_its_residual():
    """A downsampling block's end: its main path and its shortcut are both convs."""
    w1, w2 = weight(8, 8, 3, 3), weight(8, 8, 1, 1)
    nodes = [helper.make_node("Conv", ["x", w1.name], ["main"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", w2.name], ["shortcut"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["main", "shortcut"], ["s"]),
             helper.make_node("Relu", ["s"], ["y"])]
    graph, (y,), (expected,) = run_both(model(nodes, [w1, w2]))
    assert ops(graph) == ["Conv", "FusedConv"]
    assert graph.nodes[1].inputs[1] == w1.name and graph.nodes[1].inputs[3] == "shortcut"
    assert_close(y, expected)


def test_a_conv_added_to_itself_stays_apart():
    graph, (y,), (expected,) = run_both(residual_model("itself"))
    assert ops(graph) == ["Conv", "AddRelu"]
    assert_close(y, expected)


def test_a_conv_output_reaches_the_caller_in_c_order():
    """Convs run channels-last inside; what the session hands back is C-contiguous NCHW."""
    w3 = weight(8, 8, 3, 3)
    nodes = [helper.make_node("Conv", ["x", w3.name], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph, (y,), (expected,) = run_both(model(nodes, [w3]))
    assert ops(graph) == ["FusedConv"]
    assert y.flags.c_contiguous
    assert_close(y, expected)


@pytest.mark.parametrize("density", [0.1, 1.0], ids=["sparse 1x1 convs", "dense, residual in the conv"])
def test_a_fused_graph_saves_and_loads(tmp_path, density):
    graph, _, _ = run_both(bottleneck(density))
    sparse_rt.save(graph, tmp_path / "m.onnx")
    x = RNG.standard_normal((1, 64, 9, 9)).astype(np.float32)
    (y,) = sparse_rt.InferenceSession(sparse_rt.load(tmp_path / "m.onnx")).run(None, {"x": x})
    assert_close(y, sparse_rt.InferenceSession(graph).run(None, {"x": x})[0])


@pytest.mark.parametrize("near_miss", ["graph output", "second reader", "leaky relu"])
def test_conv_relu_near_misses_stay_apart(near_miss):
    w = weight(8, 8, 3, 3)
    activation = "LeakyRelu" if near_miss == "leaky relu" else "Relu"
    nodes = [helper.make_node("Conv", ["x", w.name], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node(activation, ["c"], ["y"])]
    outputs = ["y"]
    if near_miss == "graph output":
        outputs.append("c")
    elif near_miss == "second reader":
        nodes.append(helper.make_node("Neg", ["c"], ["z"]))
        outputs.append("z")
    graph, ours, ref = run_both(model(nodes, [w], outputs))
    assert ops(graph)[:2] == ["Conv", activation]
    for a, b in zip(ours, ref):
        assert_close(a, b)


def linear_graph(second_reader: str | None = None, activation: str = "Relu") -> Graph:
    """IR: x -> SparseLinear -> h -> Transpose -> t -> activation -> y (and Neg(second_reader) -> z)."""
    nodes = [Node("SparseLinear", ["x", ""], ["h"], {"format": "dense", "arrays": []}, "linear", SPARSE_DOMAIN),
             Node("Transpose", ["h"], ["t"], {"perm": [0, 3, 1, 2]}, "to_first"),
             Node(activation, ["t"], ["y"], {}, "act")]
    outputs = [Value("y", "float32", None)]
    if second_reader:
        nodes.append(Node("Neg", [second_reader], ["z"], {}, "neg"))
        outputs.append(Value("z", "float32", None))
    return Graph([Value("x", "float32", (1, 4, 4, 8))], outputs, nodes)


def test_linear_relu_through_the_transpose_fuses():
    graph = linear_graph()
    assert fuse_relu(graph) == 1
    assert [(n.op_type, n.outputs) for n in graph.nodes] == [("SparseLinear", ["h"]), ("Transpose", ["y"])]
    assert graph.nodes[0].attributes["activation"] == "relu"


@pytest.mark.parametrize("second_reader, activation", [("h", "Relu"), ("t", "Relu"), (None, "Sigmoid")],
                         ids=["linear read twice", "transpose read twice", "sigmoid"])
def test_linear_relu_near_misses_stay_apart(second_reader, activation):
    graph = linear_graph(second_reader, activation)
    assert fuse_relu(graph) == 0
    assert "activation" not in graph.nodes[0].attributes and graph.nodes[2].op_type == activation


@pytest.mark.parametrize("near_miss", ["graph output", "second reader", "add of three"])
def test_add_relu_near_misses_stay_apart(near_miss):
    nodes = [helper.make_node("Neg", ["x"], ["c"])]
    if near_miss == "add of three":
        nodes.append(helper.make_node("Sum", ["c", "x", "x"], ["s"]))
    else:
        nodes.append(helper.make_node("Add", ["c", "x"], ["s"]))
    nodes.append(helper.make_node("Relu", ["s"], ["y"]))
    outputs = ["y"]
    if near_miss == "graph output":
        outputs.append("s")
    elif near_miss == "second reader":
        nodes.append(helper.make_node("Neg", ["s"], ["z"]))
        outputs.append("z")
    graph, ours, ref = run_both(model(nodes, [], outputs))
    assert "AddRelu" not in ops(graph) and "Relu" in ops(graph)
    for a, b in zip(ours, ref):
        assert_close(a, b)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("channels, group, stride, dilation, kernel", [
    (3, 1, 2, 1, 7), (8, 1, 1, 1, 3), (8, 4, 1, 2, 3), (16, 16, 2, 1, 3), (8, 1, 1, 1, 1)])
def test_constant_weight_conv_matches_torch_across_layouts_and_shapes(activation, channels, group, stride, dilation,
                                                                       kernel):
    w = torch.randn(12 if group == 1 else channels, channels // group, kernel, kernel)
    b = torch.randn(w.shape[0])
    padding = dilation * (kernel // 2)
    conv = ConstantWeightConv2d(w, stride, padding, dilation, group, activation)
    # the weight is prepared at the first call's shape; later shapes and layouts reuse it
    for batch, size, channels_last in ((1, 15, False), (3, 15, True), (2, 20, False), (1, 9, True)):
        x = torch.randn(batch, channels, size, size)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        expected = F.conv2d(x.double(), w.double(), b.double(), stride, padding, dilation, group)
        expected = F.relu(expected) if activation else expected
        y = conv(x, w, b)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("residual_shape", ["output", "per channel"])
def test_constant_weight_conv_adds_a_residual_across_layouts(activation, residual_shape):
    w, b = torch.randn(12, 8, 3, 3), torch.randn(12)
    conv = ConstantWeightConv2d(w, 2, 1, 1, 1, activation)
    for batch, size, channels_last in ((1, 15, False), (3, 15, True), (2, 20, False)):
        x = torch.randn(batch, 8, size, size)
        out = (batch, 12, (size - 1) // 2 + 1, (size - 1) // 2 + 1)
        z = torch.randn(out if residual_shape == "output" else (12, 1, 1))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            z = z.contiguous(memory_format=torch.channels_last) if z.dim() == 4 else z
        z_before = z.clone()
        expected = F.conv2d(x.double(), w.double(), b.double(), 2, 1) + z.double()
        expected = F.relu(expected) if activation else expected
        y = conv(x, w, b, z)
        assert tuple(y.shape) == out and y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y.double(), expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(z, z_before)


def relu6_model(clip_inputs, opset=17, pads=(1, 1, 1, 1), strides=(1, 1), group=1):
    """x [n, 8, 9, 9] -> Conv (3x3, given pads and strides) -> Clip -> y; clip_inputs: the Clip's
    extra inputs (names of the initializers lo, hi) or, before opset 11, attributes."""
    w = numpy_helper.from_array((RNG.standard_normal((8, 8 // group, 3, 3)) * 2).astype(np.float32), "w_relu6")
    bounds = [numpy_helper.from_array(np.array(v, np.float32), name) for name, v in (("lo", 0.0), ("hi", 6.0))]
    clip = (helper.make_node("Clip", ["c", *clip_inputs], ["y"]) if opset >= 11
            else helper.make_node("Clip", ["c"], ["y"], min=0.0, max=6.0))
    nodes = [helper.make_node("Conv", ["x", w.name], ["c"], kernel_shape=[3, 3], pads=list(pads), strides=list(strides),
                              group=group), clip]
    proto = model(nodes, [w, *bounds])
    proto.opset_import[0].version = opset
    return proto


@pytest.mark.parametrize("opset", [7, 17])
def test_conv_clip_fuses_into_the_epilogue_and_matches_onnxruntime(opset):
    graph, (y,), (expected,) = run_both(relu6_model(["lo", "hi"], opset))
    (conv,) = graph.nodes
    assert conv.op_type == "FusedConv" and conv.attributes["activation"] == "clip"
    assert (conv.attributes["clip_min"], conv.attributes["clip_max"]) == (0.0, 6.0)
    assert y.min() == 0.0 and y.max() == 6.0
    assert_close(y, expected)


@pytest.mark.parametrize("clip_inputs", [["lo"], ["", "hi"], ["x_lo", "hi"]], ids=["min only", "max only", "computed min"])
def test_a_clip_without_two_constant_bounds_stays_apart(clip_inputs):
    proto = relu6_model(clip_inputs)
    if "x_lo" in clip_inputs:  # a bound computed at run time
        proto.graph.node.insert(0, helper.make_node("ReduceMin", ["x"], ["x_lo"], keepdims=0))
    graph, (y,), (expected,) = run_both(proto)
    assert [n.op_type for n in graph.nodes][-2:] == ["Conv", "Clip"]
    assert_close(y, expected)


@pytest.mark.parametrize("group", [1, 8])
def test_uneven_pads_run_as_a_constant_weight_conv(group):
    """TensorFlow-style SAME padding at stride 2 (MobileNet's export): the missing row and column
    are padded onto x, the conv runs through oneDNN and leaves channels-last output."""
    graph, (y,), (expected,) = run_both(relu6_model(["lo", "hi"], pads=(0, 0, 1, 1), strides=(2, 2), group=group))
    assert y.shape == (2, 8, 4, 4)
    assert_close(y, expected)
    conv = ConstantWeightConv2d(torch.randn(8, 8 // group, 3, 3), 2, 0, 1, group, "clip", None, (0.0, 6.0),
                                [0, 1, 0, 1])
    x = torch.randn(1, 8, 10, 10)
    out = conv(x, None)
    assert out.is_contiguous(memory_format=torch.channels_last)
    reference = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, None, 2, 0, 1, group).clamp(0, 6)
    assert_close(out, reference)
