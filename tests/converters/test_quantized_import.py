"""Quantized ONNX models (onnxruntime's quantize_dynamic and quantize_static) convert to int8 layers."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

import sparse_rt
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.converters.quantized import is_quantized
from sparse_rt.scheduler.quantize import Precision
from tests.helpers import relative_error

RNG = np.random.default_rng(0)
W1 = (RNG.standard_normal((64, 128)) * (RNG.random((64, 128)) < 0.2)).astype(np.float32)
B1 = RNG.standard_normal(128).astype(np.float32)
W2 = RNG.standard_normal((128, 32)).astype(np.float32)
X = RNG.standard_normal((40, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
                              [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(B1, "b1"),
                               numpy_helper.from_array(W2, "w2")])
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _ort(path) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]


def _fp32() -> np.ndarray:
    return np.maximum(X @ W1 + B1, 0) @ W2


class _Reader(CalibrationDataReader):
    def __init__(self):
        self.batches = iter([{"x": RNG.standard_normal((8, 64)).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


def _quantized(float_model, kind: str):
    path = float_model.with_name(f"mlp.{kind}.onnx")
    if kind == "dynamic":
        quantize_dynamic(str(float_model), str(path), weight_type=QuantType.QInt8)
    else:
        # QOperator's other ops are onnxruntime contrib ops (com.microsoft QLinearAdd...): MatMul only
        fmt, ops = (QuantFormat.QDQ, None) if kind == "qdq" else (QuantFormat.QOperator, ["MatMul"])
        quantize_static(str(float_model), str(path), _Reader(), quant_format=fmt, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, op_types_to_quantize=ops)
    return path


@pytest.mark.parametrize("kind", ["dynamic", "qdq", "qoperator"])
def test_quantized_model_converts_to_int8_layers(float_model, kind):
    path = _quantized(float_model, kind)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops & {"MatMulInteger", "QLinearMatMul", "DequantizeLinear"}
    graph = sparse_rt.convert(str(path), tune=False)
    linear = [n for n in graph.nodes if n.op_type == "SparseLinear"]
    assert len(linear) == 2 and not any(n.op_type in ("MatMulInteger", "QLinearMatMul", "MatMul") for n in graph.nodes)
    assert [Precision.from_json(n.attributes["quantization"]).precision for n in linear] == ["int8", "int8"]
    assert all(n.attributes["format"].endswith("_int8") for n in linear)
    y = sparse_rt.InferenceSession(graph).run(None, {"x": X})[0]
    theirs = _ort(path)
    # onnxruntime's own int8 error against fp32 sets the scale of what "matches" means
    own_error = relative_error(theirs, _fp32())
    assert relative_error(y, theirs) <= max(2.0 * own_error, 0.02), (relative_error(y, theirs), own_error)
    if kind == "dynamic":  # static models clip activations to their calibration ranges: far from fp32 alike
        assert relative_error(y, _fp32()) < 0.05


@pytest.mark.parametrize("kind", ["dynamic", "qdq", "qoperator"])
def test_quantization_ops_match_the_onnx_reference(float_model, kind):
    """Unlowered, the quantized graph runs on the ops of sparse_rt.ops.quantize_ops."""
    path = _quantized(float_model, kind)
    graph = import_onnx(str(path))
    assert is_quantized(graph)
    y = sparse_rt.InferenceSession(graph).run(None, {"x": X})[0]
    model = onnx.load(str(path))
    for opset in model.opset_import:  # the reference has Q/DQ from opset 19 on: the same for 8-bit types
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 19)
    expected = ReferenceEvaluator(model).run(None, {"x": X})[0]
    assert relative_error(y, expected) < 1e-5


def test_quantize_none_keeps_float_kernels(float_model):
    path = _quantized(float_model, "dynamic")
    graph = sparse_rt.convert(str(path), tune=False, quantize=None)
    # quantize=None on a quantized model means "decide for me": int8 (explicit fp32 is not a mode)
    assert all(n.attributes["format"].endswith("_int8") for n in graph.nodes if n.op_type == "SparseLinear")
