"""Models and a loopback server for the serving tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import onnx
import uvicorn
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.serve.app import ServeConfig, create_app
from tests.serve.ops import DOMAIN


def mlp_model() -> onnx.ModelProto:
    """x [batch, 8] -> h = relu(x @ w1 + b1) [batch, 16], y = h @ w2 + b2 [batch, 4]."""
    rng = np.random.default_rng(0)
    arrays = {
        "w1": rng.standard_normal((8, 16)).astype(np.float32),
        "b1": rng.standard_normal(16).astype(np.float32),
        "w2": rng.standard_normal((16, 4)).astype(np.float32),
        "b2": rng.standard_normal(4).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["xw1"]),
        helper.make_node("Add", ["xw1", "b1"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["hw2"]),
        helper.make_node("Add", ["hw2", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 16]),
        ],
        initializer=[numpy_helper.from_array(array, name) for name, array in arrays.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def custom_model(op_type: str, shape=("batch", 4), **attributes) -> onnx.ModelProto:
    """x -> y through one test.serve op; x and y are float32 of `shape`."""
    graph = helper.make_graph(
        [helper.make_node(op_type, ["x"], ["y"], domain=DOMAIN, **attributes)], op_type.lower(),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])


def session_of(model: onnx.ModelProto) -> sparse_rt.InferenceSession:
    """A session on the model as imported, linear layers not lowered: these tests are about serving."""
    return sparse_rt.InferenceSession(sparse_rt.convert(model, lower=False))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(sessions, config: ServeConfig = ServeConfig(), loaders=None):
    """Serve `sessions` with uvicorn in a background thread; yields (base url, app)."""
    app = create_app(sessions, config, loaders)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{server.config.port}", app
    finally:
        server.should_exit = True
        thread.join(10)
