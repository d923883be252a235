"""BatchingEngine: merging, splitting, limits, fallbacks, timeouts, drain on close."""

import asyncio
import threading
import time

import numpy as np
import pytest

from sparse_rt.serve import BatchingEngine, EngineClosedError
from sparse_rt.serve.batching import is_batchable
from tests.serve.helpers import custom_model, session_of


def requests(rows_per_request, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((rows, 8)).astype(np.float32) for rows in rows_per_request]


class Recorder:
    """on_batch observer keeping (rows, requests) of every run."""

    def __init__(self):
        self.runs = []
        self.lock = threading.Lock()

    def __call__(self, rows, merged):
        with self.lock:
            self.runs.append((rows, merged))


def test_concurrent_requests_are_merged_and_split_back(mlp_session):
    inputs = requests([1, 3, 2, 1, 5, 1, 2, 1])
    recorder = Recorder()
    # max_batch equals the total, so the batch closes as soon as every request is queued
    with BatchingEngine(mlp_session, max_batch=16, max_delay_ms=5000, on_batch=recorder) as engine:
        futures = [engine.submit({"x": x}) for x in inputs]
        results = [f.result(10) for f in futures]
        stats = engine.stats()
    assert recorder.runs == [(16, 8)]
    assert (stats.runs, stats.requests, stats.rows) == (1, 8, 16)
    for x, result in zip(inputs, results):
        expected_y, expected_h = mlp_session.run(None, {"x": x})
        assert result["y"].shape == (len(x), 4)
        np.testing.assert_allclose(result["y"], expected_y, rtol=1e-5, atol=1e-5 * np.abs(expected_y).max())
        np.testing.assert_allclose(result["h"], expected_h, rtol=1e-5, atol=1e-5 * np.abs(expected_h).max())


def test_batches_never_exceed_max_batch(mlp_session):
    inputs = requests([1] * 10 + [3])
    recorder = Recorder()
    with BatchingEngine(mlp_session, max_batch=4, max_delay_ms=50, on_batch=recorder) as engine:
        results = [f.result(10) for f in [engine.submit({"x": x}) for x in inputs]]
    assert all(rows <= 4 for rows, _ in recorder.runs)
    assert sum(rows for rows, _ in recorder.runs) == 13
    assert max(merged for _, merged in recorder.runs) > 1
    for x, result in zip(inputs, results):
        np.testing.assert_allclose(result["y"], mlp_session.run(["y"], {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_only_requested_outputs_are_returned(mlp_session):
    with BatchingEngine(mlp_session, max_batch=8, max_delay_ms=5000) as engine:
        futures = [engine.submit({"x": x}, ["h"]) for x in requests([4, 4])]
        results = [f.result(10) for f in futures]
    assert [list(r) for r in results] == [["h"], ["h"]]
    with pytest.raises(ValueError, match=r"unknown output\(s\) \['z'\]"):
        BatchingEngine(mlp_session).infer_sync({"x": requests([1])[0]}, ["z"])


def test_requests_with_other_trailing_dims_run_separately():
    session = session_of(custom_model("FailOnNan", shape=("batch", "width")))
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, width)).astype(np.float32) for width in (3, 5, 3, 5)]
    recorder = Recorder()
    with BatchingEngine(session, max_batch=2, max_delay_ms=5000, on_batch=recorder) as engine:
        results = [f.result(10)["y"] for f in [engine.submit({"x": x}) for x in inputs]]
    assert recorder.runs == [(2, 2), (2, 2)]
    for x, y in zip(inputs, results):
        np.testing.assert_array_equal(y, 2 * x)


@pytest.mark.parametrize("max_batch, max_delay_ms", [(1, 5.0), (32, 0.0)])
def test_batching_can_be_disabled(mlp_session, max_batch, max_delay_ms):
    recorder = Recorder()
    with BatchingEngine(mlp_session, max_batch=max_batch, max_delay_ms=max_delay_ms, on_batch=recorder) as engine:
        assert not engine.batching
        futures = [engine.submit({"x": x}) for x in requests([2] * 6)]
        for f in futures:
            f.result(10)
    assert recorder.runs == [(2, 1)] * 6


