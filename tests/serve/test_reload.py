"""Reloading a model while serving: POST /v2/repository/models/{name}/load."""

import concurrent.futures
import functools
import json

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import sparse_rt
from sparse_rt.serve.app import ServeConfig
from tests.serve.helpers import custom_model, mlp_model, running_server, session_of


def scaled_mlp(scale: float) -> onnx.ModelProto:
    """The test MLP with its last bias multiplied by `scale` (so two versions answer differently)."""
    model = mlp_model()
    for tensor in model.graph.initializer:
        if tensor.name == "b2":
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * scale, "b2"))
    return model


def load_file(path):
    return sparse_rt.InferenceSession(sparse_rt.convert(str(path), lower=False))


def infer(http, model, x):
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            "outputs": [{"name": "y"}]}
    return http.post(f"/v2/models/{model}/infer", content=json.dumps(body))


def y_of(response):
    output = response.json()["outputs"][0]
    return np.array(output["data"], np.float32).reshape(output["shape"])


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(scaled_mlp(1.0), path)
    return path


def test_reload_serves_the_new_file(model_file):
    x = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
    before = session_of(scaled_mlp(1.0)).run(["y"], {"x": x})[0]
    after = session_of(scaled_mlp(-3.0)).run(["y"], {"x": x})[0]
    loaders = {"mlp": functools.partial(load_file, model_file)}
    with running_server({"mlp": load_file(model_file)}, loaders=loaders) as (url, app):
        with httpx.Client(base_url=f"http://{url}", timeout=10) as http:
            np.testing.assert_allclose(y_of(infer(http, "mlp", x)), before, rtol=1e-5, atol=1e-5)
            onnx.save(scaled_mlp(-3.0), model_file)
            response = http.post("/v2/repository/models/mlp/load")
            assert response.status_code == 200 and response.json() == {}
            np.testing.assert_allclose(y_of(infer(http, "mlp", x)), after, rtol=1e-5, atol=1e-5)


def test_failed_reload_keeps_the_old_model(model_file):
    x = np.ones((1, 8), np.float32)
    expected = session_of(scaled_mlp(1.0)).run(["y"], {"x": x})[0]
    loaders = {"mlp": functools.partial(load_file, model_file)}
    with running_server({"mlp": load_file(model_file), "other": session_of(mlp_model())}, loaders=loaders) as (url, _):
        with httpx.Client(base_url=f"http://{url}", timeout=10) as http:
            model_file.write_bytes(model_file.read_bytes()[:100])  # truncated
            response = http.post("/v2/repository/models/mlp/load")
            assert response.status_code == 400
            assert "reload failed, the previous version keeps serving" in response.json()["error"]
            assert "not a valid ONNX model" in response.json()["error"]
            np.testing.assert_allclose(y_of(infer(http, "mlp", x)), expected, rtol=1e-5, atol=1e-5)
            response = http.post("/v2/repository/models/other/load")
            assert response.status_code == 400
            assert response.json() == {"error": "model 'other' was not loaded from a file, so it cannot be reloaded"}
            response = http.post("/v2/repository/models/nope/load")
            assert response.status_code == 404
            assert response.json() == {"error": "unknown model 'nope'; served models: ['mlp', 'other']"}


def test_requests_in_flight_during_a_reload_are_all_answered(tmp_path):
    path = tmp_path / "slow.onnx"
    onnx.save(custom_model("Sleep", seconds=0.05), path)
    loaders = {"slow": functools.partial(load_file, path)}
    config = ServeConfig(max_batch=4, max_delay_ms=1)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    with running_server({"slow": load_file(path)}, config, loaders=loaders) as (url, app):
        with httpx.Client(base_url=f"http://{url}", timeout=30, limits=httpx.Limits(max_connections=32)) as http:
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                pending = [pool.submit(infer, http, "slow", x) for _ in range(48)]
                reloads = [pool.submit(http.post, "/v2/repository/models/slow/load") for _ in range(3)]
                responses = [p.result() for p in pending]
                assert [r.result().status_code for r in reloads] == [200, 200, 200]
        stats = app.state.server.engine("slow").stats()
    assert [r.status_code for r in responses] == [200] * 48
    for response in responses:
        np.testing.assert_array_equal(y_of(response), x)
    assert stats.requests < 48  # the last engine took only part of them


def test_loaders_must_name_served_models():
    from sparse_rt.serve.app import create_app

    with pytest.raises(ValueError, match=r"loaders: expected loaders of served models \['mlp'\], got ones for \['x'\]"):
        create_app({"mlp": session_of(mlp_model())}, loaders={"x": lambda: None})


def test_a_request_that_found_the_replaced_model_runs_on_its_replacement(model_file):
    """A request reads its body after finding its model; a reload in between must not fail it."""
    import asyncio

    from sparse_rt.serve.app import ModelServer
    from sparse_rt.serve.batching import EngineClosedError

    x = np.ones((2, 8), np.float32)
    expected = session_of(scaled_mlp(1.0)).run(["y"], {"x": x})[0]
    server = ModelServer({"mlp": load_file(model_file)}, loaders={"mlp": functools.partial(load_file, model_file)})
    found = server.models["mlp"]

    async def reload_then_submit():
        await server.reload("mlp")
        with pytest.raises(EngineClosedError):
            await found.engine.infer({"x": x}, ["y"])
        return await server._submit(found, {"x": x}, ["y"])

    try:
        result = asyncio.run(reload_then_submit())
    finally:
        server.close()
    assert server.models["mlp"] is not found
    np.testing.assert_allclose(result["y"], expected, rtol=1e-5, atol=1e-5)
