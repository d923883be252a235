"""The Ray Serve deployment on a local cluster (2 CPUs, 2 replicas), driven by tritonclient.

Skipped without Ray (pip install -e ".[ray]")."""

import concurrent.futures
import json
import time

import httpx
import numpy as np
import onnx
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
triton = pytest.importorskip("tritonclient.http")

from sparse_rt.serve.app import ServeConfig  # noqa: E402
from sparse_rt.serve.ray import deployment, package_runtime_env  # noqa: E402
from tests.serve.helpers import free_port, mlp_model, session_of  # noqa: E402


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(url, {name: session}): the test MLP on 2 replicas behind Ray Serve's proxy."""
    workdir = tmp_path_factory.mktemp("ray")
    models = {"mlp": mlp_model()}
    for name, model in models.items():
        onnx.save(model, workdir / f"{name}.onnx")
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=package_runtime_env())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = deployment({name: workdir / f"{name}.onnx" for name in models}, num_replicas=2,
                         config=ServeConfig(max_batch=8, max_delay_ms=5), threads=1)
        serve.run(app, name="sparse_rt", route_prefix="/")
        url = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while httpx.get(f"http://{url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the Ray Serve deployment did not become ready"
            time.sleep(0.2)
        yield url, {name: session_of(model) for name, model in models.items()}
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_are_running(cluster):
    status = serve.status().applications["sparse_rt"].deployments["sparse_rt"]
    assert status.status == "HEALTHY"
    assert status.replica_states == {"RUNNING": 2}


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_gets_the_sessions_outputs(cluster, binary):
    url, sessions = cluster
    client = triton.InferenceServerClient(url)
    assert client.is_server_ready() and client.is_model_ready("mlp")
    assert client.get_model_metadata("mlp")["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
    x = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    request = triton.InferInput("x", [3, 8], "FP32")
    request.set_data_from_numpy(x, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("y", "h")]
    result = client.infer("mlp", [request], outputs=outputs)
    client.close()
    expected_y, expected_h = sessions["mlp"].run(None, {"x": x})
    np.testing.assert_allclose(result.as_numpy("y"), expected_y, rtol=1e-6, atol=1e-6 * np.abs(expected_y).max())
    np.testing.assert_allclose(result.as_numpy("h"), expected_h, rtol=1e-6, atol=1e-6 * np.abs(expected_h).max())


def test_concurrent_requests_are_batched_and_answered_right(cluster):
    url, sessions = cluster
    inputs = [np.random.default_rng(i).standard_normal((1 + i % 3, 8)).astype(np.float32) for i in range(48)]

    def infer(x):
        client = triton.InferenceServerClient(url)
        request = triton.InferInput("x", list(x.shape), "FP32")
        request.set_data_from_numpy(x, binary_data=True)
        try:
            return client.infer("mlp", [request], outputs=[triton.InferRequestedOutput("y")]).as_numpy("y")
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(infer, inputs))
    for x, y in zip(inputs, results):
        np.testing.assert_allclose(y, sessions["mlp"].run(["y"], {"x": x})[0], rtol=1e-5, atol=1e-5)
    merged = 0.0
    for _ in range(10):  # /metrics is one replica's: sample both
        samples = dict(line.rsplit(" ", 1) for line in httpx.get(f"http://{url}/metrics").text.splitlines()
                       if line.startswith("sparse_rt_batch_requests_"))
        runs = float(samples.get('sparse_rt_batch_requests_count{model="mlp"}', 0.0))
        merged = max(merged, float(samples.get('sparse_rt_batch_requests_sum{model="mlp"}', 0.0)) / max(runs, 1.0))
    assert merged > 1.0, "no replica merged requests into one run"


def test_bad_requests_get_the_servers_errors(cluster):
    url, _ = cluster
    with httpx.Client(base_url=f"http://{url}", timeout=30) as http:
        body = {"inputs": [{"name": "x", "shape": [2, 7], "datatype": "FP32", "data": [0.5] * 14}]}
        response = http.post("/v2/models/mlp/infer", content=json.dumps(body))
        assert response.status_code == 400
        assert response.json() == {"error": "input 'x': expected shape [-1, 8], got [2, 7]"}
        response = http.post("/v2/models/nope/infer", content=json.dumps(body))
        assert response.status_code == 404
        assert response.json() == {"error": "unknown model 'nope'; served models: ['mlp']"}
        response = http.post("/v2/models/mlp/infer", content=b"{'inputs")
        assert response.status_code == 400 and "malformed JSON" in response.json()["error"]


def test_deployment_checks_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="model files not found"):
        deployment({"mlp": tmp_path / "missing.onnx"})
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), path)
    with pytest.raises(ValueError, match="num_replicas: expected an integer >= 1, got 0"):
        deployment({"mlp": path}, num_replicas=0)
