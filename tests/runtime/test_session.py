"""InferenceSession: onnxruntime-style API, input validation, concurrency, errors."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.ir import ModelFormatError
from sparse_rt.runtime import UnsupportedOpError


def mlp_model(extra_nodes=(), opset=17) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 16)).astype(np.float32)
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture(scope="module")
def session():
    return sparse_rt.InferenceSession(mlp_model().SerializeToString())


def expected_output(x):
    model = mlp_model()
    w1, w2 = (numpy_helper.to_array(t) for t in model.graph.initializer)
    return np.maximum(x @ w1, 0) @ w2


def test_run_matches_numpy(session):
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    assert isinstance(y, np.ndarray) and y.shape == (5, 4)
    np.testing.assert_allclose(y, expected_output(x), rtol=1e-5, atol=1e-5)


def test_torch_in_torch_out(session):
    x = torch.randn(3, 8)
    (y,) = session.run(["y"], {"x": x})
    assert isinstance(y, torch.Tensor)
    np.testing.assert_allclose(y.numpy(), expected_output(x.numpy()), rtol=1e-5, atol=1e-5)


def test_inputs_and_outputs_describe_the_model(session):
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert (inp.name, inp.shape, inp.type) == ("x", ["batch", 8], "tensor(float)")
    assert (out.name, out.shape, out.type) == ("y", ["batch", 4], "tensor(float)")


def test_a_cpu_session_leaves_triton_unimported(tmp_path):
    """The Triton kernels register only where a session runs on their backend: importing
    triton costs a CPU process about 70 MiB."""
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), path)
    script = (
        "import sys, numpy as np, sparse_rt\n"
        f"graph = sparse_rt.convert({str(path)!r}, batch_sizes=(1, 4))\n"
        "session = sparse_rt.InferenceSession(graph)\n"
        "session.run(None, {'x': np.ones((4, 8), np.float32)})\n"
        "print('triton' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SPARSE_RT_BACKEND", "TRITON_INTERPRET")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_concurrent_runs_equal_sequential(session):
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((int(rng.integers(1, 9)), 8)).astype(np.float32) for _ in range(32)]
    sequential = [session.run(None, {"x": x})[0] for x in xs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(lambda x: session.run(None, {"x": x})[0], xs))
    for a, b in zip(concurrent, sequential):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "feed, error, message",
    [
        ({"x": np.zeros((2, 8), np.float64)}, TypeError, r"input 'x': expected float32 \[batch, 8\], got float64 \[2, 8\]"),
        ({"x": np.zeros((2, 8, 1), np.float32)}, ValueError, r"input 'x': expected rank 2"),
        ({"x": np.zeros((2, 7), np.float32)}, ValueError, r"input 'x': expected float32 \[batch, 8\], got float32 \[2, 7\]"),
        ({"z": np.zeros((2, 8), np.float32)}, ValueError, r"unknown input\(s\) \['z'\]"),
        ({}, ValueError, r"missing input\(s\) \['x'\]"),
        ("x", TypeError, r"input_feed: expected a dict"),
    ],
)
def test_bad_feeds_are_rejected_with_clear_errors(session, feed, error, message):
    with pytest.raises(error, match=message):
        session.run(None, feed)


def test_unknown_output_name(session):
    with pytest.raises(ValueError, match=r"unknown output 'nope'; the model's outputs are \['y'\]"):
        session.run(["nope"], {"x": np.zeros((1, 8), np.float32)})


def test_unsupported_ops_are_all_listed_at_conversion():
    extra = [
        helper.make_node("FancyOp", ["y"], ["f1"], name="fancy1", domain="com.example"),
        helper.make_node("OtherOp", ["f1"], ["f2"], name="other", domain="com.example"),
    ]
    model = mlp_model(extra)
    model.graph.output[0].name = "f2"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOpError) as info:
        sparse_rt.convert(model)
    text = str(info.value)
    assert "com.example::FancyOp (nodes: fancy1)" in text and "com.example::OtherOp (nodes: other)" in text


def test_user_registered_op_runs_without_editing_the_package():
    @sparse_rt.register_op("Scale", domain="com.example.session_test")
    def bind_scale(node, ctx):
        factor = float(node.attributes["factor"])
        return lambda x: x * factor

    extra = [helper.make_node("Scale", ["y"], ["s"], name="scale", domain="com.example.session_test", factor=3.0)]
    model = mlp_model(extra)
    model.graph.output[0].name = "s"
    model.opset_import.append(helper.make_opsetid("com.example.session_test", 1))
    x = np.ones((2, 8), np.float32)
    (s,) = sparse_rt.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(s, 3 * expected_output(x), rtol=1e-5)


@pytest.mark.parametrize("model", [42, object(), {"graph": None}])
def test_not_a_model_object(model):
    with pytest.raises(TypeError, match="model: expected a path, bytes"):
        sparse_rt.InferenceSession(model)


def test_garbage_bytes_and_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="model bytes: not a valid ONNX model"):
        sparse_rt.InferenceSession(b"\x08\x07garbage\xff\xff\xff")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        sparse_rt.InferenceSession(tmp_path / "missing.onnx")


def test_corrupted_saved_file_is_rejected(tmp_path):
    path = tmp_path / "model.onnx"
    sparse_rt.save(sparse_rt.convert(mlp_model(), tune=False), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with pytest.raises((ModelFormatError, ValueError)):
        sparse_rt.InferenceSession(path)


def test_invalid_model_is_rejected_by_the_checker():
    model = mlp_model()
    model.graph.node[0].input[1] = "undefined_weight"
    with pytest.raises(ModelFormatError, match="not valid ONNX"):
        sparse_rt.convert(model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when no GPU is present")
def test_cuda_device_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device is available"):
        sparse_rt.InferenceSession(mlp_model().SerializeToString(), device="cuda")


def test_unknown_device_kind_is_rejected():
    with pytest.raises(ValueError, match="expected 'cpu' or 'cuda"):
        sparse_rt.InferenceSession(mlp_model().SerializeToString(), device="meta")
