"""Shape values as plain Python (`runtime.shape_forms`, `runtime.shape_program`): every form
against the torch op it mirrors, and sessions computing shape values that way against the
same sessions computing them as torch ops."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.ir.graph import Node
from sparse_rt.ops.registry import BindContext, lookup
from sparse_rt.runtime.shape_forms import FORMS, as_array, canonical
from sparse_rt.runtime.shape_program import ShapeSegment
from tests.helpers import assert_close
from tests.ops.test_exported_families import FAMILIES, _export

I64, I32 = np.int64, np.int32
BIG = 2**62


def a(*values, dtype=I64) -> np.ndarray:
    return np.array(values, dtype)


def s(value, dtype=I64) -> np.ndarray:
    return np.array(value, dtype)


@dataclass
class Case:
    op_type: str
    inputs: list  # numpy arrays, None for an omitted input
    attributes: dict = field(default_factory=dict)
    opset: int = 17
    mirrored: bool = True  # False: the form refuses the call and the segment runs the torch op
    id: str = ""


CASES = [
    Case("Shape", [np.zeros((2, 3, 5), np.float32)], id="shape"),
    Case("Shape", [np.zeros((2, 3, 5), np.float32)], {"start": -2}, id="shape_start_negative"),
    Case("Shape", [np.zeros((2, 3, 5), np.float32)], {"start": 1, "end": 99}, id="shape_end_clamped"),
    Case("Shape", [s(7)], id="shape_of_scalar_is_empty"),
    Case("Size", [np.zeros((2, 0, 5), np.float32)], id="size_empty"),
    Case("Gather", [a(4, 5, 6), s(-1)], {"axis": 0}, id="gather_negative_index"),
    Case("Gather", [a(4, 5, 6), a(2, -3, 0)], {"axis": 0}, id="gather_vector_indices"),
    Case("Gather", [a(4, 5, 6), s(1, I32)], {"axis": -1}, id="gather_int32_index"),
    Case("Gather", [a(4, 5, 6), s(3)], id="gather_out_of_range", mirrored=False),
    Case("Gather", [np.arange(6).reshape(2, 3), a(-1)], {"axis": 1}, id="gather_axis1_rank2"),
    Case("Gather", [a(4, 5, 6, dtype=I32), s(0)], id="gather_int32_data"),
    Case("Unsqueeze", [s(5), a(0)], id="unsqueeze_scalar"),
    Case("Unsqueeze", [s(5), a(-1)], id="unsqueeze_scalar_negative"),
    Case("Unsqueeze", [a(3, 4), a(-1, 0)], id="unsqueeze_vector_two_axes"),
    Case("Unsqueeze", [a(3, 4)], {"axes": [-1]}, opset=11, id="unsqueeze_attribute_opset11"),
    Case("Unsqueeze", [s(2)], {"axes": [0, 1]}, opset=11, id="unsqueeze_scalar_to_rank2"),
    Case("Squeeze", [a(7), a(0)], id="squeeze_vector"),
    Case("Squeeze", [a(7), None], id="squeeze_all"),
    Case("Squeeze", [np.ones((1, 3, 1), I64), a(-1)], id="squeeze_negative"),
    Case("Squeeze", [a(7, 8), a(0)], id="squeeze_not_one", mirrored=False),
    Case("Squeeze", [np.ones((1, 2), I64)], {"axes": [0]}, opset=11, id="squeeze_attribute_opset11"),
    Case("Reshape", [a(1, 2, 3, 4), a(-1)], id="reshape_flat"),
    Case("Reshape", [a(6), np.zeros(0, I64)], id="reshape_to_scalar"),
    Case("Reshape", [np.ones((2, 3), I64), a(0, -1)], id="reshape_zero_copies_dim"),
    Case("Reshape", [np.ones((2, 0), I64), a(0, 2)], {"allowzero": 1}, id="reshape_allowzero"),
    Case("Reshape", [a(1, 2, 3, 4), a(2, 2)], id="reshape_rank2"),
    Case("Reshape", [a(1, 2, 3), a(2, 2)], id="reshape_bad_size", mirrored=False),
    Case("Reshape", [a(1, 2, 3, 4)], {"shape": [2, -1]}, opset=4, id="reshape_attribute_opset4"),
    Case("Concat", [a(1), a(2, 3), np.zeros(0, I64)], {"axis": 0}, id="concat_vectors_and_empty"),
    Case("Concat", [a(1, dtype=I32), a(2, dtype=I32)], {"axis": -1}, id="concat_int32"),
    Case("Concat", [np.ones((1, 2), I64), np.zeros((2, 2), I64)], {"axis": 0}, id="concat_rank2"),
    Case("Concat", [a(1), a(2, dtype=I32)], {"axis": 0}, id="concat_mixed_dtypes", mirrored=False),
    Case("Cast", [a(3, -4)], {"to": TensorProto.FLOAT}, id="cast_int_to_float"),
    Case("Cast", [s(2**53 + 1)], {"to": TensorProto.FLOAT}, id="cast_int_rounds_to_float32"),
    Case("Cast", [s(-2.7, np.float32)], {"to": TensorProto.INT64}, id="cast_float_truncates"),
    Case("Cast", [s(np.nan, np.float32)], {"to": TensorProto.INT64}, id="cast_nan_to_int", mirrored=False),
    Case("Cast", [a(0, 5)], {"to": TensorProto.BOOL}, id="cast_int_to_bool"),
    Case("Cast", [s(True, np.bool_)], {"to": TensorProto.INT64}, id="cast_bool_to_int"),
    Case("Cast", [a(2**40)], {"to": TensorProto.INT32}, id="cast_narrowing_wraps"),
    Case("Cast", [s(9)], {"to": "INT32"}, opset=1, id="cast_named_type_opset1"),
    Case("Add", [s(3), a(1, 2)], id="add_broadcast"),
    Case("Add", [s(BIG), s(BIG)], id="add_overflow_wraps", mirrored=False),
    Case("Sub", [a(5, 6), a(7, 8)], id="sub"),
    Case("Mul", [a(2, 3, dtype=I32), a(4, 5, dtype=I32)], id="mul_int32"),
    Case("Mul", [s(2), np.ones((1, 1, 2), I64)], id="mul_rank3"),
    Case("Div", [s(-7), s(2)], id="div_truncates_negative"),
    Case("Div", [a(7, -7, 6), a(-2, -2, 3)], id="div_vectors"),
    Case("Div", [s(7.0, np.float32), s(2.0, np.float32)], id="div_float"),
    Case("Div", [s(7), s(0)], id="div_by_zero", mirrored=False),
    Case("Mod", [a(-7, 7), a(3, -3)], id="mod_divisor_sign"),
    Case("Mod", [a(-7, 7), a(3, -3)], {"fmod": 1}, id="mod_dividend_sign"),
    Case("Equal", [a(1, -1, 3), a(1, 2, 3)], id="equal_vectors"),
    Case("Equal", [s(4), s(4)], id="equal_scalars"),
    Case("Less", [s(1), a(0, 2)], id="less_broadcast"),
    Case("Greater", [s(1.5, np.float32), s(1.0, np.float32)], id="greater_float"),
    Case("Where", [np.array([True, False]), a(1, 2), a(3, 4)], id="where_vectors"),
    Case("Where", [s(False, np.bool_), s(1), s(2)], id="where_scalars"),
    Case("Where", [np.array([True, False]), s(9), a(3, 4)], id="where_broadcast"),
    Case("Range", [s(0), s(5), s(2)], id="range"),
    Case("Range", [s(5), s(-1), s(-3)], id="range_negative_delta"),
    Case("Range", [s(5), s(1), s(1)], id="range_empty"),
    Case("Range", [s(1, I32), s(4, I32), s(1, I32)], id="range_int32"),
    Case("Range", [s(0.0, np.float32), s(1.0, np.float32), s(0.25, np.float32)], id="range_float", mirrored=False),
    Case("Slice", [a(1, 2, 3, 4), a(1), a(BIG)], id="slice_to_end"),
    Case("Slice", [a(1, 2, 3, 4), a(-1), a(-BIG), a(0), a(-2)], id="slice_negative_step"),
    Case("Slice", [a(1, 2, 3, 4), a(9), a(-9), None, a(-1)], id="slice_negative_step_clamped"),
    Case("Slice", [np.arange(12).reshape(3, 4), a(1, -3), a(3, BIG), a(-2, 1)], id="slice_rank2"),
    Case("Slice", [a(1, 2, 3, 4)], {"starts": [1], "ends": [3]}, opset=9, id="slice_attributes_opset9"),
    Case("ReduceProd", [a(2, 3, 4)], {"keepdims": 0}, opset=13, id="reduce_prod_attribute"),
    Case("ReduceProd", [np.ones((2, 3), I64) * 2, a(-1)], id="reduce_prod_axes_input", opset=18),
    Case("Abs", [a(-3, 4)], id="abs"),
    Case("Neg", [s(5)], id="neg"),
    Case("Max", [s(3), s(7), s(5)], id="max_variadic"),
    Case("Min", [a(3, 9), a(4, 1)], id="min_vectors"),
    Case("Not", [np.array([True, False])], id="not"),
    Case("Sqrt", [s(64.0, np.float32)], id="sqrt"),
    Case("Ceil", [s(1.5, np.float32)], id="ceil"),
    Case("Floor", [s(-1.5, np.float64)], id="floor"),
    Case("Identity", [a(1, 2)], id="identity"),
]


def _node(case: Case) -> Node:
    return Node(case.op_type, [f"in{k}" if x is not None else "" for k, x in enumerate(case.inputs)], ["out"],
                dict(case.attributes))


def _torch(case: Case) -> torch.Tensor | Exception:
    op = lookup(case.op_type, "", case.opset).bind(_node(case), BindContext(torch.device("cpu"), case.opset))
    try:
        return op(*(None if x is None else torch.from_numpy(np.array(x)) for x in case.inputs))
    except Exception as exc:
        return exc


def _assert_same_value(got: Any, expected: torch.Tensor) -> None:
    array = as_array(got)
    assert type(canonical(array)) is type(got), f"{type(got).__name__} is not the canonical form of {array!r}"
    want = expected.numpy()
    assert array.dtype == want.dtype and array.shape == want.shape, (array, want)
    np.testing.assert_array_equal(array, want)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_form_gives_the_torch_ops_value_or_refuses(case: Case):
    form = FORMS[case.op_type](_node(case), case.opset)
    expected = _torch(case)
    inputs = [None if x is None else canonical(x) for x in case.inputs]
    if not case.mirrored:
        with pytest.raises(Exception):
            form(*inputs)
        return
    assert not isinstance(expected, Exception), expected
    _assert_same_value(form(*inputs), expected)


def test_every_shape_arithmetic_op_has_a_form():
    from sparse_rt.runtime.shapes import SHAPE_ARITHMETIC, SHAPE_SOURCES

    assert SHAPE_ARITHMETIC | SHAPE_SOURCES <= set(FORMS)


# ---------------------------------------------------------------- sessions


def _model(nodes, initializers: dict[str, np.ndarray], outputs, opset: int = 17,
           inputs=(("x", TensorProto.FLOAT, ["batch", "seq", 8]),)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "shapes",
        [helper.make_tensor_value_info(*spec) for spec in inputs],
        [helper.make_tensor_value_info(*spec) for spec in outputs],
        initializer=[numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _attention_split(opset: int) -> onnx.ModelProto:
    """x [batch, seq, 8] -> heads [batch, 2, seq, 4] and back, and a causal [seq, seq] mask, with
    targets computed from Shape(x) as exporters do (opset 11: axes as attributes, 13+: inputs)."""
    def unsqueeze(value, out):
        if opset < 13:
            return helper.make_node("Unsqueeze", [value], [out], axes=[0])
        return helper.make_node("Unsqueeze", [value, "axis0"], [out])

    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Gather", ["shape", "minus2"], ["seq"], axis=0),
        helper.make_node("Gather", ["shape", "minus1"], ["width"], axis=0),
        helper.make_node("Div", ["width", "two"], ["head_width"]),
        unsqueeze("batch", "batch1"), unsqueeze("seq", "seq1"), unsqueeze("head_width", "head_width1"),
        helper.make_node("Concat", ["batch1", "seq1", "two1", "head_width1"], ["split_target"], axis=0),
        helper.make_node("Reshape", ["x", "split_target"], ["split"]),
        helper.make_node("Transpose", ["split"], ["heads"], perm=[0, 2, 1, 3]),
        helper.make_node("Shape", ["heads"], ["heads_shape"]),
        helper.make_node("Slice", ["heads_shape", "zero1", "one1"], ["batch_again"]),
        helper.make_node("Mul", ["head_width1", "two1"], ["width1"]),
        helper.make_node("Concat", ["batch_again", "seq1", "width1"], ["merge_target"], axis=0),
        helper.make_node("Transpose", ["heads"], ["back"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["back", "merge_target"], ["merged"]),
        helper.make_node("Cast", ["seq", ], ["seq_float"], to=TensorProto.FLOAT),
        helper.make_node("Sqrt", ["seq_float"], ["scale"]),
        helper.make_node("Div", ["merged", "scale"], ["y"]),
        helper.make_node("Range", ["zero", "seq", "one"], ["positions"]),
        helper.make_node("Unsqueeze", ["positions", "axis0"], ["rows"]) if opset >= 13 else
        helper.make_node("Unsqueeze", ["positions"], ["rows"], axes=[0]),
        helper.make_node("Unsqueeze", ["positions", "axis1"], ["columns"]) if opset >= 13 else
        helper.make_node("Unsqueeze", ["positions"], ["columns"], axes=[1]),
        helper.make_node("Greater", ["rows", "columns"], ["masked"]),
        helper.make_node("Where", ["masked", "zero_float", "one_float"], ["causal"]),
    ]
    initializers = {
        "zero": s(0), "one": s(1), "minus1": s(-1), "minus2": s(-2), "two": s(2), "two1": a(2),
        "zero1": a(0), "one1": a(1), "axis0": a(0), "axis1": a(1),
        "one_float": s(1.0, np.float32), "zero_float": s(0.0, np.float32),
    }
    if opset < 13:
        del initializers["axis0"], initializers["axis1"]
    return _model(nodes, initializers, [("y", TensorProto.FLOAT, ["batch", "seq", 8]),
                                        ("causal", TensorProto.FLOAT, ["seq", "seq"])], opset)


def _sessions(model) -> tuple[sparse_rt.InferenceSession, sparse_rt.InferenceSession]:
    """The model's session, and one computing its shape values as torch ops."""
    fast = sparse_rt.InferenceSession(model if isinstance(model, sparse_rt.Graph) else model.SerializeToString())
    reference = sparse_rt.InferenceSession(fast.graph)
    reference._miss_steps = None
    return fast, reference


