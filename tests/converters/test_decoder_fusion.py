"""Decoder block fusions (identity casts, RMSNorm, rotary embedding, grouped-query attention, SiLU gate):
hand-built chains fuse and match onnxruntime, near misses stay, exported decoders fuse and still match."""

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.converters.fusion import fuse_graph
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.decoders import FAMILIES, build_decoder, export_decoder
from sparse_rt.runtime.generate import Generator, greedy_with_session
from tests.helpers import assert_close

FLOAT = TensorProto.FLOAT


def model_of(nodes, inputs, outputs, constants=(), opset=17):
    inits = [numpy_helper.from_array(np.asarray(value), name) for name, value in constants]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def run_both(model, feeds):
    """(sparse_rt outputs, onnxruntime outputs) of a model on feeds."""
    graph = sparse_rt.convert(model)
    ours = sparse_rt.InferenceSession(graph).run(None, feeds)
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    return graph, ours, theirs


def ops(graph):
    return [n.op_type for n in graph.nodes]


# --- identity casts


def test_identity_casts_go_and_real_casts_stay():
    nodes = [helper.make_node("Cast", ["x"], ["same"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["same"], ["whole"], to=TensorProto.INT64),
             helper.make_node("Cast", ["x"], ["out"], to=TensorProto.FLOAT)]
    model = model_of(nodes, [helper.make_tensor_value_info("x", FLOAT, [3])],
                     [helper.make_tensor_value_info("whole", TensorProto.INT64, [3]),
                      helper.make_tensor_value_info("out", FLOAT, [3])])
    graph = import_onnx(model)
    fuse_graph(graph)
    # the float -> float cast read by another node goes; the one that is a graph output stays
    assert [(n.op_type, n.inputs[0]) for n in graph.nodes] == [("Cast", "x"), ("Cast", "x")]
    x = np.array([1.5, -2.5, 3.0], np.float32)
    whole, out = sparse_rt.InferenceSession(graph).run(None, {"x": x})
    np.testing.assert_array_equal(whole, x.astype(np.int64))
    np.testing.assert_array_equal(out, x)


# --- RMSNorm


def rms_norm_model(residual=True, exponent=2.0, axes=(-1,), keepdims=1, reciprocal="Div", weight_constant=True,
                   sum_read_again=True, expose_mean=False, b_shape=("batch", 5, 8)):
    """Llama's RMSNorm as exported: y = w * Cast(x * 1 / Sqrt(ReduceMean(Pow(Cast(x), 2)) + eps)) over
    [batch, 5, 8], x = a + b when residual (and z = x * 2 reading the sum again)."""
    x = "s" if residual else "a"
    nodes = [helper.make_node("Add", ["a", "b"], ["s"])] if residual else []
    nodes += [helper.make_node("Cast", [x], ["xc"], to=TensorProto.FLOAT),
              helper.make_node("Pow", ["xc", "two"], ["sq"]),
              helper.make_node("ReduceMean", ["sq"], ["mean"], axes=list(axes), keepdims=keepdims),
              helper.make_node("Add", ["mean", "eps"], ["var"]),
              helper.make_node("Sqrt", ["var"], ["std"])]
    if reciprocal == "Div":
        nodes.append(helper.make_node("Div", ["one", "std"], ["inv"]))
    else:
        nodes.append(helper.make_node("Reciprocal", ["std"], ["inv"]))
    nodes += [helper.make_node("Mul", ["xc", "inv"], ["normal"]),
              helper.make_node("Cast", ["normal"], ["normal_c"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["w", "normal_c"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", FLOAT, ["batch", 5, 8])]
    if residual and sum_read_again:
        nodes.append(helper.make_node("Mul", ["xc", "two"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", FLOAT, ["batch", 5, 8]))
    if expose_mean:
        outputs.append(helper.make_tensor_value_info("mean", FLOAT, ["batch", 5, 1]))
    inputs = [helper.make_tensor_value_info("a", FLOAT, ["batch", 5, 8])]
    if residual:
        inputs.append(helper.make_tensor_value_info("b", FLOAT, list(b_shape)))
    rng = np.random.default_rng(0)
    constants = [("two", np.array(exponent, np.float32)), ("eps", np.array(1e-6, np.float32)),
                 ("one", np.array(1.0, np.float32))]
    if weight_constant:
        constants.append(("w", rng.standard_normal(8).astype(np.float32)))
    else:
        inputs.append(helper.make_tensor_value_info("w", FLOAT, [8]))
    return model_of(nodes, inputs, outputs, constants)


def rms_feeds(residual=True, b_shape=(2, 5, 8)):
    rng = np.random.default_rng(1)
    feeds = {"a": (rng.standard_normal((2, 5, 8)) * 3).astype(np.float32)}
    if residual:
        feeds["b"] = (rng.standard_normal(b_shape) * 3).astype(np.float32)
    return feeds


@pytest.mark.parametrize("residual,sum_read_again,reciprocal,expected", [
    (True, True, "Div", ["AddRMSNormalization", "Mul"]),
    (True, False, "Reciprocal", ["AddRMSNormalization"]),
    (False, False, "Div", ["RMSNormalization"]),
], ids=["residual-read-again", "residual-reciprocal", "no-residual"])
def test_rms_norm_becomes_one_op_and_matches_onnxruntime(residual, sum_read_again, reciprocal, expected):
    model = rms_norm_model(residual=residual, sum_read_again=sum_read_again, reciprocal=reciprocal)
    graph, ours, theirs = run_both(model, rms_feeds(residual))
    assert ops(graph) == expected
    assert graph.nodes[0].attributes["epsilon"] == pytest.approx(1e-6)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_residual_rms_norm_broadcasting_the_residual_matches_onnxruntime():
    model = rms_norm_model(b_shape=(8,))
    graph, ours, theirs = run_both(model, rms_feeds(b_shape=(8,)))
    assert ops(graph) == ["AddRMSNormalization", "Mul"]
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(exponent=3.0), dict(axes=(1,)), dict(keepdims=0), dict(weight_constant=False),
                                    dict(expose_mean=True)],
                         ids=["cube", "other-axis", "no-keepdims", "weight-not-constant", "mean-is-output"])
def test_chains_that_are_not_rms_norm_stay(kwargs):
    model = rms_norm_model(**kwargs)
    graph = import_onnx(model)
    fuse_graph(graph)
    assert "ReduceMean" in ops(graph) and not {"RMSNormalization", "AddRMSNormalization"} & set(ops(graph))


# --- rotary embedding


def rotary_model(split=4, dynamic=False, swap=False, negate=True, axis=-1, from_projection=False):
    """y = x * cos + Concat(Neg(x[..., split:]), x[..., :split]) * sin for x [batch, 2, L, 8], cos and
    sin [batch, 1, L, 8]; dynamic: the split point computed as Shape(x)[3] / 2 (how the exporter does it);
    from_projection: x = Transpose(Reshape(p [batch, L, 16], [0, 0, 2, 8]), [0, 2, 1, 3])."""
    constants = [("zero", np.array([0], np.int64)), ("end", np.array([2**63 - 1], np.int64)),
                 ("axes", np.array([axis], np.int64)), ("ones", np.array([1], np.int64))]
    nodes = []
    x_input = helper.make_tensor_value_info("x", FLOAT, ["batch", 2, "L", 8])
    if from_projection:
        constants.append(("heads", np.array([0, 0, 2, 8], np.int64)))
        nodes += [helper.make_node("Reshape", ["p", "heads"], ["split_heads"]),
                  helper.make_node("Transpose", ["split_heads"], ["x"], perm=[0, 2, 1, 3])]
        x_input = helper.make_tensor_value_info("p", FLOAT, ["batch", "L", 16])
    if dynamic:
        constants += [("three", np.array(3, np.int64)), ("two", np.array(2, np.int64)),
                      ("axis0", np.array([0], np.int64))]
        nodes += [helper.make_node("Shape", ["x"], ["shape"]),
                  helper.make_node("Gather", ["shape", "three"], ["width"], axis=0),
                  helper.make_node("Div", ["width", "two"], ["half0"]),
                  helper.make_node("Unsqueeze", ["half0", "axis0"], ["half"])]
    else:
        constants.append(("half", np.array([split], np.int64)))
    nodes += [helper.make_node("Slice", ["x", "zero", "half", "axes", "ones"], ["lo"]),
              helper.make_node("Slice", ["x", "half", "end", "axes", "ones"], ["hi"])]
    high = "hi"
    if negate:
        nodes.append(helper.make_node("Neg", ["hi"], ["neg"]))
        high = "neg"
    parts = ["lo", high] if swap else [high, "lo"]
    nodes += [helper.make_node("Concat", parts, ["rot"], axis=-1),
              helper.make_node("Mul", ["x", "cos"], ["xc"]),
              helper.make_node("Mul", ["rot", "sin"], ["rs"]),
              helper.make_node("Add", ["xc", "rs"], ["y"])]
    inputs = [x_input, helper.make_tensor_value_info("cos", FLOAT, ["batch", 1, "L", 8]),
              helper.make_tensor_value_info("sin", FLOAT, ["batch", 1, "L", 8])]
    return model_of(nodes, inputs, [helper.make_tensor_value_info("y", FLOAT, ["batch", 2, "L", 8])], constants)


def rotary_feeds():
    rng = np.random.default_rng(2)
    angles = rng.standard_normal((3, 1, 5, 8))
    return {"x": rng.standard_normal((3, 2, 5, 8)).astype(np.float32), "cos": np.cos(angles).astype(np.float32),
            "sin": np.sin(angles).astype(np.float32)}


@pytest.mark.parametrize("dynamic", [False, True], ids=["constant-split", "split-from-shape"])
def test_rotary_embedding_becomes_one_op_and_matches_onnxruntime(dynamic):
    graph, (ours,), (theirs,) = run_both(rotary_model(dynamic=dynamic), rotary_feeds())
    assert ops(graph) == ["RotaryEmbedding"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_rotary_embedding_takes_in_the_split_into_heads():
    feeds = rotary_feeds()
    feeds["p"] = np.ascontiguousarray(feeds.pop("x").transpose(0, 2, 1, 3)).reshape(3, 5, 16)
    graph, (ours,), (theirs,) = run_both(rotary_model(from_projection=True), feeds)
    assert ops(graph) == ["RotaryEmbedding"] and graph.nodes[0].inputs == ["p", "cos", "sin", "heads"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(split=3), dict(swap=True), dict(negate=False), dict(axis=2)],
                         ids=["not-half", "halves-swapped", "no-negation", "other-axis"])
def test_chains_that_are_not_rotary_stay(kwargs):
    graph = import_onnx(rotary_model(**kwargs))
    fuse_graph(graph)
    assert "RotaryEmbedding" not in ops(graph) and "Concat" in ops(graph)


# --- grouped-query attention


def gqa_model(repeats=2, value_repeats=None, unsqueeze_axis=2, scale=0.5, merge_heads=False):
    """Llama's eager attention with repeat_kv as exported: k, v [batch, 2, S, 4] are repeated to 2 * repeats
    heads (Unsqueeze, Expand to a shape computed from Shape(k), Reshape), q [batch, 2 * repeats, L, 4];
    merge_heads: the output transposed and reshaped to [batch, L, 2 * repeats * 4]."""
    value_repeats = repeats if value_repeats is None else value_repeats
    constants = [("c_scale", np.array(scale, np.float32)), ("unsq_axis", np.array([unsqueeze_axis], np.int64))]
    nodes = []

    def repeat(name, r):
        constants.extend([(f"{name}_r", np.array([r], np.int64)), (f"{name}_heads", np.array([2 * r], np.int64))])
        nodes.extend([
            helper.make_node("Shape", [name], [f"{name}_b"], start=0, end=1),
            helper.make_node("Shape", [name], [f"{name}_h"], start=1, end=2),
            helper.make_node("Shape", [name], [f"{name}_se"], start=2, end=4),
            helper.make_node("Concat", [f"{name}_b", f"{name}_h", f"{name}_r", f"{name}_se"], [f"{name}_5d"], axis=0),
            helper.make_node("Concat", [f"{name}_b", f"{name}_heads", f"{name}_se"], [f"{name}_4d"], axis=0),
            helper.make_node("Unsqueeze", [name, "unsq_axis"], [f"{name}_u"]),
            helper.make_node("Expand", [f"{name}_u", f"{name}_5d"], [f"{name}_e"]),
            helper.make_node("Reshape", [f"{name}_e", f"{name}_4d"], [f"{name}_rep"]),
        ])
        return f"{name}_rep"

    k, v = repeat("k", repeats), repeat("v", value_repeats)
    nodes += [helper.make_node("Transpose", [k], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["s"]),
              helper.make_node("Mul", ["s", "c_scale"], ["scaled"]),
              helper.make_node("Add", ["scaled", "mask"], ["masked"]),
              helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
              helper.make_node("Cast", ["p"], ["pc"], to=TensorProto.FLOAT),
              helper.make_node("MatMul", ["pc", v], ["y"])]
    heads = 2 * repeats
    output = helper.make_tensor_value_info("y", FLOAT, ["batch", heads, "L", 4])
    if merge_heads:
        nodes[-1].output[0] = "heads_out"
        constants.append(("merged", np.array([0, 0, -1], np.int64)))
        nodes += [helper.make_node("Transpose", ["heads_out"], ["sequence_first"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["sequence_first", "merged"], ["y"])]
        output = helper.make_tensor_value_info("y", FLOAT, ["batch", "L", heads * 4])
    inputs = [helper.make_tensor_value_info("q", FLOAT, ["batch", heads, "L", 4]),
              helper.make_tensor_value_info("k", FLOAT, ["batch", 2, "S", 4]),
              helper.make_tensor_value_info("v", FLOAT, ["batch", 2, "S", 4]),
              helper.make_tensor_value_info("mask", FLOAT, ["batch", 1, "L", "S"])]
    return model_of(nodes, inputs, [output], constants)


def gqa_feeds(heads=4, length=3, keys=6):
    rng = np.random.default_rng(3)
    mask = np.where(np.tril(np.ones((length, keys)), keys - length) > 0, 0.0, -3.4e38)
    return {"q": rng.standard_normal((2, heads, length, 4)).astype(np.float32),
            "k": rng.standard_normal((2, 2, keys, 4)).astype(np.float32),
            "v": rng.standard_normal((2, 2, keys, 4)).astype(np.float32),
            "mask": np.broadcast_to(mask, (2, 1, length, keys)).astype(np.float32)}


@pytest.mark.parametrize("repeats", [1, 2, 4])
@pytest.mark.parametrize("merge_heads", [False, True])
def test_grouped_attention_becomes_one_op_and_matches_onnxruntime(repeats, merge_heads):
    graph, (ours,), (theirs,) = run_both(gqa_model(repeats, merge_heads=merge_heads), gqa_feeds(heads=2 * repeats))
    assert ops(graph) == ["GroupedQueryAttention"]
    assert graph.nodes[0].attributes["kv_repeats"] == repeats
    assert graph.nodes[0].inputs[1:] == ["k", "v", "mask"] + (["merged"] if merge_heads else [])
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs", [dict(value_repeats=1), dict(unsqueeze_axis=1)],
                         ids=["keys-and-values-repeated-differently", "heads-tiled-not-interleaved"])
def test_attention_that_is_not_grouped_stays(kwargs):
    model = gqa_model(**kwargs)
    graph = import_onnx(model)
    fuse_graph(graph)
    assert "GroupedQueryAttention" not in ops(graph) and "Expand" in ops(graph)


def test_tiled_heads_still_compute_what_onnxruntime_does():
    _, (ours,), (theirs,) = run_both(gqa_model(unsqueeze_axis=1), gqa_feeds())
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


# --- SiLU gate


def silu_model(same_gate=True):
    nodes = [helper.make_node("Sigmoid", ["g"], ["sig"]),
             helper.make_node("Mul", ["g" if same_gate else "up", "sig"], ["act"]),
             helper.make_node("Mul", ["act", "up"], ["y"])]
    inputs = [helper.make_tensor_value_info(name, FLOAT, ["batch", 6]) for name in ("g", "up")]
    return model_of(nodes, inputs, [helper.make_tensor_value_info("y", FLOAT, ["batch", 6])])


def test_silu_gate_becomes_one_op_and_matches_onnxruntime():
    rng = np.random.default_rng(4)
    feeds = {name: rng.standard_normal((3, 6)).astype(np.float32) for name in ("g", "up")}
    graph, (ours,), (theirs,) = run_both(silu_model(), feeds)
    assert ops(graph) == ["SiluMul"]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_sigmoid_of_another_value_stays():
    graph = import_onnx(silu_model(same_gate=False))
    fuse_graph(graph)
    assert ops(graph) == ["Sigmoid", "Mul", "Mul"]


# --- exported decoders


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, tmp_path_factory):
    """(family, ONNX path, converted graph) of a tiny decoder."""
    path = tmp_path_factory.mktemp("decoder") / f"{request.param}.onnx"
    export_decoder(build_decoder(request.param), path)
    return request.param, path, sparse_rt.convert(path, tune=False)


def test_exported_decoder_blocks_are_fused(exported):
    family, _, graph = exported
    counts = Counter(ops(graph))
    layers = 2
    assert counts["GroupedQueryAttention"] == layers
    assert not {"Softmax", "MatMul", "Pow", "Sqrt", "Neg", "Sigmoid", "ScaledDotProductAttention"} & set(counts)
    assert not [n for n in graph.nodes if n.op_type == "Cast" and graph.value(n.inputs[0]).dtype == "float32"]
    if family == "llama":
        assert counts["RotaryEmbedding"] == 2 * layers and counts["SiluMul"] == layers
        # a norm before attention and MLP of every layer and at the end; all but the first add the residual
        assert counts["AddRMSNormalization"] == 2 * layers and counts["RMSNormalization"] == 1
        assert {n.attributes["kv_repeats"] for n in graph.nodes if n.op_type == "GroupedQueryAttention"} == {2}
        # the split into heads before the rotary embeddings and the merge after attention are folded in
        assert all(len(n.inputs) == 4 for n in graph.nodes if n.op_type == "RotaryEmbedding")
        assert all(len(n.inputs) == 5 for n in graph.nodes if n.op_type == "GroupedQueryAttention")


@pytest.mark.parametrize("batch,step,past", [(1, 1, 9), (2, 5, 0), (2, 4, 3)])
def test_fused_decoder_logits_match_onnxruntime(exported, batch, step, past):
    _, path, graph = exported
    rng = np.random.default_rng(batch * 10 + step)
    feed = {"input_ids": rng.integers(0, 256, (batch, step)),
            "attention_mask": np.ones((batch, past + step), np.int64),
            "position_ids": np.tile(np.arange(past, past + step), (batch, 1))}
    for value in graph.inputs[3:]:
        feed[value.name] = rng.standard_normal((batch, value.shape[1], past, value.shape[3])).astype(np.float32)
    ours = sparse_rt.InferenceSession(graph).run(None, feed)
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert_close(a, b, rtol=1e-4)


def test_fused_decoder_greedy_tokens_match_onnxruntime(exported):
    _, path, graph = exported
    generator = Generator(graph, context=64)
    prompt = np.random.default_rng(5).integers(0, 256, (2, 5))
    ours = generator.generate(prompt, 12)
    theirs = greedy_with_session(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]),
                                 generator.layout, prompt, 12)
    np.testing.assert_array_equal(ours, theirs)