def test_models_with_a_static_leading_dim_are_not_batched():
    session = session_of(custom_model("FailOnNan", shape=(2, 4)))
    assert not is_batchable(session)
    with BatchingEngine(session, max_batch=8, max_delay_ms=5000) as engine:
        assert not engine.batching
        x = np.ones((2, 4), np.float32)
        np.testing.assert_array_equal(engine.infer_sync({"x": x})["y"], 2 * x)


class RowLog:
    """A session wrapper logging the rows of every run."""

    def __init__(self, session):
        self.session = session
        self.rows = []

    def get_inputs(self):
        return self.session.get_inputs()

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, output_names, feeds):
        self.rows.append(len(feeds["x"]))
        return self.session.run(output_names, feeds)


def test_a_failing_request_fails_alone():
    session = RowLog(session_of(custom_model("FailOnNan")))
    inputs = [np.full((1, 4), float(i), np.float32) for i in range(4)]
    inputs[2][0, 1] = np.nan
    with BatchingEngine(session, max_batch=4, max_delay_ms=5000) as engine:
        futures = [engine.submit({"x": x}) for x in inputs]
        with pytest.raises(RuntimeError, match="input holds NaN"):
            futures[2].result(10)
        for i in (0, 1, 3):
            np.testing.assert_array_equal(futures[i].result(10)["y"], 2 * inputs[i])
    assert session.rows == [4, 1, 1, 1, 1]  # the merged run failed, then each request ran alone


def test_outputs_without_a_row_per_input_row_turn_batching_off():
    session = session_of(custom_model("FirstRow"))
    inputs = [np.full((2, 4), float(i), np.float32) for i in range(3)]
    with BatchingEngine(session, max_batch=6, max_delay_ms=5000) as engine:
        results = [f.result(10)["y"] for f in [engine.submit({"x": x}) for x in inputs]]
        assert not engine.batching
    for x, y in zip(inputs, results):
        np.testing.assert_array_equal(y, x[:1])


def test_async_infer_from_many_coroutines(mlp_session):
    inputs = requests([1, 2, 3, 4])

    async def main(engine):
        return await asyncio.gather(*(engine.infer({"x": x}, ["y"]) for x in inputs))

    with BatchingEngine(mlp_session, max_batch=10, max_delay_ms=5000) as engine:
        results = asyncio.run(main(engine))
        assert engine.stats().runs == 1
    for x, result in zip(inputs, results):
        np.testing.assert_allclose(result["y"], mlp_session.run(["y"], {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_timeout_drops_a_request_that_has_not_started():
    session = session_of(custom_model("Sleep", seconds=0.3))
    engine = BatchingEngine(session, max_batch=1, max_delay_ms=0)
    x = np.ones((1, 4), np.float32)
    running = engine.submit({"x": x})
    with pytest.raises(TimeoutError):
        engine.infer_sync({"x": x}, timeout=0.05)
    np.testing.assert_array_equal(running.result(5)["y"], x)
    engine.close()
    assert engine.stats().runs == 1


def test_close_drains_the_queue_then_refuses_requests(mlp_session):
    engine = BatchingEngine(mlp_session, max_batch=4, max_delay_ms=1000)
    futures = [engine.submit({"x": x}) for x in requests([1] * 6)]
    engine.close()
    assert all(f.done() and f.exception() is None for f in futures)
    assert engine.stats().requests == 6
    with pytest.raises(EngineClosedError):
        engine.submit({"x": requests([1])[0]})


def test_close_without_drain_fails_queued_requests():
    session = session_of(custom_model("Sleep", seconds=0.2))
    engine = BatchingEngine(session, max_batch=1, max_delay_ms=0)
    x = np.ones((1, 4), np.float32)
    futures = [engine.submit({"x": x}) for _ in range(3)]
    deadline = time.monotonic() + 5
    while engine.queue_depth != 2 and time.monotonic() < deadline:  # the first one is running
        time.sleep(0.005)
    engine.close(drain=False)
    assert futures[0].result()["y"].shape == (1, 4)
    for f in futures[1:]:
        with pytest.raises(EngineClosedError):
            f.result()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_batch": 0}, "max_batch: expected an integer >= 1, got 0"),
        ({"max_delay_ms": -1}, "max_delay_ms: expected a number >= 0, got -1"),
        ({"workers": 0}, "workers: expected an integer >= 1, got 0"),
    ],
)
def test_bad_settings_are_rejected(mlp_session, kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchingEngine(mlp_session, **kwargs)
