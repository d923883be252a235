"""A few seconds of the fault run of benchmarks/serve_load.py against an in-process server:
good and bad requests, hang-ups, oversized bodies and reloads; nothing may be lost or wrong."""

import asyncio
import functools

import onnx

import sparse_rt
from benchmarks.serve_load import bad_payloads, fault_load, make_payloads, reloader
from sparse_rt.serve.app import ServeConfig
from tests.serve.helpers import mlp_model, running_server

MAX_BODY = 256 << 10


def load_file(path):
    return sparse_rt.InferenceSession(sparse_rt.convert(str(path), lower=False))


def test_mixed_faults_lose_no_request(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), path)
    payloads = make_payloads(path, rows=2, dims={}, encoding="binary")
    config = ServeConfig(max_batch=8, max_delay_ms=2, max_body_bytes=MAX_BODY)
    loaders = {"mlp": functools.partial(load_file, path)}
    with running_server({"mlp": load_file(path)}, config, loaders=loaders) as (url, app):
        port = int(url.rsplit(":", 1)[1])

        async def drive():
            loop = asyncio.get_running_loop()
            load = fault_load(port, "mlp", payloads, bad_payloads(payloads[0]), clients=6, warmup=0.2, duration=3.0,
                              max_body=MAX_BODY)
            return await asyncio.gather(load, reloader(port, "mlp", every=0.7, stop=loop.time() + 3.2))

        outcome, (reloads, failed_reloads) = asyncio.run(drive())
        server = app.state.server
    assert outcome["error_samples"] == []
    assert outcome["lost"] == outcome["errors"] == outcome["wrong"] == 0
    assert outcome["served"] == outcome["requests"] == outcome["good"] + outcome["bad"] + outcome["oversized"]
    assert min(outcome["good"], outcome["bad"], outcome["oversized"], outcome["hangups"]) > 0
    assert reloads >= 3 and failed_reloads == 0
    assert server.models["mlp"].engine.queue_depth == 0