def _assert_kept_values_match_torch(session: sparse_rt.InferenceSession, feed: dict) -> None:
    """The shape values the session keeps for `feed` equal those computed as torch ops."""
    signature = tuple(tuple(np.shape(feed[v.name])) for v in session.graph.inputs)
    kept = session._shape_cache[signature].values
    assert kept, "no shape value was kept"
    expected = session.intermediates(feed, set(kept))
    for name, value in kept.items():
        assert value.dtype == expected[name].dtype and value.shape == expected[name].shape, name
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_session_matches_torch_path_and_onnxruntime_at_every_new_shape(opset: int):
    model = _attention_split(opset)
    fast, reference = _sessions(model)
    assert any(isinstance(step.fn, ShapeSegment) for step in fast._miss_steps)
    ort_session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, seq in [(1, 5), (1, 6), (2, 6), (1, 5), (3, 1), (1, 7)]:
        feed = {"x": rng.standard_normal((batch, seq, 8)).astype(np.float32)}
        fast._shape_cache.clear()  # every run computes the shape values
        got = fast.run(None, feed)
        want = reference.run(None, feed)
        for g, w, o in zip(got, want, ort_session.run(None, feed)):
            np.testing.assert_array_equal(g, w)
            assert_close(g, o)
        _assert_kept_values_match_torch(fast, feed)


