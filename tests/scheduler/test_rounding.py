"""GPTQ rounding of int8 weights against calibration inputs, the corrected bias, and
convert(..., calibration=)."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.formats.int8 import quantize_per_channel
from sparse_rt.scheduler.rounding import corrected_bias, gptq_round
from tests.helpers import relative_error


def sparse_weight(out, inp, density=0.1, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g) * (torch.rand(out, inp, generator=g) < density)


def correlated_inputs(rows, inp, seed=1) -> torch.Tensor:
    """Samples (seeded by `seed`) of one distribution per width: inputs along 16 fixed directions
    plus noise, what makes rounding against them pay."""
    directions = torch.randn(16, inp, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 16, generator=g) @ directions + 0.3 * torch.randn(rows, inp, generator=g)


def output_error(x, weight, q, scales):
    return float((x @ (q.float() * scales[:, None]).T - x @ weight.T).norm() / (x @ weight.T).norm())


@pytest.mark.parametrize("density,gain", [(0.1, 0.95), (0.5, 0.6)])
def test_gptq_beats_rounding_to_nearest_on_new_inputs(density, gain):
    """Measured: 0.89x the error of rounding to nearest at 10% density, 0.47x at 50% (only the
    kept weights can take a column's error)."""
    weight, x = sparse_weight(96, 256, density), correlated_inputs(512, 256)
    q, scales = gptq_round(weight, x)
    nearest, nearest_scales = quantize_per_channel(weight)
    assert torch.equal(scales, nearest_scales)  # the same per-channel grid
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    new = correlated_inputs(512, 256, seed=2)
    assert output_error(new, weight, q, scales) < gain * output_error(new, weight, nearest, scales)


def test_sparsity_kept_and_edge_rows():
    weight = sparse_weight(32, 64, density=0.3)
    weight[3] = 0  # an all-zero row
    weight[5] = 0
    weight[5, 7] = -2.0  # a single weight: exactly -127 steps
    x = correlated_inputs(200, 64)
    x[:, 10] = 0  # an input the calibration never saw
    q, scales = gptq_round(weight, x)
    assert bool(((q != 0) <= (weight != 0)).all())
    assert scales[3] == 0 and not q[3].any()
    assert int(q[5, 7]) == -127
    assert bool(torch.isfinite(scales).all())


def test_no_calibration_rows_round_to_nearest():
    weight = sparse_weight(8, 16, density=0.5)
    q, scales = gptq_round(weight, torch.zeros(0, 16))
    assert torch.equal(q, quantize_per_channel(weight)[0])


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"expected weight \[out, in\] and inputs \[rows, in\], got \[4, 8\] and \[3, 5\]"):
        gptq_round(torch.ones(4, 8), torch.ones(3, 5))
    x = torch.ones(3, 8)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="inputs holds NaN or Inf"):
        gptq_round(torch.ones(4, 8), x)


@pytest.mark.parametrize("with_bias", [True, False])
def test_corrected_bias_keeps_the_mean_output(with_bias):
    weight = sparse_weight(48, 80, density=0.2)
    q, scales = quantize_per_channel(weight)
    rounded = q.float() * scales[:, None]
    bias = torch.linspace(-1, 1, 48) if with_bias else None
    x = torch.relu(correlated_inputs(300, 80)) + 0.5  # inputs of nonzero mean: an offset to cancel
    corrected = corrected_bias(weight, rounded, bias, x)
    reference = x.double() @ weight.double().T + (0 if bias is None else bias.double())
    before = (x.double() @ rounded.double().T + (0 if bias is None else bias.double())).mean(0) - reference.mean(0)
    after = (x.double() @ rounded.double().T + corrected.double()).mean(0) - reference.mean(0)
    assert corrected.dtype == torch.float32 and corrected.shape == (48,)
    assert float(after.abs().max()) < 1e-3 * float(before.abs().max())
    untouched = corrected_bias(weight, rounded, bias, torch.zeros(0, 80))
    assert torch.equal(untouched, torch.zeros(48) if bias is None else bias)


def test_corrected_bias_bad_inputs():
    weight = torch.ones(4, 8)
    with pytest.raises(ValueError, match=r"corrected_bias: expected inputs \[rows, 8\], got \[3, 5\]"):
        corrected_bias(weight, weight, None, torch.ones(3, 5))
    x = torch.ones(3, 8)
    x[0, 0] = float("inf")
    with pytest.raises(ValueError, match="corrected_bias: inputs hold NaN or Inf"):
        corrected_bias(weight, weight, None, x)


