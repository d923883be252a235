"""Int8 in the scheduler: candidates only when asked, the error tolerance, the saved verdict, explain."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.converters.lowering import LinearLayer
from sparse_rt.scheduler.cache import TuningCache
from sparse_rt.scheduler.explain import format_report, layer_reports
from sparse_rt.scheduler.plan import make_chooser
from sparse_rt.scheduler.quantize import Precision
from sparse_rt.scheduler.tune import tune_layer
from tests.helpers import relative_error

CPU = torch.device("cpu")


def sparse_weight(out=64, inp=96, density=0.1, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((out, inp)) * (rng.random((out, inp)) < density)).astype(np.float32)


def int8_fastest(candidate, bound, x):
    assert bound(x).shape == (x.shape[0], candidate.weight.shape[0])
    return 1e-4 if candidate.weight.name.endswith("_int8") else 1e-3


def test_int8_is_no_candidate_unless_asked(tmp_path):
    choice = tune_layer(LinearLayer("l", sparse_weight(), None), CPU, {8: 1.0}, TuningCache(tmp_path / "c"), int8_fastest)
    assert not any("_int8" in label for label in choice.timings)
    assert choice.quantization is None and not choice.weight.name.endswith("_int8")


def test_int8_wins_when_fastest_and_accurate(tmp_path):
    layer = LinearLayer("l", sparse_weight(), np.ones(64, np.float32))
    choice = tune_layer(layer, CPU, {8: 1.0}, TuningCache(tmp_path / "c"), int8_fastest, quantize="int8")
    assert choice.weight.name in ("csr_int8", "bsr_int8", "dense_int8")
    assert any(label.startswith("csr_int8") for label in choice.timings)
    assert any(label.startswith("bsr_int8") for label in choice.timings)  # 34% of its quads hold a nonzero
    verdict = Precision.from_json(choice.quantization)
    assert verdict.precision == "int8" and 0 < verdict.error < verdict.tolerance


def test_layer_above_the_tolerance_stays_fp32(tmp_path):
    layer = LinearLayer("l", sparse_weight(), None)
    choice = tune_layer(layer, CPU, {8: 1.0}, TuningCache(tmp_path / "c"), int8_fastest, quantize="int8",
                        tolerance=1e-4)
    assert not choice.weight.name.endswith("_int8")
    assert not any("_int8" in label for label in choice.timings)
    verdict = Precision.from_json(choice.quantization)
    assert verdict.precision == "fp32" and verdict.error > 1e-4 and "tolerance" in verdict.reason


@pytest.mark.parametrize("int8_wins", [True, False])
def test_calibrated_int8_choice_carries_the_corrected_bias(int8_wins, tmp_path):
    weight, bias = sparse_weight(), np.linspace(-1, 1, 64).astype(np.float32)
    inputs = np.abs(np.random.default_rng(3).standard_normal((256, 96))).astype(np.float32)
    layer = LinearLayer("l", weight, bias, calibration=inputs)

    def timer(candidate, bound, x):
        return int8_fastest(candidate, bound, x) if int8_wins else 1.0 - int8_fastest(candidate, bound, x)
    choice = tune_layer(layer, CPU, {8: 1.0}, TuningCache(tmp_path / "c"), timer, quantize="int8")
    assert choice.weight.name.endswith("_int8") == int8_wins
    if not int8_wins:
        assert choice.bias is None
        return
    rounded = choice.weight.to_dense().double().numpy()
    expected = bias - (rounded - weight) @ inputs.astype(np.float64).mean(0)
    np.testing.assert_allclose(choice.bias, expected, rtol=1e-5, atol=1e-6)
    verdict = Precision.from_json(choice.quantization)
    assert verdict.precision == "int8" and 0 < verdict.error < verdict.tolerance


def test_fp32_kept_when_faster(tmp_path):
    def fp32_fastest(candidate, bound, x):
        return 1.0 - int8_fastest(candidate, bound, x)
    choice = tune_layer(LinearLayer("l", sparse_weight(), None), CPU, {8: 1.0}, TuningCache(tmp_path / "c"),
                        fp32_fastest, quantize="int8")
    verdict = Precision.from_json(choice.quantization)
    assert verdict.precision == "fp32" and verdict.reason == "fp32 was faster" and verdict.error < 0.05


@pytest.mark.parametrize("density, expected", [(0.1, "csr_int8"), (0.9, "dense_int8")])
def test_heuristic_picks_int8_by_density(density, expected):
    choose = make_chooser(CPU, [8], tune=False, quantize="int8")
    choice = choose(LinearLayer("l", sparse_weight(density=density), None))
    assert choice.weight.name == expected
    assert Precision.from_json(choice.quantization).precision == "int8"
    strict = make_chooser(CPU, [8], tune=False, quantize="int8", tolerance=1e-6)(LinearLayer("l", sparse_weight(), None))
    assert not strict.weight.name.endswith("_int8")


def test_heuristic_picks_int8_bsr_for_weights_pruned_in_one_by_four_blocks():
    rng = np.random.default_rng(3)
    keep = (rng.random((64, 24)) < 0.15).repeat(4, axis=1)
    weight = (rng.standard_normal((64, 96)) * keep).astype(np.float32)
    choice = make_chooser(CPU, [8], tune=False, quantize="int8")(LinearLayer("l", weight, None))
    assert choice.weight.name == "bsr_int8" and choice.kernel == "bsr_int8_cpu"


def test_bad_quantize_options():
    with pytest.raises(ValueError, match=r"quantize: expected one of \(None, 'int8'\), got 'int4'"):
        make_chooser(CPU, [1], quantize="int4")
    with pytest.raises(ValueError, match="tolerance: expected a positive relative error, got 0"):
        make_chooser(CPU, [1], quantize="int8", tolerance=0)


def _mlp_model() -> bytes:
    w1, w2 = sparse_weight(128, 64, 0.2, 1), sparse_weight(32, 128, 0.2, 2)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), w1, w2


def _verdicts(graph):
    return [Precision.from_json(n.attributes["quantization"]) for n in graph.nodes if n.op_type == "SparseLinear"]


def test_convert_save_load_explain(tmp_path):
    model, w1, w2 = _mlp_model()
    errors = [v.error for v in _verdicts(sparse_rt.convert(model, tune=False, quantize="int8", quantize_tolerance=1.0))]
    assert all(0 < e < 0.05 for e in errors) and errors[0] != errors[1]
    tolerance = sum(errors) / 2  # between the two layers' errors: the worse one stays fp32
    graph = sparse_rt.convert(model, batch_sizes=[16], tune=False, quantize="int8", quantize_tolerance=tolerance)
    path = tmp_path / "m.onnx"
    sparse_rt.save(graph, path)
    loaded = sparse_rt.load(path)
    formats = [n.attributes["format"] for n in loaded.nodes if n.op_type == "SparseLinear"]
    worse = 0 if errors[0] > errors[1] else 1
    assert [f.endswith("_int8") for f in formats] == [i != worse for i in range(2)]
    assert [v.error for v in _verdicts(loaded)] == errors
    report = format_report(layer_reports(loaded), 16)
    assert f"int8 error above the tolerance {tolerance:.2%}" in report
    assert "1 of 2 layers int8, 1 kept fp32" in report
    x = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    y = sparse_rt.InferenceSession(loaded).run(None, {"x": x})[0]
    expected = np.maximum(x @ w1.T, 0) @ w2.T
    assert relative_error(y, expected) < 0.05


@pytest.mark.parametrize("tune", [False, True], ids=["heuristic", "tuned"])
def test_calibration_inputs_that_are_not_finite_name_the_layer(tune, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_RT_CACHE", str(tmp_path / "cache.json"))
    proto, _, _ = _mlp_model()
    overflowing = {"x": np.full((2, 64), 3e38, np.float32)}  # finite; the first layer's output is not
    with pytest.raises(ValueError, match=r"calibration: the inputs of layer '[^']+' hold NaN or Inf \(2 of 2 rows\)"):
        sparse_rt.convert(proto, quantize="int8", calibration=[overflowing], tune=tune, shapes={"x": (2, 64)})
