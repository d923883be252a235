"""The HTTP server on loopback: tritonclient for the protocol, raw requests for every error."""

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from sparse_rt.serve.app import ServeConfig
from sparse_rt.serve.protocol import BINARY_HEADER
from tests.serve.helpers import custom_model, running_server, session_of

TIMEOUT_S = 0.5
MAX_BODY = 64 << 10


@pytest.fixture(scope="module")
def server(mlp_session):
    sessions = {
        "mlp": mlp_session,
        "slow": session_of(custom_model("Sleep", seconds=1.0)),
        "nan": session_of(custom_model("FailOnNan")),
    }
    config = ServeConfig(max_batch=8, max_delay_ms=2, timeout_s=TIMEOUT_S, max_body_bytes=MAX_BODY)
    with running_server(sessions, config) as (url, app):
        yield url


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=f"http://{server}", timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def client(server):
    client = triton.InferenceServerClient(server)
    yield client
    client.close()


def metric(http, name, **labels):
    """The value of one sample on /metrics (0 if absent)."""
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert not client.is_model_ready("nope")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert client.get_model_metadata("mlp") == {
        "name": "mlp",
        "versions": ["1"],
        "platform": "sparse_rt",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "h", "datatype": "FP32", "shape": [-1, 16]},
        ],
    }


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_infer_matches_the_session(client, mlp_session, binary_in, binary_out):
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    request = triton.InferInput("x", list(x.shape), "FP32")
    request.set_data_from_numpy(x, binary_data=binary_in)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary_out) for name in ("h", "y")]
    result = client.infer("mlp", [request], outputs=outputs, request_id="req-7")
    expected_y, expected_h = mlp_session.run(None, {"x": x})
    assert result.get_response()["id"] == "req-7"
    assert [o["name"] for o in result.get_response()["outputs"]] == ["h", "y"]
    np.testing.assert_allclose(result.as_numpy("y"), expected_y, rtol=1e-6, atol=1e-6 * np.abs(expected_y).max())
    np.testing.assert_allclose(result.as_numpy("h"), expected_h, rtol=1e-6, atol=1e-6 * np.abs(expected_h).max())


def test_infer_without_outputs_returns_all_of_them(client, mlp_session):
    x = np.ones((2, 8), np.float32)
    request = triton.InferInput("x", [2, 8], "FP32")
    request.set_data_from_numpy(x)
    result = client.infer("mlp", [request], model_version="1")
    for name, expected in zip(("y", "h"), mlp_session.run(None, {"x": x})):
        np.testing.assert_allclose(result.as_numpy(name), expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_concurrent_requests_are_merged(mlp_session):
    inputs = [np.full((1, 8), i / 8, np.float32) for i in range(8)]
    # batches close when 8 rows are queued (or after 2 s)
    config = ServeConfig(max_batch=8, max_delay_ms=2000)
    with running_server({"mlp": mlp_session}, config) as (url, app):
        client = triton.InferenceServerClient(url, concurrency=8)
        pending = []
        for x in inputs:
            request = triton.InferInput("x", [1, 8], "FP32")
            request.set_data_from_numpy(x, binary_data=True)
            pending.append(client.async_infer("mlp", [request], outputs=[triton.InferRequestedOutput("y")]))
        results = [p.get_result().as_numpy("y") for p in pending]
        client.close()
        stats = app.state.server.engine("mlp").stats()
        with httpx.Client(base_url=f"http://{url}") as http:
            runs = metric(http, "sparse_rt_batch_requests_count", model="mlp")
            merged = metric(http, "sparse_rt_batch_requests_sum", model="mlp")
    assert stats.requests == merged == 8
    assert stats.runs == runs < 8
    for x, y in zip(inputs, results):
        np.testing.assert_allclose(y, mlp_session.run(["y"], {"x": x})[0], rtol=1e-6, atol=1e-6)


def post(http, path, body, headers=None):
    return http.post(path, content=body, headers=headers or {})


def infer_body(name="x", shape=(2, 8), datatype="FP32", data=None, **fields):
    data = [0.5] * int(np.prod(shape)) if data is None else data
    return json.dumps({"inputs": [{"name": name, "shape": list(shape), "datatype": datatype, "data": data}], **fields})


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/v2/models/nope/infer", infer_body(), 404, "unknown model 'nope'; served models: ['mlp', 'nan', 'slow']"),
        ("/v2/models/mlp/versions/2/infer", infer_body(), 404, "model 'mlp': unknown version '2'"),
        ("/v2/models/mlp/infer", "{'inputs': ", 400, "malformed JSON in the request body"),
        ("/v2/models/mlp/infer", infer_body(name="z"), 400, "model 'mlp': unknown input(s) ['z']"),
        ("/v2/models/mlp/infer", infer_body(datatype="INT64", data=[1] * 16), 400,
         "input 'x': expected datatype FP32, got INT64"),
        ("/v2/models/mlp/infer", infer_body(shape=(2, 7)), 400, "input 'x': expected shape [-1, 8], got [2, 7]"),
        ("/v2/models/mlp/infer", infer_body(data=[0.5] * 15), 400, "input 'x': shape [2, 8] needs 16 values, 'data' has 15"),
        ("/v2/models/mlp/infer", infer_body(outputs=[{"name": "z"}]), 400, "model 'mlp': unknown output(s) ['z']"),
        ("/v2/models/mlp/infer", infer_body(shape=(1, 8), data=[0.0] * 8, parameters={"binary_data_output": 1}), 400,
         "expected 'binary_data_output' to be true or false, got 1"),
        ("/v2/models/mlp/infer", infer_body(shape=(2000, 8)), 413, f"exceeds the limit of {MAX_BODY} bytes"),
        ("/v2/models/slow/infer", infer_body(shape=(1, 4)), 504,
         f"model 'slow': inference did not finish within {TIMEOUT_S:g} s"),
        ("/v2/models/slow/infer", infer_body(shape=(1, 4), parameters={"timeout": 100_000}), 504,
         "model 'slow': inference did not finish within 0.1 s"),
    ],
    ids=[
        "unknown-model", "unknown-version", "malformed-json", "wrong-name", "wrong-datatype", "wrong-shape",
        "data-length", "unknown-output", "bad-parameter", "body-too-large", "timeout", "request-timeout",
    ],
)
def test_bad_requests_get_a_json_error(http, path, body, status, message):
    model = path.split("/")[3]
    before = metric(http, "sparse_rt_requests_total", model=model, status=str(status))
    response = post(http, path, body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]
    if model != "nope":
        assert metric(http, "sparse_rt_requests_total", model=model, status=str(status)) == before + 1


