"""Fusion of exporter op chains (Erf GELU, attention) into one op, and the cases that must not fuse."""

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
    # the native GELU's erf is within 1.5e-7 of the exact one
    np.testing.assert_allclose(y, torch.nn.functional.gelu(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=2e-7)


@pytest.mark.parametrize("kwargs", [dict(sqrt2=2.0), dict(half=0.25), dict(expose_erf=True)],
                         ids=["other-divisor", "other-scale", "intermediate-is-output"])
def test_chains_that_are_not_gelu_stay(kwargs):
    graph = import_onnx(gelu_chain(**kwargs))
    assert fuse_graph(graph) == 0
    assert "Erf" in [n.op_type for n in graph.nodes]


def attention_chain(scale_op="Div", mask_shape=("batch", 1, 1, "keys"), softmax_axis=-1):
    """q [batch, 2, L, 4], kT [batch, 2, 4, keys], v [batch, 2, keys, 3]: MatMul, scale, mask, Softmax, MatMul."""
    nodes = [helper.make_node("MatMul", ["q", "kt"], ["s"])]
    scores = "s"
    if scale_op:
        nodes.append(helper.make_node(scale_op, ["s", "c"], ["scaled"]))
        scores = "scaled"
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", 2, "queries", 4]),
              helper.make_tensor_value_info("kt", TensorProto.FLOAT, ["batch", 2, 4, "keys"]),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, ["batch", 2, "keys", 3])]
    if mask_shape is not None:
        nodes.append(helper.make_node("Add", [scores, "mask"], ["masked"]))
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, list(mask_shape)))
        scores = "masked"
    output_shape = ["batch", 2, "queries", 3]
    if mask_shape is not None and len(mask_shape) > 4:
        output_shape = [1, "batch", 2, "queries", 3]
    nodes += [helper.make_node("Softmax", [scores], ["p"], axis=softmax_axis),
              helper.make_node("MatMul", ["p", "v"], ["y"])]
    graph = helper.make_graph(nodes, "attention", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
                              [numpy_helper.from_array(np.array(2.0, np.float32), "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("scale_op", ["Div", "Mul", None])
@pytest.mark.parametrize("mask_shape", [("batch", 1, 1, "keys"), ("batch", 2, "queries", "keys"), None],
                         ids=["padding-mask", "full-mask", "no-mask"])
def test_attention_chain_becomes_one_op_and_matches_onnxruntime(scale_op, mask_shape):
    import onnxruntime as ort

    model = attention_chain(scale_op, mask_shape)
    graph = sparse_rt.convert(model)
    assert [n.op_type for n in graph.nodes] == ["ScaledDotProductAttention"]
    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((3, 2, 5, 4)), "kt": rng.standard_normal((3, 2, 4, 7)),
             "v": rng.standard_normal((3, 2, 7, 3))}
    if mask_shape is not None:
        feeds["mask"] = np.where(rng.random((3, 2, 5, 7)) < 0.3, -1e4, 0.0)
        if mask_shape[1] == 1:
            feeds["mask"] = feeds["mask"][:, :1, :1, :]
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    (actual,) = sparse_rt.InferenceSession(graph).run(None, feeds)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(mask_shape=(4, 2, 1, "keys")), dict(mask_shape=(1, 1, 1, 1, "keys")),
                                    dict(softmax_axis=2)], ids=["mask-may-widen", "mask-of-higher-rank", "other-axis"])
def test_chains_that_are_not_attention_stay(kwargs):
    graph = import_onnx(attention_chain(**kwargs))
    assert fuse_graph(graph) == 0
    assert "Softmax" in [n.op_type for n in graph.nodes]


