"""Dynamic batching: merge concurrent requests along dim 0, run the model once, split the results.

    engine = BatchingEngine(session, max_batch=32, max_delay_ms=2)
    outputs = engine.infer_sync({"x": x})          # {output name: array}
    outputs = await engine.infer({"x": x})         # from a coroutine
    engine.close()                                 # runs what is queued, then stops

Requests are queued and taken by worker threads (never the caller's event loop).
A worker takes the oldest request and merges every queued request with the same
batch key (same input dtypes and same dims after the first) until the batch
holds `max_batch` rows or `max_delay_ms` has passed since the oldest arrived;
other requests wait for a later batch. Requests that cannot be merged run alone.

A model is batched only if every input has a dynamic leading dim (and no
output a static one); it must treat the rows of dim 0 independently. Batching
is off when max_batch is 1 or max_delay_ms is 0. If a merged run fails, each of
its requests is run alone, so a bad request fails only itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

BatchObserver = Callable[[int, int], None]
"""Called after every model run with (rows, requests) of that run."""


class EngineClosedError(RuntimeError):
    """The engine was closed: it takes no new requests."""


@dataclass(frozen=True)
class BatchStats:
    """Counts since the engine started: model runs, requests answered, rows run."""

    runs: int
    requests: int
    rows: int


@dataclass
class _Request:
    feeds: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    key: Hashable | None  # None: runs alone
    rows: int
    arrival: float
    future: Future


class BatchingEngine:
    """Serve one InferenceSession-like model (run / get_inputs / get_outputs) to concurrent callers.

    max_batch: most rows in one merged run (>= 1). max_delay_ms: how long the oldest
    queued request may wait for others to join its batch (>= 0). workers: threads
    running the model (>= 1). on_batch: called with (rows, requests) after each run.
    """

    def __init__(
        self,
        session: Any,
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
        workers: int = 1,
        on_batch: BatchObserver | None = None,
    ):
        check_settings(max_batch, max_delay_ms, workers)
        self.session = session
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.input_names = [arg.name for arg in session.get_inputs()]
        self.output_names = [arg.name for arg in session.get_outputs()]
        self.batching = max_batch > 1 and max_delay_ms > 0 and is_batchable(session)
        self._on_batch = on_batch
        self._queue: deque[_Request] = deque()
        self._condition = threading.Condition()
        self._collecting = threading.Lock()
        self._closed = False
        self._runs = self._requests = self._rows = 0
        self._workers = [
            threading.Thread(target=self._work, name=f"sparse_rt-batcher-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._workers:
            thread.start()

    # -- callers -----------------------------------------------------------------

    def submit(self, feeds: Mapping[str, Any], output_names: Sequence[str] | None = None) -> Future:
        """Queue a request; the future resolves to {output name: array} (all outputs when None)."""
        if not isinstance(feeds, Mapping):
            raise TypeError(f"feeds: expected a dict {{input name: array}}, got {type(feeds).__name__}")
        wanted = self._check_output_names(output_names)
        arrays = {name: np.asarray(value) for name, value in feeds.items()}
        key, rows = self._batch_key(arrays)
        request = _Request(arrays, wanted, key, rows, time.monotonic(), Future())
        with self._condition:
            if self._closed:
                raise EngineClosedError("the batching engine is closed and takes no new requests")
            self._queue.append(request)
            self._condition.notify()
        return request.future

    async def infer(self, feeds: Mapping[str, Any], output_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run one request from a coroutine; cancelling it drops the request if it has not started."""
        return await asyncio.wrap_future(self.submit(feeds, output_names))

    def infer_sync(
        self,
        feeds: Mapping[str, Any],
        output_names: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run one request, blocking; raises TimeoutError after `timeout` seconds (then drops it if not started)."""
        future = self.submit(feeds, output_names)
        try:
            return future.result(timeout)
        except FutureTimeoutError:
            future.cancel()
            raise

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a worker."""
        with self._condition:
            return len(self._queue)

    def stats(self) -> BatchStats:
        with self._condition:
            return BatchStats(self._runs, self._requests, self._rows)

    def close(self, drain: bool = True) -> None:
        """Stop taking requests; run the queued ones (drain) or fail them with EngineClosedError; join the workers."""
        with self._condition:
            self._closed = True
            if not drain:
                while self._queue:
                    request = self._queue.popleft()
                    if request.future.set_running_or_notify_cancel():
                        request.future.set_exception(EngineClosedError("the batching engine was closed"))
            self._condition.notify_all()
        for thread in self._workers:
            if thread is not threading.current_thread():
                thread.join()

    def __enter__(self) -> BatchingEngine:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _check_output_names(self, output_names: Sequence[str] | None) -> tuple[str, ...]:
        if output_names is None:
            return tuple(self.output_names)
        if isinstance(output_names, str):
            raise TypeError(f"output_names: expected a list of names or None, got the string {output_names!r}")
        unknown = [name for name in output_names if name not in self.output_names]
        if unknown:
            raise ValueError(f"unknown output(s) {unknown}; the model's outputs are {self.output_names}")
        return tuple(output_names)

    def _batch_key(self, arrays: dict[str, np.ndarray]) -> tuple[Hashable | None, int]:
        return batch_key(arrays, self.input_names) if self.batching else (None, 0)

    # -- workers -----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if len(batch) == 1:
                self._run_alone(batch[0])
            else:
                self._run_merged(batch)

    def _next_batch(self) -> list[_Request] | None:
        """The next batch to run, or None once closed with an empty queue."""
        with self._collecting, self._condition:
            first = self._take_first()
            if first is None:
                return None
            batch = [first]
            if first.key is None or not self.batching:
                return batch
            rows = first.rows
            deadline = first.arrival + self.max_delay_s
            while True:
                rows += self._take_compatible(first.key, rows, batch)
                remaining = deadline - time.monotonic()
                if rows >= self.max_batch or remaining <= 0 or self._closed:
                    return batch
                self._condition.wait(remaining)

    def _take_first(self) -> _Request | None:
        while True:
            while not self._queue:
                if self._closed:
                    return None
                self._condition.wait()
            request = self._queue.popleft()
            if request.future.set_running_or_notify_cancel():
                return request

    def _take_compatible(self, key: Hashable, rows: int, batch: list[_Request]) -> int:
        """Move queued requests with `key` into `batch` (oldest first) while they fit; return the rows added."""
        added = 0
        kept: deque[_Request] = deque()
        while self._queue:
            request = self._queue.popleft()
            if request.key == key and rows + added + request.rows <= self.max_batch:
                if request.future.set_running_or_notify_cancel():
                    batch.append(request)
                    added += request.rows
            else:
                kept.append(request)
        self._queue = kept
        return added

    def _run_alone(self, request: _Request) -> None:
        try:
            results = self.session.run(list(request.output_names), request.feeds)
        except Exception as exc:
            self._record(rows_of(request.feeds), 1)
            request.future.set_exception(exc)
        else:
            self._record(rows_of(request.feeds), 1)
            request.future.set_result(dict(zip(request.output_names, results)))

    def _run_merged(self, batch: list[_Request]) -> None:
        rows = [request.rows for request in batch]
        merged = {name: np.concatenate([request.feeds[name] for request in batch]) for name in self.input_names}
        try:
            results = self.session.run(None, merged)
        except Exception:
            for request in batch:
                self._run_alone(request)
            return
        parts = split_rows(results, self.output_names, rows)
        if parts is None:
            self.batching = False
            for request in batch:
                self._run_alone(request)
            return
        self._record(sum(rows), len(batch))
        for part, request in zip(parts, batch):
            request.future.set_result({name: part[name] for name in request.output_names})

    def _record(self, rows: int, requests: int) -> None:
        """Count a run before its futures resolve, so a caller holding a result sees it in stats()."""
        with self._condition:
            self._runs += 1
            self._requests += requests
            self._rows += rows
        if self._on_batch is not None:
            self._on_batch(rows, requests)


def batch_key(arrays: Mapping[str, np.ndarray], input_names: Sequence[str]) -> tuple[Hashable | None, int]:
    """(key, rows) of a request: requests with equal keys can be concatenated along dim 0
    (the same inputs, dtypes and dims after the first); key None when it cannot be merged."""
    if sorted(arrays) != sorted(input_names):
        return None, 0
    shapes = [arrays[name].shape for name in input_names]
    if any(len(shape) == 0 for shape in shapes) or len({shape[0] for shape in shapes}) != 1:
        return None, 0
    return tuple((name, arrays[name].dtype.str, arrays[name].shape[1:]) for name in input_names), shapes[0][0]


def split_rows(results: Sequence[np.ndarray], output_names: Sequence[str], rows: Sequence[int]) -> list[dict] | None:
    """The outputs of a merged run split back into {output name: array} per request of `rows` rows;
    None (with a warning) if an output does not have one row per input row."""
    total = sum(rows)
    bad = [name for name, result in zip(output_names, results) if result.ndim == 0 or result.shape[0] != total]
    if bad:
        logger.warning(
            "outputs %s do not have one row per input row (%d) in a merged run; batching is now off for this model",
            bad, total,
        )
        return None
    splits = np.cumsum(rows)[:-1]
    parts = {name: np.split(result, splits) for name, result in zip(output_names, results)}
    return [{name: parts[name][index] for name in output_names} for index in range(len(rows))]


def check_settings(max_batch: int, max_delay_ms: float, workers: int) -> None:
    """ValueError naming the first setting out of range."""
    if type(max_batch) is not int or max_batch < 1:
        raise ValueError(f"max_batch: expected an integer >= 1, got {max_batch!r}")
    if not max_delay_ms >= 0:
        raise ValueError(f"max_delay_ms: expected a number >= 0, got {max_delay_ms!r}")
    if type(workers) is not int or workers < 1:
        raise ValueError(f"workers: expected an integer >= 1, got {workers!r}")


def is_batchable(session: Any) -> bool:
    """Whether every input has a dynamic (named or unknown) leading dim and no output a static one.

    Outputs of unknown shape pass here; a merged run checks that they have a row per input row.
    """
    inputs, outputs = session.get_inputs(), session.get_outputs()
    dynamic_inputs = all(arg.shape and not isinstance(arg.shape[0], int) for arg in inputs)
    return bool(inputs) and dynamic_inputs and not any(arg.shape and isinstance(arg.shape[0], int) for arg in outputs)


def rows_of(feeds: Mapping[str, np.ndarray]) -> int:
    """Rows of a request run alone, for the statistics: dim 0 of its first input (1 for scalars)."""
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1