def test_a_shape_node_without_a_form_keeps_the_torch_path():
    model = head_cast_model(TensorProto.BFLOAT16)
    fast, _ = _sessions(model)
    assert fast._shape_values and fast._miss_steps is None
    x = np.ones((2, 3, 8), np.float32)
    (y,) = fast.run(None, {"x": x})
    np.testing.assert_array_equal(y, x.reshape(2, 3, 2, 4))


def head_cast_model(cast_to: int) -> onnx.ModelProto:
    """x [batch, seq, 8] reshaped to [batch, seq, 2, 4] by a target that goes through a Cast to
    `cast_to` and back to int64."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero1", "two1"], ["lead"]),
        helper.make_node("Cast", ["lead"], ["lead_cast"], to=cast_to),
        helper.make_node("Cast", ["lead_cast"], ["lead_back"], to=TensorProto.INT64),
        helper.make_node("Concat", ["lead_back", "heads"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    return _model(nodes, {"zero1": a(0), "two1": a(2), "heads": a(2, 4)},
                  [("y", TensorProto.FLOAT, ["batch", "seq", 2, 4])])


def test_a_call_the_forms_refuse_runs_the_torch_op():
    """An int64 product that overflows: the form refuses it, the torch op wraps it, as the torch path does."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Mul", ["shape", "huge"], ["wrapped"]),
        helper.make_node("Mul", ["wrapped", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "shape"], ["target"]),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    model = _model(nodes, {"huge": a(2**62, 2**62, 2**62), "zero": a(0, 0, 0)},
                   [("y", TensorProto.FLOAT, ["batch", "seq", 8])])
    fast, reference = _sessions(model)
    assert fast._miss_steps is not None
    feed = {"x": np.ones((3, 5, 8), np.float32)}
    np.testing.assert_array_equal(fast.run(None, feed)[0], reference.run(None, feed)[0])
    _assert_kept_values_match_torch(fast, feed)


