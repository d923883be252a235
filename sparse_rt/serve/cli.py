"""`python -m sparse_rt serve MODEL [MODEL ...]`: load models and serve them over HTTP with uvicorn.

With --ray the models are served by a Ray Serve deployment (`sparse_rt.serve.ray`) of
--replicas replicas (autoscaled up to --max-replicas), on the same routes.

Each model is served under its file stem (`models/mlp.onnx` -> `mlp`);
`POST /v2/repository/models/{name}/load` reads its file again. SIGTERM or
Ctrl-C stops accepting connections, lets in-flight requests finish (up to the
request timeout), runs the queued batches, then exits.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path
from typing import Sequence

from sparse_rt.serve.app import ServeConfig, create_app

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparse_rt serve",
        description="Serve models over the Open Inference Protocol v2 (KServe v2 REST) with dynamic batching.",
    )
    parser.add_argument("models", nargs="+", type=Path, metavar="MODEL", help="ONNX files (sparse_rt or plain ONNX)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--max-batch", type=int, default=32,
        help="most rows in one merged run; 1 disables batching (default: %(default)s)",
    )
    parser.add_argument(
        "--max-delay-ms", type=float, default=2.0,
        help="how long a request may wait for others to join its batch; 0 disables batching (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--workers", type=int, default=1, help="threads running each model (default: %(default)s)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="request body limit in MiB (default: %(default)s)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="per-request timeout (default: %(default)s)")
    parser.add_argument("--ray", action="store_true",
                        help="serve with Ray Serve (replicas, @serve.batch batching); needs the 'ray' extra")
    parser.add_argument("--replicas", type=int, default=1, help="--ray: replicas (default: %(default)s)")
    parser.add_argument("--max-replicas", type=int, default=None,
                        help="--ray: autoscale between --replicas and this many replicas")
    parser.add_argument("--ray-address", default=None, help="--ray: join this cluster (default: start a local one)")
    parser.add_argument("--context", type=int, default=1024,
                        help="positions (prompt + new tokens) a generated sequence may hold (default: %(default)s)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    return parser


def model_names(paths: Sequence[Path]) -> dict[str, Path]:
    """{file stem: path}; ValueError if a file is missing or two files share a stem."""
    names: dict[str, Path] = {}
    for path in paths:
        if not path.is_file():
            raise ValueError(f"model file {str(path)!r}: not found")
        if path.stem in names:
            raise ValueError(f"models {str(names[path.stem])!r} and {str(path)!r}: both would be served as {path.stem!r}")
        names[path.stem] = path
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (without the program name), load the models, serve until SIGTERM/SIGINT; returns the exit code."""
    import uvicorn

    from sparse_rt.runtime.session import InferenceSession

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        paths = model_names(args.models)
        config = ServeConfig(
            max_batch=args.max_batch, max_delay_ms=args.max_delay_ms, workers=args.workers,
            max_body_bytes=int(args.max_body_mb * (1 << 20)), timeout_s=args.timeout_s, context=args.context,
        )
        if args.replicas < 1 or (args.max_replicas is not None and args.max_replicas < args.replicas):
            raise ValueError(f"--replicas: expected >= 1 and <= --max-replicas, got {args.replicas} "
                             f"(--max-replicas {args.max_replicas})")
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.ray:
        try:
            from sparse_rt.serve.ray import serve_forever
        except ImportError as exc:
            parser.error(f"--ray needs Ray Serve (pip install 'sparse_rt[ray]'): {exc}")
        return serve_forever(paths, config, args.host, args.port, num_replicas=args.replicas,
                             max_replicas=args.max_replicas, threads=args.threads, address=args.ray_address)
    loaders = {name: functools.partial(InferenceSession, path, threads=args.threads) for name, path in paths.items()}
    sessions = {name: load() for name, load in loaders.items()}
    app = create_app(sessions, config, loaders)
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
        timeout_graceful_shutdown=int(args.timeout_s) + 5,
    ))
    print(f"serving {sorted(sessions)} on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    server.run()
    return 0 if server.started else 1
