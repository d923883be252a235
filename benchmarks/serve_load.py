"""Load test of the HTTP server on loopback: N concurrent clients for T seconds, batching on vs off,
and a fault run that mixes in bad requests, hang-ups, oversized bodies and reloads.

    python benchmarks/serve_load.py                      # 64 clients x 30 s, the default model
    python benchmarks/serve_load.py --model m.onnx --clients 16 --duration 10 --json out.json
    python benchmarks/serve_load.py --modes faults --duration 60 --json faults.json

Default model: a seeded zoo MLP (256-1024-1024-10, GELU) pruned to 90% by
magnitude and converted by sparse_rt: small, so the server's own costs show. For each mode a server process is
started (`python -m sparse_rt serve`), warmed up, loaded by `--clients` keep-alive
connections each sending one request after another for `--duration` seconds,
then stopped with SIGTERM (`ray`: `serve --ray --replicas N`, a local Ray cluster
with Ray Serve's batching; its rows per run are one replica's, whole run). Every answer is checked against the session run in
this process: the table reports errors (non-200 answers), lost requests (no
answer: connection dropped or client timeout), wrong results, throughput, p50
and p99 latency, and the mean rows per model run read from /metrics.

The `faults` mode (batching on, body limit `--max-body-mb`) has every client draw
each request: a good one (checked as above), a bad one (malformed JSON, wrong
datatype, shape or input name, unknown model, binary size mismatch: each must get
its 4xx), an oversized body (must get 413), or a hang-up (the client sends half its
body, or the whole request, and closes without reading). Every `--reload-every`
seconds the model is reloaded from its file (POST /v2/repository/models/{name}/load).
It reports requests served (answered as expected), errors (answered otherwise),
lost (no answer; must be 0), wrong results, p50/p99 of the good requests, and the
server's resident memory after the warm-up and at the end (must stay within 10%).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REQUEST_TIMEOUT_S = 30.0
POOL = 16  # distinct request payloads, cycled by the clients


@dataclass
class ModeResult:
    mode: str
    max_batch: int
    max_delay_ms: float
    requests: int
    errors: int
    lost: int
    wrong: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    rows_per_run: float


@dataclass
class Payload:
    """A request body; `expected` are the outputs of a good one, `status` the answer a bad one must get."""

    body: bytes
    header_length: int
    expected: dict[str, np.ndarray]
    status: int = 200
    model: str | None = None  # another model name to send it to (default: the served one)


@dataclass
class FaultResult:
    """The fault run. requests: those that expect an answer (good, bad, oversized); served: answered with
    the expected status (and, for good ones, the right outputs; an oversized body may also be refused by a
    reset that overtakes its 413); errors: answered with another status;
    lost: no answer (dropped connection or client timeout); wrong: 200 with wrong outputs; hang-ups:
    requests the client abandoned; p50/p99 over the good requests; RSS of the server process in MiB."""

    clients: int
    duration_s: float
    requests: int
    served: int
    errors: int
    lost: int
    wrong: int
    good: int
    bad: int
    oversized: int
    hangups: int
    reloads: int
    reload_errors: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    rss_start_mib: float
    rss_end_mib: float
    rss_peak_mib: float
    error_samples: list[str]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX file to serve (default: a 90%% sparse MLP built here)")
    parser.add_argument("--widths", default="256,1024,1024,10", help="layer widths of the default MLP (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent connections (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per mode (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per mode (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request (default: %(default)s)")
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                        help="size of a named dynamic dim other than the batch dim (default 16)")
    parser.add_argument("--max-batch", type=int, default=32, help="server --max-batch when batching is on")
    parser.add_argument("--max-delay-ms", type=float, default=2.0, help="server --max-delay-ms when batching is on")
    parser.add_argument("--modes", nargs="+", choices=("on", "off", "ray", "faults"), default=["on", "off"],
                        help="on/off: the server with batching on/off; ray: serve --ray (batching on); faults: see above")
    parser.add_argument("--replicas", type=int, default=2, help="ray: replicas (default: %(default)s)")
    parser.add_argument("--replica-threads", type=int, default=1, help="ray: threads per replica (default: %(default)s)")
    parser.add_argument("--reload-every", type=float, default=10.0, help="faults: seconds between reloads")
    parser.add_argument("--max-body-mb", type=float, default=1.0, help="faults: server body limit in MiB")
    parser.add_argument("--threads", type=int, help="server --threads")
    parser.add_argument("--encoding", choices=("binary", "json"), default="binary", help="tensor encoding")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.warmup < 0 or args.rows < 1:
        parser.error("--clients and --rows must be >= 1, --duration > 0 and --warmup >= 0")
    return args


def default_model(workdir: Path, widths: tuple[int, ...]) -> Path:
    """A seeded zoo MLP of `widths`, pruned to 90% by magnitude, converted (heuristic kernel choice) and saved."""
    import onnx
    import torch

    import sparse_rt
    from sparse_rt import zoo
    from sparse_rt.bench import prune
    from sparse_rt.converters.torch import export_module

    module = zoo.seeded(zoo.MLP(widths))
    prune(module, 0.9, "unstructured")
    proto, _ = export_module(module, (torch.randn(1, widths[0]),))
    path = workdir / "mlp.onnx"
    onnx.save(proto, path)
    sparse_rt.save(sparse_rt.convert(str(path), tune=False), path)
    return path


def make_payloads(model: Path, rows: int, dims: dict[str, int], encoding: str) -> list[Payload]:
    """POOL request bodies with the outputs this process's session gives for them."""
    import sparse_rt
    from sparse_rt.serve.protocol import DATATYPES, datatype_of_onnx_type

    session = sparse_rt.InferenceSession(model)
    rng = np.random.default_rng(0)
    payloads = []
    for _ in range(POOL):
        feeds = {}
        for arg in session.get_inputs():
            shape = [rows] + [d if isinstance(d, int) else dims.get(d, 16) for d in arg.shape[1:]]
            dtype = DATATYPES[datatype_of_onnx_type(arg.type)]
            if dtype.kind == "f":
                feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
            else:
                feeds[arg.name] = rng.integers(0, 2, shape).astype(dtype)
        expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        payloads.append(encode(feeds, encoding, expected))
    return payloads