def residual_norm_model(scale_shape=(6,), with_bias=True, stats_output=False, sum_read_again=False):
    """y = LayerNormalization(a + b) over the last axis of [batch, 6] (sum_read_again: also z = (a + b) * 2,
    the residual stream of a pre-norm block)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(scale_shape).astype(np.float32), "scale")]
    ln_inputs = ["s", "scale"]
    if with_bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "bias"))
        ln_inputs.append("bias")
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])]
    ln_outputs = ["y"]
    if stats_output:
        ln_outputs.append("mean")
        outputs.append(helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", 1]))
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("LayerNormalization", ln_inputs, ln_outputs, axis=-1, epsilon=1e-5)]
    if sum_read_again:
        inits.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
        nodes.append(helper.make_node("Mul", ["s", "two"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 6]))
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 6]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, ["b_rows", 6])]  # 1 or batch
    graph = helper.make_graph(nodes, "residual_norm", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("with_bias", [True, False])
def test_residual_add_and_layer_norm_become_one_op_and_match_onnxruntime(with_bias):
    import onnxruntime as ort

    model = residual_norm_model(with_bias=with_bias)
    graph = sparse_rt.convert(model)
    assert [n.op_type for n in graph.nodes] == ["AddLayerNormalization"]
    rng = np.random.default_rng(1)
    feeds = {n: (rng.standard_normal((5, 6)) * 3 + 1).astype(np.float32) for n in ("a", "b")}
    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    (actual,) = sparse_rt.InferenceSession(graph).run(None, feeds)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    # broadcasting operands take torch's path
    feeds["b"] = feeds["b"][:1]
    (broadcast,) = sparse_rt.InferenceSession(graph).run(None, feeds)
    np.testing.assert_allclose(broadcast, ort.InferenceSession(model.SerializeToString(), providers=[
        "CPUExecutionProvider"]).run(None, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(stats_output=True), dict(scale_shape=(1, 6))],
                         ids=["statistics-used", "scale-not-1d"])
def test_layer_norms_that_cannot_fuse_stay(kwargs):
    graph = import_onnx(residual_norm_model(**kwargs))
    assert fuse_graph(graph) == 0
    assert [n.op_type for n in graph.nodes] == ["Add", "LayerNormalization"]


def test_residual_sum_read_again_is_a_second_output():
    import onnxruntime as ort

    model = residual_norm_model(sum_read_again=True)
    graph = sparse_rt.convert(model)
    assert [n.op_type for n in graph.nodes] == ["AddLayerNormalization", "Mul"]
    assert len(graph.nodes[0].outputs) == 2
    rng = np.random.default_rng(2)
    feeds = {n: rng.standard_normal((5, 6)).astype(np.float32) for n in ("a", "b")}
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    for actual, reference in zip(sparse_rt.InferenceSession(graph).run(None, feeds), expected):
        np.testing.assert_allclose(actual, reference, rtol=1e-5, atol=1e-5)


def tanh_gelu_chain(cubic=0.044715, half_first=True, expose_tanh=False):
    """GPT-2's gelu_new as exported: 0.5 x (1 + tanh(sqrt(2/pi) (x + cubic x^3)))."""
    nodes = [
        helper.make_node("Pow", ["x", "c_three"], ["p"]),
        helper.make_node("Mul", ["p", "c_cubic"], ["pc"]),
        helper.make_node("Add", ["x", "pc"], ["inner"]),
        helper.make_node("Mul", ["inner", "c_root"], ["scaled"]),
        helper.make_node("Tanh", ["scaled"], ["t"]),
        helper.make_node("Add", ["t", "c_one"], ["onep"]),
    ]
    if half_first:
        nodes += [helper.make_node("Mul", ["x", "c_half"], ["hx"]), helper.make_node("Mul", ["hx", "onep"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["x", "onep"], ["xo"]), helper.make_node("Mul", ["xo", "c_half"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]
    if expose_tanh:
        outputs.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, [4]))
    constants = [("c_three", 3.0), ("c_cubic", cubic), ("c_root", np.sqrt(2 / np.pi)), ("c_one", 1.0), ("c_half", 0.5)]
    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in constants]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("half_first", [True, False])
def test_tanh_gelu_chain_becomes_one_op(half_first):
    graph = sparse_rt.convert(tanh_gelu_chain(half_first=half_first))
    assert [(n.op_type, n.attributes.get("approximate")) for n in graph.nodes] == [("Gelu", "tanh")]
    x = np.array([-3.0, -0.4, 0.2, 2.5], np.float32)
    (y,) = sparse_rt.InferenceSession(graph).run(None, {"x": x})
    expected = torch.nn.functional.gelu(torch.from_numpy(x), approximate="tanh").numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs", [dict(cubic=0.05), dict(expose_tanh=True)], ids=["other-constant", "tanh-is-output"])
def test_chains_that_are_not_tanh_gelu_stay(kwargs):
    graph = import_onnx(tanh_gelu_chain(**kwargs))
    assert fuse_graph(graph) == 0
    assert "Tanh" in [n.op_type for n in graph.nodes]