def test_a_torch_error_in_a_segment_names_the_node():
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Div", ["shape", "zero"], ["target"]),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    model = _model(nodes, {"zero": a(0, 0, 0)}, [("y", TensorProto.FLOAT, ["batch", "seq", 8])])
    fast, _ = _sessions(model)
    with pytest.raises(RuntimeError, match="target.*ZeroDivisionError"):
        fast.run(None, {"x": np.ones((1, 2, 8), np.float32)})


def test_outputs_never_alias_kept_or_reused_shape_tensors():
    """Two outputs read the same shape value: writing into one run's outputs changes no later run."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Add", ["shape", "zero"], ["same_value"]),
        helper.make_node("Identity", ["shape"], ["out_a"]),
        helper.make_node("Identity", ["same_value"], ["out_b"]),
        helper.make_node("Relu", ["x"], ["y"]),
    ]
    model = _model(nodes, {"zero": a(0, 0, 0)}, [("out_a", TensorProto.INT64, [3]), ("out_b", TensorProto.INT64, [3]),
                                                  ("y", TensorProto.FLOAT, ["batch", "seq", 8])])
    fast, _ = _sessions(model)
    for batch in (2, 3, 2, 4):
        out_a, out_b, _ = fast.run(None, {"x": np.zeros((batch, 5, 8), np.float32)})
        np.testing.assert_array_equal(out_a, [batch, 5, 8])
        np.testing.assert_array_equal(out_b, [batch, 5, 8])
        out_a[:] = -1
        out_b[:] = -2
    tensors = fast.run(None, {"x": torch.zeros(4, 5, 8)})
    tensors[0].fill_(-3)
    np.testing.assert_array_equal(fast.run(None, {"x": np.zeros((4, 5, 8), np.float32)})[1], [4, 5, 8])


@pytest.mark.parametrize("opset", [14, 17])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exported_families_compute_shape_values_as_torch_does(family: str, opset: int):
    torch.manual_seed(0)
    make_model, make_inputs = FAMILIES[family]
    proto = _export(make_model().eval(), make_inputs(2), opset)
    fast, reference = _sessions(import_onnx(proto))
    if not fast._shape_values:
        pytest.skip(f"{family} computes no shape values")
    assert fast._miss_steps is not None
    names = [v.name for v in fast.graph.inputs]
    for batch in (3, 1, 4):
        feed = dict(zip(names, (x.numpy() for x in make_inputs(batch))))
        for got, want in zip(fast.run(None, feed), reference.run(None, feed)):
            np.testing.assert_array_equal(got, want)
        _assert_kept_values_match_torch(fast, feed)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decoder_steps_compute_shape_values_as_torch_does(family: str, tmp_path):
    from sparse_rt.converters.decoder import decoder_layout
    from sparse_rt.decoders import build_decoder, export_decoder

    path = tmp_path / f"{family}.onnx"
    export_decoder(build_decoder(family), path)
    fast, reference = _sessions(sparse_rt.convert(path, tune=False))
    assert fast._miss_steps is not None
    layout = decoder_layout(fast.graph)
    rng = np.random.default_rng(0)
    for batch, step, past in [(1, 4, 0), (1, 1, 4), (1, 1, 5), (2, 1, 6), (1, 1, 7)]:
        feed = {"input_ids": rng.integers(0, 256, (batch, step)),
                "attention_mask": np.ones((batch, past + step), np.int64),
                "position_ids": np.tile(np.arange(past, past + step), (batch, 1))}
        for key, value in layout.past:
            for name in (key, value):
                feed[name] = rng.standard_normal((batch, layout.kv_heads, past, layout.head_dim)).astype(np.float32)
        for got, want in zip(fast.run(None, feed), reference.run(None, feed)):
            np.testing.assert_array_equal(got, want)
        _assert_kept_values_match_torch(fast, feed)