def encode(feeds: dict[str, np.ndarray], encoding: str, expected: dict[str, np.ndarray]) -> Payload:
    from sparse_rt.serve.protocol import datatype_of_dtype

    binary = encoding == "binary"
    inputs = []
    for name, array in feeds.items():
        tensor = {"name": name, "shape": list(array.shape), "datatype": datatype_of_dtype(array.dtype)}
        if binary:
            tensor["parameters"] = {"binary_data_size": array.nbytes}
        else:
            tensor["data"] = array.ravel().tolist()
        inputs.append(tensor)
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": binary}}).encode()
    body = header + b"".join(a.tobytes() for a in feeds.values()) if binary else header
    return Payload(body, len(header) if binary else 0, expected)


def decode(body: bytes, header_length: int | None) -> dict[str, np.ndarray]:
    from sparse_rt.serve.protocol import DATATYPES

    header = json.loads(body[:header_length] if header_length else body)
    outputs, offset = {}, header_length or 0
    for tensor in header["outputs"]:
        dtype = DATATYPES[tensor["datatype"]]
        if "data" in tensor:
            outputs[tensor["name"]] = np.array(tensor["data"], dtype).reshape(tensor["shape"])
        else:
            size = tensor["parameters"]["binary_data_size"]
            outputs[tensor["name"]] = np.frombuffer(body[offset:offset + size], dtype).reshape(tensor["shape"])
            offset += size
    return outputs