@pytest.mark.parametrize("size", [8, 9])
def test_strided_pointwise_conv_becomes_a_subsample_and_a_linear_layer(size):
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    # sparse enough for a sparse format (a dense weight stays a Conv, after the subsample)
    weight = (rng.standard_normal((48, 64, 1, 1)) * (rng.random((48, 64, 1, 1)) < 0.1)).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1], strides=[2, 2])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 48, "h", "w"])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    converted = sparse_rt.convert(model, tune=False)
    ops = [n.op_type for n in converted.nodes]
    assert ops[0] == "Slice" and "SparseLinear" in ops and "Conv" not in ops
    feeds = {"x": rng.standard_normal((2, 64, size, size)).astype(np.float32)}
    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    (actual,) = sparse_rt.InferenceSession(converted).run(None, feeds)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def gathered_product_chain(axis=-1, product_is_output=False, constant_b=False):
    """a [heads, L, 4] @ b [heads, 4, N], then GatherElements with indices [heads, L, J] over `axis`."""
    nodes = [helper.make_node("MatMul", ["a", "b"], ["p"]),
             helper.make_node("GatherElements", ["p", "i"], ["y"], axis=axis)]
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["heads", "L", 4]),
              helper.make_tensor_value_info("i", TensorProto.INT64, ["heads", "L", "J"])]
    inits = []
    if constant_b:
        inits.append(numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 4, 9)).astype(np.float32), "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, ["heads", 4, "N"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["heads", "L", "J"])]
    if product_is_output:
        outputs.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, ["heads", "L", "N"]))
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("axis", [-1, 2])
def test_gathered_product_becomes_one_op_and_matches_onnxruntime(axis):
    import onnxruntime as ort

    proto = gathered_product_chain(axis)
    graph = sparse_rt.convert(proto)
    assert [n.op_type for n in graph.nodes] == ["MatMulGatherElements"]
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 10, 4)).astype(np.float32), rng.standard_normal((3, 4, 9)).astype(np.float32)
    feeds = {"a": a, "b": b, "i": rng.integers(-9, 9, (3, 10, 6))}
    expected = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(sparse_rt.InferenceSession(graph).run(None, feeds)[0], expected[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match=r"MatMulGatherElements.*indices in \[-9, 9\)"):
        sparse_rt.InferenceSession(graph).run(None, {**feeds, "i": np.full((3, 10, 6), 9)})


@pytest.mark.parametrize("kwargs", [dict(axis=1), dict(product_is_output=True), dict(constant_b=True)],
                         ids=["other-axis", "product-is-output", "constant-weight"])
def test_products_that_cannot_fuse_stay(kwargs):
    graph = import_onnx(gathered_product_chain(**kwargs))
    fuse_graph(graph)
    assert "MatMulGatherElements" not in [n.op_type for n in graph.nodes]


def two_term_attention(layers=1, mask_rank=None):
    """Layers of softmax(q kT / 2 + bias + mask) v sharing bias [batch, 2, queries, keys] and mask
    (MPNet adds its position bias, then the padding mask). mask_rank None: mask [batch, 1, 1, keys];
    else the mask is reshaped at run time to the shape fed, so that it has no inferred shape, and
    the output is declared of that rank."""
    nodes, y, mask = [], "q", "mask"
    if mask_rank is not None:
        nodes.append(helper.make_node("Reshape", ["mask_values", "mask_shape"], ["mask"]))
    for i in range(layers):
        nodes += [helper.make_node("MatMul", [y, "kt"], [f"s{i}"]), helper.make_node("Div", [f"s{i}", "c"], [f"d{i}"]),
                  helper.make_node("Add", [f"d{i}", "bias"], [f"b{i}"]), helper.make_node("Add", [f"b{i}", mask], [f"m{i}"]),
                  helper.make_node("Softmax", [f"m{i}"], [f"p{i}"], axis=-1), helper.make_node("MatMul", [f"p{i}", "v"], [f"y{i}"])]
        y = f"y{i}"
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["batch", 2, "queries", 4]),
              helper.make_tensor_value_info("kt", TensorProto.FLOAT, ["batch", 2, 4, "keys"]),
              helper.make_tensor_value_info("v", TensorProto.FLOAT, ["batch", 2, "keys", 4]),
              helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch", 2, "queries", "keys"])]
    if mask_rank is None:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, "keys"]))
    else:
        inputs += [helper.make_tensor_value_info("mask_values", TensorProto.FLOAT, ["n"]),
                   helper.make_tensor_value_info("mask_shape", TensorProto.INT64, ["rank"])]
    output = helper.make_tensor_value_info(y, TensorProto.FLOAT, [f"d{i}" for i in range(mask_rank or 4)])
    graph = helper.make_graph(nodes, "attention", inputs, [output], [numpy_helper.from_array(np.array(2.0, np.float32), "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def two_term_feeds(mask_shape=(3, 1, 1, 5), reshaped=False):
    rng = np.random.default_rng(2)
    feeds = {"q": rng.standard_normal((3, 2, 5, 4)), "kt": rng.standard_normal((3, 2, 4, 5)),
             "v": rng.standard_normal((3, 2, 5, 4)), "bias": rng.standard_normal((3, 2, 5, 5))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    mask = np.where(rng.random(mask_shape) < 0.3, -1e4, 0.0).astype(np.float32)
    if reshaped:
        return {**feeds, "mask_values": mask.reshape(-1), "mask_shape": np.array(mask_shape, np.int64)}
    return {**feeds, "mask": mask}


def test_two_added_terms_are_summed_once_for_the_layers_sharing_them():
    import onnxruntime as ort

    model = two_term_attention(layers=2)
    graph = sparse_rt.convert(model)
    assert [n.op_type for n in graph.nodes] == ["Add", "ScaledDotProductAttention", "ScaledDotProductAttention"]
    feeds = two_term_feeds()
    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(sparse_rt.InferenceSession(graph).run(None, feeds)[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask_shape", [(3, 1, 1, 5), (2, 3, 2, 5, 5)], ids=["fits", "widens-at-run-time"])
def test_a_mask_of_no_known_shape_fuses_and_is_checked_at_run_time(mask_shape):
    import onnxruntime as ort

    model = two_term_attention(mask_rank=len(mask_shape))
    graph = sparse_rt.convert(model)
    assert "ScaledDotProductAttention" in [n.op_type for n in graph.nodes]
    feeds = two_term_feeds(mask_shape, reshaped=True)
    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    (actual,) = sparse_rt.InferenceSession(graph).run(None, feeds)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
