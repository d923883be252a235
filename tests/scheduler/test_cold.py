"""Cold timing: a model too large for the last-level cache has its few-row calls timed with the
weight evicted; the verdict, the cache keys and explain follow."""

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.converters.lowering import LinearLayer
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.scheduler import cold
from sparse_rt.scheduler.cache import TuningCache
from sparse_rt.scheduler.explain import format_report, layer_reports
from sparse_rt.scheduler.tune import best_time, tune_layer
from sparse_rt.scheduler.workload import nonzero_weight_bytes

CPU = torch.device("cpu")


def half_sparse(out=64, inp=48, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, inp)).astype(np.float32)
    return w * (rng.random((out, inp)) < 0.5)


class ByFormat:
    """Seconds by format name; records the rows of every call."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds, self.rows = seconds, []

    def __call__(self, candidate, bound, x):
        self.rows.append(x.shape[0])
        bound(x)
        return self.seconds.get(candidate.weight.name, 1.0)


def test_few_row_calls_are_timed_cold_and_decide_the_format(tmp_path):
    warm, cold_timer = ByFormat({"dense": 0.1}), ByFormat({"bitmask": 0.1})
    layer = LinearLayer("l", half_sparse(), None)
    choice = tune_layer(layer, CPU, {1: 1.0}, TuningCache(tmp_path / "c.json"), warm, cold_rows=8, cold_timer=cold_timer)
    assert choice.weight.name == "bitmask" and choice.cold_rows == (1,)
    assert warm.rows == [] and set(cold_timer.rows) == {1}
    warm_only = tune_layer(layer, CPU, {1: 1.0}, TuningCache(tmp_path / "d.json"), ByFormat({"dense": 0.1}))
    assert warm_only.weight.name == "dense" and warm_only.cold_rows == ()


def test_cold_rows_apply_to_the_tuned_rows_not_the_spread(tmp_path):
    warm, cold_timer = ByFormat({}), ByFormat({})
    tune_layer(LinearLayer("l", half_sparse(), None), CPU, {1: 1.0, 64: 1.0}, TuningCache(tmp_path / "c.json"),
               warm, spread=(8,), cold_rows=8, cold_timer=cold_timer)
    assert set(cold_timer.rows) == {1} and set(warm.rows) == {8, 64}


def test_cold_and_warm_timings_are_cached_apart(tmp_path):
    cache = TuningCache(tmp_path / "c.json")
    layer = LinearLayer("l", half_sparse(), None)
    tune_layer(layer, CPU, {1: 1.0}, cache, ByFormat({}))
    cold_timer = ByFormat({})
    tune_layer(layer, CPU, {1: 1.0}, cache, ByFormat({}), cold_rows=1, cold_timer=cold_timer)
    assert cold_timer.rows  # the warm entries did not stand in for cold ones
    again = ByFormat({})
    tune_layer(layer, CPU, {1: 1.0}, cache, ByFormat({}), cold_rows=1, cold_timer=again)
    assert again.rows == []


def test_before_runs_ahead_of_every_timed_call():
    events = []
    best_time(lambda x: events.append("call"), torch.zeros(1), warmup=1, min_runs=3, max_runs=3,
              before=lambda: events.append("evict"))
    assert events == ["call", "evict", "call", "evict", "call", "evict", "call"]


def test_the_eviction_buffer_is_a_multiple_of_the_cache_made_at_the_first_call():
    evict = cold.CacheEvictor(cache_bytes=4096)
    assert evict.buffer is None
    evict()
    assert evict.buffer.numel() * 4 == cold.EVICTION_FACTOR * 4096


def test_cold_rows_only_when_the_weights_exceed_the_cache():
    assert cold.cold_rows_for(64 << 20, cache_bytes=32 << 20) == cold.COLD_ROWS
    assert cold.cold_rows_for(16 << 20, cache_bytes=32 << 20) == 0


def test_last_level_cache_is_the_largest_level(tmp_path, monkeypatch):
    for index, size in enumerate(["48K", "1024K", "32768K"]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    monkeypatch.setattr(cold, "Path", lambda _: tmp_path)
    assert cold.last_level_cache_bytes() == 32 << 20
    monkeypatch.setattr(cold, "Path", lambda _: tmp_path / "absent")
    assert cold.last_level_cache_bytes() == cold.DEFAULT_LAST_LEVEL_CACHE


def two_layer_model(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, w1.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w2.shape[1]])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_nonzero_weight_bytes_counts_each_linear_weight_once():
    w1, w2 = half_sparse(48, 64).T.copy(), half_sparse(32, 48, seed=1).T.copy()
    graph = import_onnx(two_layer_model(w1, w2))
    nonzeros = np.count_nonzero(w1) + np.count_nonzero(w2)
    assert nonzero_weight_bytes(graph) == 4 * nonzeros
    assert nonzero_weight_bytes(graph, 1) == nonzeros


def test_a_model_larger_than_the_cache_is_tuned_cold_and_explain_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_RT_CACHE", str(tmp_path / "tuning.json"))
    monkeypatch.setattr(cold, "last_level_cache_bytes", lambda: 1024)  # any model exceeds it
    monkeypatch.setattr(cold, "EVICTION_FACTOR", 1)
    model = two_layer_model(half_sparse(48, 64).T.copy(), half_sparse(32, 48, seed=1).T.copy())
    graph = sparse_rt.convert(model)
    reports = layer_reports(graph)
    assert reports and all(r.cold_rows == (1,) for r in reports)
    assert "timed cold at 1 rows" in format_report(reports)
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    w1, w2 = (numpy_helper.to_array(t) for t in model.graph.initializer)
    (y,) = sparse_rt.InferenceSession(graph).run(None, {"x": x})
    np.testing.assert_allclose(y, x @ w1 @ w2, rtol=1e-4, atol=1e-4)