def matches(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> bool:
    """Same names and shapes, values within 1e-3 of the reference's scale (batched runs sum in another order)."""
    if outputs.keys() != expected.keys():
        return False
    for name, reference in expected.items():
        if outputs[name].shape != reference.shape:
            return False
        scale = max(float(np.abs(reference).max(initial=0.0)), 1e-12)
        if float(np.abs(outputs[name].astype(np.float64) - reference).max(initial=0.0)) > 1e-3 * scale:
            return False
    return True


class Connection:
    """One keep-alive HTTP/1.1 connection sending POSTs one at a time."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: Payload) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        extra = f"Inference-Header-Content-Length: {payload.header_length}\r\n" if payload.header_length else ""
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(payload.body)}\r\n{extra}\r\n"
        self.writer.write(head.encode() + payload.body)
        await self.writer.drain()
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection") == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def load(port: int, model: str, payloads: list[Payload], clients: int, warmup: float, duration: float) -> dict:
    """Drive the server; counts and latencies of the requests sent during the measured window."""
    path = f"/v2/models/{model}/infer"
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    stop = start + duration
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0, "lost": 0, "wrong": 0}

    async def client(index: int) -> None:
        connection = Connection(port)
        sent = 0
        while loop.time() < stop:
            payload = payloads[(index + sent) % len(payloads)]
            sent += 1
            began = loop.time()
            measured = began >= start
            try:
                status, headers, body = await asyncio.wait_for(connection.post(path, payload), REQUEST_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                connection.close()
                if measured:
                    counts["requests"] += 1
                    counts["lost"] += 1
                continue
            if not measured:
                continue
            counts["requests"] += 1
            if status != 200:
                counts["errors"] += 1
                continue
            header_length = headers.get("inference-header-content-length")
            if not matches(decode(body, int(header_length) if header_length else None), payload.expected):
                counts["wrong"] += 1
            latencies.append(loop.time() - began)
        connection.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return {**counts, "latencies": latencies, "window": max(loop.time(), stop) - start}


FAULT_MIX = (("good", 0.75), ("bad", 0.12), ("oversized", 0.04), ("hangup_body", 0.05), ("hangup_answer", 0.04))
"""How often each kind of request is drawn in the fault run."""


def bad_payloads(good: Payload) -> list[Payload]:
    """Requests the server must refuse, each with the status it must answer (built from a good binary one)."""
    header = json.loads(good.body[:good.header_length]) if good.header_length else json.loads(good.body)
    tensor = header["inputs"][0]

    def variant(status: int, model: str | None = None, **changes) -> Payload:
        changed = {**tensor, **changes}
        count = int(np.prod(changed["shape"]))
        body = {"inputs": [{k: v for k, v in changed.items() if k != "parameters"} | {"data": [0] * count}]}
        return Payload(json.dumps(body).encode(), 0, {}, status, model)

    rank = len(tensor["shape"])
    mismatch = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 3}}]}).encode()
    return [
        Payload(b'{"inputs": [{"name": ', 0, {}, 400),  # malformed JSON
        variant(400, datatype="INT8" if tensor["datatype"] != "INT8" else "FP64"),
        variant(400, shape=[1] * (rank + 1)),
        variant(400, name=tensor["name"] + "_unknown"),
        variant(404, model="no_such_model"),
        Payload(mismatch + bytes(3), len(mismatch), {}, 400),  # binary size does not match the shape
    ]


async def fault_load(port: int, model: str, payloads: list[Payload], bad: list[Payload], clients: int,
                     warmup: float, duration: float, max_body: int, seed: int = 0) -> dict:
    """Drive the server with the FAULT_MIX; counts and good-request latencies of the measured window."""
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    stop = start + duration
    latencies: list[float] = []
    counts = dict.fromkeys(("requests", "served", "errors", "lost", "wrong", "good", "bad", "oversized", "hangups"), 0)
    samples: list[str] = []
    kinds, weights = zip(*FAULT_MIX)

    def note(problem: str) -> None:
        if len(samples) < 10:
            samples.append(problem)

    async def client(index: int) -> None:
        rng = np.random.default_rng([seed, index])
        connection = Connection(port)
        sent = 0
        while loop.time() < stop:
            kind = kinds[rng.choice(len(kinds), p=weights)]
            payload = payloads[(index + sent) % len(payloads)]
            sent += 1
            measured = loop.time() >= start
            if kind.startswith("hangup"):
                await hang_up(port, f"/v2/models/{model}/infer", payload, whole=kind == "hangup_answer")
                counts["hangups"] += measured
                continue
            if kind == "bad":
                payload = bad[int(rng.integers(len(bad)))]
            began = loop.time()
            try:
                if kind == "oversized":
                    status, headers, body = await asyncio.wait_for(
                        oversized(port, f"/v2/models/{model}/infer", max_body, chunked=bool(sent % 2)),
                        REQUEST_TIMEOUT_S)
                    expected_status = 413
                else:
                    path = f"/v2/models/{payload.model or model}/infer"
                    status, headers, body = await asyncio.wait_for(connection.post(path, payload), REQUEST_TIMEOUT_S)
                    expected_status = payload.status
            except (ConnectionResetError, BrokenPipeError) if kind == "oversized" else ():
                # the server refused the body and closed while it was still coming: the reset (or,
                # on a write after it, EPIPE) can overtake the 413 (RFC 9112, 9.6), and the
                # request was refused, not lost
                status, headers, body, expected_status = 413, {}, b"", 413
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                connection.close()
                if measured:
                    counts["requests"] += 1
                    counts["lost"] += 1
                    note(f"{kind}: no answer ({type(exc).__name__}: {exc})")
                continue
            if not measured:
                continue
            counts["requests"] += 1
            counts[kind] += 1
            if status != expected_status:
                counts["errors"] += 1
                note(f"{kind}: expected {expected_status}, got {status} {body[:200]!r}")
                continue
            if kind == "good":
                header_length = headers.get("inference-header-content-length")
                if not matches(decode(body, int(header_length) if header_length else None), payload.expected):
                    counts["wrong"] += 1
                    continue
                latencies.append(loop.time() - began)
            counts["served"] += 1
        connection.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return {**counts, "latencies": latencies, "window": max(loop.time(), stop) - start, "error_samples": samples}


async def hang_up(port: int, path: str, payload: Payload, whole: bool) -> None:
    """Send half the request body (or all of it) on a new connection, then close without reading."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    extra = f"Inference-Header-Content-Length: {payload.header_length}\r\n" if payload.header_length else ""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(payload.body)}\r\n{extra}\r\n"
    body = payload.body if whole else payload.body[: len(payload.body) // 2]
    try:
        writer.write(head.encode() + body)
        await writer.drain()
    except OSError:
        pass
    writer.close()


async def oversized(port: int, path: str, max_body: int, chunked: bool) -> tuple[int, dict[str, str], bytes]:
    """POST a body over `max_body` bytes on a new connection: with its Content-Length declared (the server
    may refuse on the header alone), or chunked (the server must count); returns the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = b"0" * (64 << 10)

    async def send() -> None:
        try:
            if chunked:
                writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
                for _ in range(max_body // len(chunk) + 2):
                    writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    await writer.drain()
            else:
                size = max_body + len(chunk)
                writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n\r\n".encode())
                writer.write(chunk)  # the rest is never sent: the answer comes on the header
                await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server answered and closed while the body was still going out

    # the answer is read while the body goes out, as a browser does: a server that refuses
    # mid-body answers and closes, and a client still writing would meet the reset first
    sender = asyncio.create_task(send())
    try:
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        return int(lines[0].split()[1]), headers, body
    finally:
        sender.cancel()
        writer.close()


async def reloader(port: int, model: str, every: float, stop: float) -> tuple[int, int]:
    """POST the model's load route every `every` seconds until loop time `stop`; (reloads, failed reloads)."""
    loop = asyncio.get_running_loop()
    done = failed = 0
    while loop.time() + every < stop:
        await asyncio.sleep(every)
        status, _ = await asyncio.to_thread(post_empty, port, f"/v2/repository/models/{model}/load")
        done += status == 200
        failed += status != 200
    return done, failed


def post_empty(port: int, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def run_faults(model: Path, payloads: list[Payload], args: argparse.Namespace) -> FaultResult:
    port = free_port()
    max_body = int(args.max_body_mb * (1 << 20))
    process = start_server(model, port, args.max_batch, args.max_delay_ms, args.threads,
                           ["--max-body-mb", str(args.max_body_mb)])
    try:
        name = model.stem
        rss: list[float] = []

        async def measure() -> tuple[dict, tuple[int, int]]:
            loop = asyncio.get_running_loop()
            task = asyncio.create_task(fault_load(port, name, payloads, bad_payloads(payloads[0]), args.clients,
                                                  args.warmup, args.duration, max_body))
            await asyncio.sleep(args.warmup)
            reloads = asyncio.create_task(reloader(port, name, args.reload_every, loop.time() + args.duration))
            while not task.done():
                rss.append(rss_mib(process.pid))
                await asyncio.wait([task], timeout=1.0)
            return task.result(), await reloads

        outcome, (reloads, reload_errors) = asyncio.run(measure())
        rss.append(rss_mib(process.pid))
    finally:
        stop_server(process)
    latencies = np.array(outcome["latencies"]) * 1e3
    completed = outcome["served"] + outcome["errors"] + outcome["wrong"]
    return FaultResult(
        clients=args.clients, duration_s=args.duration,
        **{key: outcome[key] for key in ("requests", "served", "errors", "lost", "wrong", "good", "bad", "oversized",
                                         "hangups", "error_samples")},
        reloads=reloads, reload_errors=reload_errors,
        throughput_rps=completed / outcome["window"],
        p50_ms=float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        p99_ms=float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
        rss_start_mib=rss[0], rss_end_mib=rss[-1], rss_peak_mib=max(rss),
    )


def format_faults(result: FaultResult) -> str:
    r = result
    return "\n".join([
        "| requests | served | errors | lost | wrong | good | bad | oversized | hang-ups | reloads | req/s "
        "| p50 ms | p99 ms | RSS start MiB | RSS end MiB | RSS peak MiB |",
        "|" + "---:|" * 16,
        f"| {r.requests} | {r.served} | {r.errors} | {r.lost} | {r.wrong} | {r.good} | {r.bad} | {r.oversized} "
        f"| {r.hangups} | {r.reloads} ({r.reload_errors} failed) | {r.throughput_rps:.0f} | {r.p50_ms:.2f} "
        f"| {r.p99_ms:.2f} | {r.rss_start_mib:.1f} | {r.rss_end_mib:.1f} | {r.rss_peak_mib:.1f} |",
    ])


def fault_failures(result: FaultResult) -> list[str]:
    """What the fault run must not show: lost requests, unexpected answers, wrong outputs, failed reloads,
    resident memory at the end more than 10% above the start."""
    problems = []
    for field in ("lost", "errors", "wrong", "reload_errors"):
        if getattr(result, field):
            problems.append(f"{field}: {getattr(result, field)}")
    if result.rss_end_mib > 1.1 * result.rss_start_mib:
        problems.append(f"resident memory grew from {result.rss_start_mib:.1f} to {result.rss_end_mib:.1f} MiB")
    return problems


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except OSError:
        return 0, b""


def batch_totals(port: int, model: str) -> tuple[float, float]:
    """(runs, rows) of the model so far, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(get(port, "/metrics")[1].decode()):
        for sample in family.samples:
            if sample.name in ("sparse_rt_batch_size_count", "sparse_rt_batch_size_sum") and sample.labels["model"] == model:
                values[sample.name] = sample.value
    return values.get("sparse_rt_batch_size_count", 0.0), values.get("sparse_rt_batch_size_sum", 0.0)


def start_server(model: Path, port: int, max_batch: int, max_delay_ms: float, threads: int | None,
                 extra: list[str] | tuple[str, ...] = ()) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "sparse_rt", "serve", str(model), "--port", str(port),
        "--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms), "--log-level", "warning", *extra,
    ]
    if threads is not None:
        command += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(command, cwd=REPO, env=env)
    deadline = time.monotonic() + 120
    while get(port, "/v2/health/ready")[0] != 200:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server for {model} did not become ready (exit code {process.poll()})")
        time.sleep(0.2)
    return process


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(90)  # a Ray server shuts its cluster down first
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


MODE_NAMES = {"on": "batching", "off": "no batching", "ray": "Ray Serve, {replicas} replicas"}


def run_mode(mode: str, model: Path, payloads: list[Payload], args: argparse.Namespace) -> ModeResult:
    max_batch, max_delay_ms = (args.max_batch, args.max_delay_ms) if mode != "off" else (1, 0.0)
    port = free_port()
    extra = ["--ray", "--replicas", str(args.replicas)] if mode == "ray" else []
    threads = args.replica_threads if mode == "ray" else args.threads
    process = start_server(model, port, max_batch, max_delay_ms, threads, extra)
    try:
        name = model.stem
        runs_before = rows_before = 0.0

        async def measure() -> dict:
            nonlocal runs_before, rows_before
            task = asyncio.create_task(load(port, name, payloads, args.clients, args.warmup, args.duration))
            await asyncio.sleep(args.warmup)
            runs_before, rows_before = await asyncio.to_thread(batch_totals, port, name)
            return await task

        outcome = asyncio.run(measure())
        runs, rows = batch_totals(port, name)
        if mode == "ray":  # /metrics is one replica's, maybe not the one read before: its whole run
            runs_before = rows_before = 0.0
    finally:
        stop_server(process)
    latencies = np.array(outcome["latencies"]) * 1e3
    completed = len(latencies)
    return ModeResult(
        mode=MODE_NAMES[mode].format(replicas=args.replicas),
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        requests=outcome["requests"],
        errors=outcome["errors"],
        lost=outcome["lost"],
        wrong=outcome["wrong"],
        throughput_rps=completed / outcome["window"],
        p50_ms=float(np.percentile(latencies, 50)) if completed else float("nan"),
        p99_ms=float(np.percentile(latencies, 99)) if completed else float("nan"),
        rows_per_run=(rows - rows_before) / max(runs - runs_before, 1.0),
    )


def format_table(results: list[ModeResult]) -> str:
    lines = [
        "| mode | max batch | delay ms | requests | errors | lost | wrong | req/s | p50 ms | p99 ms | rows/run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.mode} | {r.max_batch} | {r.max_delay_ms:g} | {r.requests} | {r.errors} | {r.lost} | {r.wrong} | "
            f"{r.throughput_rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.rows_per_run:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dims = {}
    for item in args.dim:
        name, _, size = item.partition("=")
        if not size.isdigit():
            raise SystemExit(f"--dim: expected NAME=SIZE, got {item!r}")
        dims[name] = int(size)
    with tempfile.TemporaryDirectory() as workdir:
        model = args.model or default_model(Path(workdir), tuple(int(w) for w in args.widths.split(",")))
        payloads = make_payloads(model, args.rows, dims, args.encoding)
        print(
            f"model {model.name}: {args.clients} clients x {args.duration:g} s (+{args.warmup:g} s warm-up), "
            f"{args.rows} row(s)/request, {args.encoding} tensors, loopback",
            flush=True,
        )
        results = [run_mode(mode, model, payloads, args) for mode in args.modes if mode != "faults"]
        faults = run_faults(model, payloads, args) if "faults" in args.modes else None
    if results:
        print(format_table(results))
    problems = []
    if faults is not None:
        print(format_faults(faults))
        problems = fault_failures(faults)
        for line in problems + faults.error_samples:
            print("fault run:", line)
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model or f"mlp {args.widths} 90% sparse"), "clients": args.clients,
                                         "duration_s": args.duration, "rows": args.rows, "encoding": args.encoding,
                                         "results": [asdict(r) for r in results],
                                         "faults": asdict(faults) if faults else None}, indent=2))
    failed = sum(r.errors + r.lost + r.wrong for r in results) + len(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
