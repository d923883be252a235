"""The generate extension on loopback: /generate and /generate_stream (server-sent events)."""

import json
import re

import httpx
import numpy as np
import pytest

import sparse_rt
from sparse_rt.decoders import build_decoder, export_decoder
from sparse_rt.runtime.generate import Generator
from sparse_rt.serve.app import ServeConfig
from tests.serve.helpers import running_server

CONTEXT = 32


@pytest.fixture(scope="module")
def decoder_graph(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve_decoder") / "llama.onnx"
    export_decoder(build_decoder("llama"), path)
    return sparse_rt.convert(path, tune=False)


@pytest.fixture(scope="module")
def http(decoder_graph, mlp_session):
    sessions = {"llama": sparse_rt.InferenceSession(decoder_graph), "mlp": mlp_session}
    with running_server(sessions, ServeConfig(context=CONTEXT, timeout_s=60)) as (url, app):
        with httpx.Client(base_url=f"http://{url}", timeout=60) as client:
            yield client


def _events(response):
    return [json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: ")]


def test_generate_and_stream_give_the_generators_tokens(http, decoder_graph):
    prompt = [[5, 6, 7, 8], [9, 10, 11, 12]]
    expected = Generator(decoder_graph, CONTEXT).generate(np.array(prompt), 6)[:, 4:]
    body = {"input_ids": prompt, "parameters": {"max_tokens": 6}}
    answer = http.post("/v2/models/llama/generate", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"model_name": "llama", "model_version": "1", "output_ids": expected.tolist()}
    streamed = http.post("/v2/models/llama/versions/1/generate_stream", json=body)
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = _events(streamed)
    assert [e["index"] for e in events] == list(range(7))
    assert np.array_equal(np.array([e["output_ids"] for e in events[:-1]]).T, expected)
    assert events[-1]["finish_reason"] == "length"
    sampled = [http.post("/v2/models/llama/generate", json={
        "input_ids": [1, 2, 3], "parameters": {"max_tokens": 5, "do_sample": True, "seed": 3, "top_k": 20}}).json()
        for _ in range(2)]
    assert sampled[0] == sampled[1] and len(sampled[0]["output_ids"][0]) == 5


@pytest.mark.parametrize("path, body, status, message", [
    ("llama/generate", {"input_ids": []}, 400, "non-empty list"),
    ("llama/generate", {"prompt": "hi"}, 400, "expected 'input_ids'"),
    ("llama/generate", {"input_ids": [1.5]}, 400, "integer token ids"),
    ("llama/generate", {"input_ids": list(range(30)), "parameters": {"max_tokens": 5}}, 400, "exceeds the context of 32"),
    ("llama/generate", {"input_ids": [1, 999]}, 400, "token ids in"),
    ("llama/generate_stream", {"input_ids": [1], "parameters": {"temperature": 0, "do_sample": True}}, 400,
     "temperature"),
    ("llama/generate", {"input_ids": [1], "parameters": {"max_tokens": 0}}, 400, "max_tokens"),
    ("mlp/generate", {"input_ids": [1]}, 400, "decoders served: \\['llama'\\]"),
    ("nope/generate_stream", {"input_ids": [1]}, 404, "unknown model"),
])
def test_bad_generate_requests_get_clear_errors(http, path, body, status, message):
    answer = http.post(f"/v2/models/{path}", json=body)
    assert answer.status_code == status
    assert re.search(message, answer.json()["error"]), answer.json()
