"""Ray Serve deployment of sparse_rt models: the routes of `python -m sparse_rt serve`, on N replicas.

    import ray
    from ray import serve
    from sparse_rt.serve.ray import deployment

    ray.init()
    serve.run(deployment({"mlp": "mlp.onnx"}, num_replicas=2), route_prefix="/")
    # or: python -m sparse_rt serve mlp.onnx --ray --replicas 2

Each replica loads the models from their files and serves the same ModelServer app
as the standalone server (Open Inference Protocol v2 routes, JSON errors, /metrics of
that replica), with Ray Serve's `@serve.batch` as the dynamic batcher: concurrent
requests reaching a replica are collected until `max_batch` rows or `max_delay_ms`,
grouped by batch key (same inputs, dtypes and dims after the first), each group run
as one merged call off the event loop and split back; a request that cannot be merged
(or has more rows than max_batch) runs alone. If a merged run fails, its requests run
alone, so a bad request fails only itself. `autoscaling` ({"min_replicas": .., "max_replicas":
.., ...}, Ray Serve's autoscaling_config) replaces the fixed `num_replicas`. A reload
(POST /v2/repository/models/{name}/load) reaches the one replica that takes it; to
reload every replica, run the deployment again (`serve.run`), which rolls them.
Needs the `ray` extra: pip install "sparse_rt[ray]".
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import ray
from ray import serve

from sparse_rt.serve.app import ModelServer, ServeConfig
from sparse_rt.serve.batching import BatchObserver, EngineClosedError, batch_key, is_batchable, rows_of, split_rows

DEFAULT_MAX_ONGOING = 256
"""Requests one replica holds at once (Ray Serve's max_ongoing_requests): enough for full batches."""


@dataclass
class _Item:
    feeds: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    key: Hashable
    rows: int


class ServeBatchEngine:
    """Runs one session for a replica's ModelServer, batching with `@serve.batch`.

    Built like BatchingEngine (session, max_batch, max_delay_ms, workers, on_batch) and
    offering what ModelServer uses of it: `infer`, `output_names`, `queue_depth`, `close`.
    `workers` is unused: a replica runs one merged call at a time; more replicas run more.
    """

    def __init__(self, session: Any, max_batch: int = 32, max_delay_ms: float = 2.0, workers: int = 1,
                 on_batch: BatchObserver | None = None):
        self.session = session
        self.max_batch = max_batch
        self.input_names = [arg.name for arg in session.get_inputs()]
        self.output_names = [arg.name for arg in session.get_outputs()]
        self.batching = max_batch > 1 and max_delay_ms > 0 and is_batchable(session)
        self._on_batch = on_batch
        self._pending = 0
        self._closed = False
        self._batched = serve.batch(
            max_batch_size=max_batch, batch_wait_timeout_s=max_delay_ms / 1000.0,
            batch_size_fn=lambda items: sum(item.rows for item in items),
        )(self._run_batch)

    @property
    def queue_depth(self) -> int:
        """Requests taken and not yet answered."""
        return self._pending

    def close(self, drain: bool = True) -> None:
        """Take no new requests (those already taken finish)."""
        self._closed = True

    async def infer(self, feeds: Mapping[str, Any], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """{output name: array} of one request (all outputs when output_names is None)."""
        if self._closed:
            raise EngineClosedError("the engine is closed and takes no new requests")
        wanted = tuple(self.output_names if output_names is None else output_names)
        unknown = [name for name in wanted if name not in self.output_names]
        if unknown:
            raise ValueError(f"unknown output(s) {unknown}; the model's outputs are {self.output_names}")
        arrays = {name: np.asarray(value) for name, value in feeds.items()}
        key, rows = batch_key(arrays, self.input_names) if self.batching else (None, 0)
        self._pending += 1
        try:
            if key is None or rows > self.max_batch:
                return await asyncio.to_thread(self._run_alone, arrays, wanted)
            outcome = await self._batched(_Item(arrays, wanted, key, rows))
        finally:
            self._pending -= 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _run_alone(self, feeds: dict[str, np.ndarray], wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
        results = self.session.run(list(wanted), feeds)
        self._record(rows_of(feeds), 1)
        return dict(zip(wanted, results))

    async def _run_batch(self, items: list[_Item]) -> list[dict[str, np.ndarray] | BaseException]:
        """One outcome per item, in order: its outputs, or the exception it raised."""
        groups: dict[Hashable, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(item.key, []).append(index)
        outcomes: list[Any] = [None] * len(items)
        for indices in groups.values():
            group = [items[i] for i in indices]
            for index, outcome in zip(indices, await asyncio.to_thread(self._run_group, group)):
                outcomes[index] = outcome
        return outcomes

    def _run_group(self, group: list[_Item]) -> list[dict[str, np.ndarray] | BaseException]:
        if len(group) > 1 and self.batching:
            merged = {name: np.concatenate([item.feeds[name] for item in group]) for name in self.input_names}
            try:
                results = self.session.run(None, merged)
            except Exception:
                results = None
            parts = None if results is None else split_rows(results, self.output_names, [item.rows for item in group])
            if parts is not None:
                self._record(sum(item.rows for item in group), len(group))
                return [{name: part[name] for name in item.output_names} for part, item in zip(parts, group)]
            if results is not None:  # outputs without a row per input row: the model cannot be merged
                self.batching = False
        outcomes: list[dict[str, np.ndarray] | BaseException] = []
        for item in group:
            try:
                outcomes.append(self._run_alone(item.feeds, item.output_names))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _record(self, rows: int, requests: int) -> None:
        if self._on_batch is not None:
            self._on_batch(rows, requests)


@serve.ingress()
class SparseRTReplica:
    """One replica: loads `models` ({name: ONNX path}) and serves them with a ModelServer."""

    def __init__(self, models: Mapping[str, str], config: ServeConfig, threads: int | None = None):
        from sparse_rt.runtime.session import InferenceSession

        loaders = {name: functools.partial(InferenceSession, path, threads=threads) for name, path in models.items()}
        sessions = {name: load() for name, load in loaders.items()}
        self.server = ModelServer(sessions, config, loaders, engine=ServeBatchEngine)
        self.server.ready = True

    def __serve_build_asgi_app__(self):
        return self.server.app


def deployment(
    models: Mapping[str, str | os.PathLike],
    *,
    num_replicas: int = 1,
    autoscaling: Mapping[str, Any] | None = None,
    config: ServeConfig = ServeConfig(),
    threads: int | None = None,
    num_cpus: float = 1.0,
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING,
    name: str = "sparse_rt",
):
    """The Ray Serve application serving `models` ({name: ONNX path}); pass it to `serve.run`.

    num_replicas: fixed replica count, or autoscaling: Ray Serve's autoscaling_config
    (min_replicas, max_replicas, target_ongoing_requests, ...). config: batching and
    limits as for the standalone server. threads: intra-op threads per replica.
    num_cpus: CPUs Ray reserves per replica.
    """
    if not models:
        raise ValueError("models: expected at least one {name: path}, got none")
    missing = [str(path) for path in models.values() if not Path(path).is_file()]
    if missing:
        raise ValueError(f"model files not found: {missing}")
    if autoscaling is None and (type(num_replicas) is not int or num_replicas < 1):
        raise ValueError(f"num_replicas: expected an integer >= 1, got {num_replicas!r}")
    options: dict[str, Any] = {
        "name": name,
        "ray_actor_options": {"num_cpus": num_cpus},
        "max_ongoing_requests": max_ongoing_requests,
    }
    if autoscaling is not None:
        options["autoscaling_config"] = dict(autoscaling)
    else:
        options["num_replicas"] = num_replicas
    paths = {model: str(Path(path).resolve()) for model, path in models.items()}
    return serve.deployment(SparseRTReplica, **options).bind(paths, config, threads)


def package_runtime_env() -> dict[str, Any]:
    """A runtime_env under which Ray's workers import this same sparse_rt (its parent on PYTHONPATH)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def serve_forever(
    models: Mapping[str, Path], config: ServeConfig, host: str, port: int, *, num_replicas: int,
    max_replicas: int | None = None, threads: int | None = None, address: str | None = None,
) -> int:
    """Start (or join, with `address`) a Ray cluster, serve `models` on host:port until SIGTERM/SIGINT,
    then shut Serve (and a cluster started here) down; returns the exit code."""
    autoscaling = None
    if max_replicas is not None:
        autoscaling = {"min_replicas": num_replicas, "max_replicas": max_replicas, "initial_replicas": num_replicas}
    app = deployment(models, num_replicas=num_replicas, autoscaling=autoscaling, config=config, threads=threads)
    ray.init(address=address, runtime_env=package_runtime_env(), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name="sparse_rt", route_prefix="/")
        replicas = f"{num_replicas}..{max_replicas} replicas" if max_replicas else f"{num_replicas} replica(s)"
        print(f"serving {sorted(models)} on http://{host}:{port} with Ray Serve, {replicas}", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
