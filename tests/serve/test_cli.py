"""The serve command: argument checks, and a real server process that drains on SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import onnx
import pytest

from sparse_rt.serve.cli import main, model_names
from tests.serve.helpers import custom_model, free_port, mlp_model

REPO = Path(__file__).resolve().parents[2]


def test_models_are_named_by_file_stem(tmp_path):
    paths = [tmp_path / "mlp.onnx", tmp_path / "other" / "slow.sparse.onnx"]
    paths[1].parent.mkdir()
    for path in paths:
        path.write_bytes(b"")
    assert model_names(paths) == {"mlp": paths[0], "slow.sparse": paths[1]}
    clash = tmp_path / "other" / "mlp.onnx"
    clash.write_bytes(b"")
    with pytest.raises(ValueError, match="both would be served as 'mlp'"):
        model_names([paths[0], clash])
    with pytest.raises(ValueError, match="model file .*missing.onnx.: not found"):
        model_names([tmp_path / "missing.onnx"])


def test_bad_arguments_exit_with_usage(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "missing.onnx")])
    assert info.value.code == 2
    assert "missing.onnx': not found" in capsys.readouterr().err
    model = tmp_path / "mlp.onnx"
    onnx.save(mlp_model(), model)
    with pytest.raises(SystemExit):
        main([str(model), "--max-batch", "x"])
    with pytest.raises(SystemExit):
        main([str(model), "--timeout-s", "0"])
    assert "timeout_s: expected a positive number, got 0.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(model), "--max-batch", "0"])
    assert "max_batch: expected an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(model), "--ray", "--replicas", "3", "--max-replicas", "2"])
    assert "--replicas: expected >= 1 and <= --max-replicas, got 3 (--max-replicas 2)" in capsys.readouterr().err


def start_server(tmp_path, *args):
    """A server subprocess (test ops registered) on a free port; returns (process, base url)."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    code = "import sys, tests.serve.ops; from sparse_rt.serve.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args, "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {process.stdout.read()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not become ready in 60 s")


def _wait_for_queue_depth(url: str, model: str, depth: int, timeout_s: float = 10.0) -> None:
    line = f'sparse_rt_queue_depth{{model="{model}"}} {float(depth)}'
    deadline = time.monotonic() + timeout_s
    while line not in httpx.get(f"{url}/metrics").text:
        if time.monotonic() > deadline:
            raise AssertionError(f"{model}: queue depth never reached {depth} in {timeout_s} s")
        time.sleep(0.01)


def test_sigterm_finishes_in_flight_requests_then_exits(tmp_path):
    slow, mlp = tmp_path / "slow.onnx", tmp_path / "mlp.onnx"
    onnx.save(custom_model("Sleep", seconds=1.0), slow)
    onnx.save(mlp_model(), mlp)
    process, url = start_server(tmp_path, str(slow), str(mlp), "--max-batch", "4", "--max-delay-ms", "1")
    try:
        assert httpx.get(f"{url}/v2/models/mlp").json()["name"] == "mlp"
        responses = {}

        def send(index):
            body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [index] * 4}]})
            responses[index] = httpx.post(f"{url}/v2/models/slow/infer", content=body, timeout=30)

        threads = [threading.Thread(target=send, args=(index,)) for index in (1, 2)]
        threads[0].start()
        time.sleep(0.3)  # request 1 is running in the model (for a second)
        threads[1].start()
        _wait_for_queue_depth(url, "slow", 1)  # request 2 waits in the queue
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        # recent uvicorn re-raises the signal once it has shut down, so the status may say SIGTERM
        assert process.wait(30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
    for index in (1, 2):
        assert responses[index].status_code == 200
        assert responses[index].json()["outputs"][0]["data"] == [index] * 4
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/v2/health/live", timeout=1)
    output = process.stdout.read()
    assert "serving ['mlp', 'slow'] on http://127.0.0.1:" in output




def test_the_container_entry_point_and_kserve_arguments_parse():
    """The Dockerfile's ENTRYPOINT and CMD, and the InferenceService's args, are valid serve arguments."""
    from sparse_rt.serve.cli import build_parser

    lines = (REPO / "Dockerfile").read_text().splitlines()
    entry = json.loads(next(line for line in lines if line.startswith("ENTRYPOINT")).split(None, 1)[1])
    command = json.loads(next(line for line in lines if line.startswith("CMD")).split(None, 1)[1])
    assert entry[:4] == ["python", "-m", "sparse_rt", "serve"]
    args = build_parser().parse_args(entry[4:] + command)
    assert (args.host, args.port, [str(m) for m in args.models]) == ("0.0.0.0", 8080, ["/mnt/models/model.onnx"])
    manifest = (REPO / "deploy" / "kserve" / "inferenceservice.yaml").read_text().splitlines()
    start = manifest.index("        args:") + 1
    kserve_args = []
    for line in manifest[start:]:
        if not line.startswith("          - "):
            break
        kserve_args.append(line.removeprefix("          - "))
    args = build_parser().parse_args(entry[4:] + kserve_args)
    assert [str(m) for m in args.models] == ["/mnt/models/mlp.onnx"] and args.port == 8080
    assert (args.max_batch, args.max_delay_ms, args.threads) == (32, 2.0, 2)