def test_binary_size_mismatch_is_rejected(http):
    header = json.dumps({"inputs": [
        {"name": "x", "shape": [1, 8], "datatype": "FP32", "parameters": {"binary_data_size": 28}},
    ]}).encode()
    response = post(http, "/v2/models/mlp/infer", header + bytes(28), {BINARY_HEADER: str(len(header))})
    assert response.status_code == 400
    assert response.json() == {"error": "input 'x': binary_data_size is 28 bytes, but shape [1, 8] of FP32 needs 32"}


def test_body_limit_holds_for_chunked_bodies(http):
    chunks = (b"0" * 8192 for _ in range(16))
    response = http.post("/v2/models/mlp/infer", content=chunks)
    assert response.status_code == 413
    assert response.json() == {"error": f"request body exceeds the limit of {MAX_BODY} bytes"}


def test_compressed_bodies_are_refused(http):
    response = post(http, "/v2/models/mlp/infer", infer_body(), {"content-encoding": "gzip"})
    assert response.status_code == 415
    assert response.json() == {"error": "Content-Encoding: expected identity (uncompressed), got 'gzip'"}


def test_internal_errors_answer_500_and_the_server_keeps_serving(http):
    x = np.ones((1, 4), np.float32)
    x[0, 2] = np.nan
    header = json.dumps({"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
    ]}).encode()
    response = post(http, "/v2/models/nan/infer", header + x.tobytes(), {BINARY_HEADER: str(len(header))})
    assert response.status_code == 500
    assert "input holds NaN" in response.json()["error"]
    response = post(http, "/v2/models/nan/infer", infer_body(shape=(1, 4), data=[1, 2, 3, 4]))
    assert response.status_code == 200
    assert response.json()["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [2, 4, 6, 8]}]


def test_unknown_routes_and_methods_get_json_errors(http):
    response = http.get("/v2/nothing")
    assert response.status_code == 404 and "error" in response.json()
    response = http.get("/v2/models/mlp/infer")
    assert response.status_code == 405 and "error" in response.json()
    response = http.get("/v2/models/nope/ready")
    assert response.status_code == 404
    assert response.json() == {"error": "unknown model 'nope'; served models: ['mlp', 'nan', 'slow']"}


def test_metrics_report_requests_latency_batches_and_queue(http):
    requests_before = metric(http, "sparse_rt_requests_total", model="mlp", status="200")
    latency_before = metric(http, "sparse_rt_request_latency_seconds_count", model="mlp")
    runs_before = metric(http, "sparse_rt_batch_size_count", model="mlp")
    rows_before = metric(http, "sparse_rt_batch_size_sum", model="mlp")
    for _ in range(3):
        assert post(http, "/v2/models/mlp/infer", infer_body(shape=(2, 8))).status_code == 200
    assert metric(http, "sparse_rt_requests_total", model="mlp", status="200") == requests_before + 3
    assert metric(http, "sparse_rt_request_latency_seconds_count", model="mlp") == latency_before + 3
    assert metric(http, "sparse_rt_batch_size_count", model="mlp") == runs_before + 3
    assert metric(http, "sparse_rt_batch_size_sum", model="mlp") == rows_before + 6
    assert metric(http, "sparse_rt_queue_depth", model="mlp") == 0
    response = http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert 'sparse_rt_queue_depth{model="slow"}' in response.text
