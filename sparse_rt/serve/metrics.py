"""Prometheus metrics of one server, in a registry of its own (so several apps can live in one process).

    sparse_rt_requests_total{model, status}           inference requests by HTTP status
    sparse_rt_request_latency_seconds{model}          request latency, body read to response built
    sparse_rt_batch_size{model}                       rows per model run
    sparse_rt_batch_requests{model}                   requests merged into one model run
    sparse_rt_queue_depth{model}                      requests waiting for a worker
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sparse_rt.serve.batching import BatchingEngine, BatchObserver

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN_MODEL = ""
"""The model label of requests naming no served model (keeps label values bounded)."""


class ServeMetrics:
    """The server's metrics; `render()` gives the /metrics body and its content type."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sparse_rt_requests", "Inference requests by model and HTTP status.", ["model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sparse_rt_request_latency_seconds", "Inference request latency in seconds.", ["model"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "sparse_rt_batch_size", "Rows per model run.", ["model"], buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.batch_requests = Histogram(
            "sparse_rt_batch_requests", "Requests merged into one model run.", ["model"],
            buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.queue_depth = Gauge(
            "sparse_rt_queue_depth", "Requests waiting for a worker.", ["model"], registry=self.registry,
        )

    def batch_observer(self, model: str) -> BatchObserver:
        """The engine callback recording (rows, requests) of each run of `model`."""
        size = self.batch_size.labels(model)
        requests = self.batch_requests.labels(model)

        def observe(rows: int, merged: int) -> None:
            size.observe(rows)
            requests.observe(merged)

        return observe

    def track_queue(self, model: str, engine: BatchingEngine) -> None:
        """Report the engine's queue depth as the gauge of `model`, read at scrape time."""
        self.queue_depth.labels(model).set_function(lambda: engine.queue_depth)

    def observe_request(self, model: str, status: int, seconds: float) -> None:
        self.requests.labels(model, str(status)).inc()
        self.latency.labels(model).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