def _model():
    w1, w2 = sparse_weight(128, 64, 0.2, 1).numpy(), sparse_weight(32, 128, 0.2, 2).numpy()
    nodes = [helper.make_node("MatMul", ["x", "w1t"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2t"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
                              [numpy_helper.from_array(np.ascontiguousarray(w1.T), "w1t"),
                               numpy_helper.from_array(np.ascontiguousarray(w2.T), "w2t")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), w1, w2


def _int8_values(graph):
    return [graph.constants[n.inputs[1 + i]] for n in graph.nodes if n.op_type == "SparseLinear"
            for i in range(len(n.inputs) - 1) if graph.constants.get(n.inputs[1 + i], np.zeros(0)).dtype == np.int8]


def test_convert_rounds_against_the_calibration_feeds():
    model, w1, w2 = _model()
    feeds = [{"x": correlated_inputs(32, 64, seed=s).numpy()} for s in range(4)]
    nearest = sparse_rt.convert(model, tune=False, quantize="int8", quantize_tolerance=1.0)
    calibrated = sparse_rt.convert(model, tune=False, quantize="int8", quantize_tolerance=1.0, calibration=feeds,
                                   rounding="gptq")
    formats = [n.attributes["format"] for n in calibrated.nodes if n.op_type == "SparseLinear"]
    assert all(f.endswith("_int8") for f in formats)
    values_nearest, values_calibrated = _int8_values(nearest), _int8_values(calibrated)
    assert len(values_calibrated) == len(values_nearest) > 0
    assert any(not np.array_equal(a, b) for a, b in zip(values_nearest, values_calibrated))
    x = correlated_inputs(64, 64, seed=9).numpy()
    expected = np.maximum(x @ w1.T, 0) @ w2.T
    y = sparse_rt.InferenceSession(calibrated).run(None, {"x": x})[0]
    assert relative_error(y, expected) < 0.05


def test_calibrated_layers_carry_a_corrected_bias():
    """The layers have no bias; calibrated int8 ones gain the one that cancels their rounding's
    mean output error (the second layer reads ReLU outputs: a large mean to correct)."""
    model, w1, w2 = _model()
    feeds = [{"x": correlated_inputs(64, 64, seed=s).numpy()} for s in range(4)]
    options = dict(tune=False, quantize="int8", quantize_tolerance=1.0)
    nearest = sparse_rt.convert(model, **options)
    calibrated = sparse_rt.convert(model, calibration=feeds, **options)
    layers = [n for n in calibrated.nodes if n.op_type == "SparseLinear"]
    assert all(n.attributes["format"].endswith("_int8") and n.inputs[-1] for n in layers)
    x = correlated_inputs(256, 64, seed=9).numpy()
    expected = np.maximum(x @ w1.T, 0) @ w2.T

    def mean_error(graph):
        y = sparse_rt.InferenceSession(graph).run(None, {"x": x})[0]
        return float(np.abs((y - expected).mean(0)).max() / np.abs(expected).max())
    assert mean_error(calibrated) < 0.5 * mean_error(nearest)


def test_calibration_errors():
    model, _, _ = _model()
    with pytest.raises(ValueError, match="calibration: corrects int8 layers, so it needs quantize='int8'"):
        sparse_rt.convert(model, tune=False, calibration=[{"x": np.ones((2, 64), np.float32)}])
    with pytest.raises(ValueError, match="rounding='gptq': rounds against calibration inputs, so it needs calibration"):
        sparse_rt.convert(model, tune=False, quantize="int8", rounding="gptq")
    with pytest.raises(ValueError, match=r"rounding: expected one of \('nearest', 'gptq'\), got 'down'"):
        sparse_rt.convert(model, tune=False, quantize="int8", rounding="down")
    with pytest.raises(ValueError, match="calibration: expected a non-empty sequence of feeds"):
        sparse_rt.convert(model, tune=False, quantize="int8", calibration={"x": np.ones((2, 64), np.float32)})
    with pytest.raises(ValueError, match=r"calibration feed 1: the model does not run on it: unknown input\(s\) \[.z.\]"):
        sparse_rt.convert(model, tune=False, quantize="int8",
                          calibration=[{"x": np.ones((2, 64), np.float32)}, {"z": np.ones((2, 64), np.float32)}])
