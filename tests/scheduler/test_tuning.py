"""Autotuning with an injected fake timer: choice, cache, persistence of choices."""

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.converters.lowering import LinearLayer, lower_linear_layers
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.scheduler.cache import CACHE_VERSION, TuningCache, kernels_digest
from sparse_rt.scheduler.plan import batch_weights, make_chooser
from sparse_rt.scheduler.tune import tune_layer

CPU = torch.device("cpu")


def sparse_weight(out=48, inp=40, density=0.1, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, inp)).astype(np.float32)
    return w * (rng.random((out, inp)) < density)


class FakeTimer:
    """Seconds by format name (and batch); counts calls."""

    def __init__(self, seconds_by_format: dict[str, float]):
        self.seconds = seconds_by_format
        self.calls = 0

    def __call__(self, candidate, bound, x):
        self.calls += 1
        y = bound(x)  # the bound kernel must really run
        assert y.shape == (x.shape[0], candidate.weight.shape[0])
        return self.seconds.get(candidate.weight.name, 1.0) * x.shape[0]


@pytest.mark.parametrize("fastest", ["dense", "csr", "bsr"])
def test_fastest_candidate_is_chosen(tmp_path, fastest):
    w = np.zeros((32, 32), np.float32)
    w[:8, :8] = 1.0  # one dense 8x8 corner: every format is a candidate
    times = {"dense": 3.0, "csr": 2.0, "bsr": 2.5, "nm": 4.0}
    times[fastest] = 0.5
    choice = tune_layer(LinearLayer("l", w, None), CPU, {1: 1.0, 8: 1.0}, TuningCache(tmp_path / "c.json"), FakeTimer(times))
    assert choice.weight.name == fastest
    assert any(label.startswith("dense") for label in choice.timings)
    assert all(set(per_batch) == {1, 8} for per_batch in choice.timings.values())


def test_dense_weight_gets_dense_when_dense_is_fastest(tmp_path):
    w = np.random.default_rng(0).standard_normal((24, 16)).astype(np.float32)
    timer = FakeTimer({})

    def by_bytes(candidate, bound, x):
        timer(candidate, bound, x)
        return candidate.weight.nbytes * 1e-9  # a bandwidth-bound model of the kernels

    choice = tune_layer(LinearLayer("l", w, None), CPU, {1: 1.0}, TuningCache(tmp_path / "c.json"), by_bytes)
    assert choice.weight.name == "dense"


def test_batch_weights_decide_between_candidates(tmp_path):
    w = sparse_weight()

    def timer(candidate, bound, x):
        # csr fast at batch 1, dense fast at batch 64
        if candidate.weight.name == "csr":
            return 1.0 if x.shape[0] == 1 else 100.0
        return 5.0 if candidate.weight.name == "dense" else 1000.0

    layer = LinearLayer("l", w, None)
    assert tune_layer(layer, CPU, {1: 1.0}, TuningCache(tmp_path / "a.json"), timer).weight.name == "csr"
    assert tune_layer(layer, CPU, {1: 1.0, 64: 1.0}, TuningCache(tmp_path / "b.json"), timer).weight.name == "dense"


def test_cache_hit_skips_timing_across_processes(tmp_path):
    path = tmp_path / "cache.json"
    layer = LinearLayer("l", sparse_weight(), np.ones(48, np.float32))
    first = FakeTimer({"csr": 0.1})
    cache = TuningCache(path)
    choice1 = tune_layer(layer, CPU, {1: 1.0}, cache, first)
    cache.save()
    assert first.calls > 0 and path.exists()
    second = FakeTimer({"csr": 0.1})
    choice2 = tune_layer(layer, CPU, {1: 1.0}, TuningCache(path), second)  # a fresh cache object reads the file
    assert second.calls == 0
    assert (choice2.weight.name, choice2.kernel, choice2.config) == (choice1.weight.name, choice1.kernel, choice1.config)
    # a weight of the same shape but another sparsity is not a hit
    third = FakeTimer({})
    tune_layer(LinearLayer("l", sparse_weight(density=0.3), None), CPU, {1: 1.0}, TuningCache(path), third)
    assert third.calls > 0


def test_timings_of_other_kernel_sources_are_not_reused(tmp_path):
    path = tmp_path / "cache.json"
    layer = LinearLayer("l", sparse_weight(), None)
    cache = TuningCache(path)
    tune_layer(layer, CPU, {1: 1.0}, cache, FakeTimer({"csr": 0.1}))
    cache.save()
    entries = json.loads(path.read_text())["entries"]
    assert entries and all(key.startswith(kernels_digest() + "|") for key in entries)
    stale = {"0" * 16 + key.partition("|")[1] + key.partition("|")[2]: seconds for key, seconds in entries.items()}
    path.write_text(json.dumps({"version": CACHE_VERSION, "entries": stale}))
    timer = FakeTimer({"csr": 0.1})
    cache = TuningCache(path)
    tune_layer(layer, CPU, {1: 1.0}, cache, timer)  # measured again, as if the kernels had changed
    assert timer.calls > 0
    cache.save()
    assert json.loads(path.read_text())["entries"].keys() == entries.keys()  # the stale ones are gone


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": CACHE_VERSION + 99, "entries": {}}), "[]"])
def test_corrupt_or_foreign_cache_is_ignored_with_a_warning(tmp_path, content):
    path = tmp_path / "cache.json"
    path.write_text(content)
    with pytest.warns(UserWarning, match="tuning cache"):
        cache = TuningCache(path)
    timer = FakeTimer({"csr": 0.1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        choice = tune_layer(LinearLayer("l", sparse_weight(), None), CPU, {1: 1.0}, cache, timer)
        cache.save()
    assert choice.weight.name == "csr" and timer.calls > 0
    data = json.loads(path.read_text())
    assert data["version"] == CACHE_VERSION
    assert len(data["entries"]) == sum(len(per_batch) for per_batch in choice.timings.values())


def test_defaults_are_timed_twice_and_a_slow_burst_does_not_decide(tmp_path):
    calls: dict[str, int] = {}

    def bursty(candidate, bound, x):
        # csr is the fastest, but its first measurement is hit by a burst of other work
        name = candidate.weight.name
        calls[name] = calls.get(name, 0) + 1
        if name == "csr":
            return 9.0 if calls[name] == 1 else 0.5
        return 1.0

    choice = tune_layer(LinearLayer("l", sparse_weight(), None), CPU, {1: 1.0}, TuningCache(tmp_path / "c.json"), bursty)
    assert choice.weight.name == "csr"
    assert min(t[1] for label, t in choice.timings.items() if label.startswith("csr")) == 0.5


def test_batch_sizes_are_validated():
    assert batch_weights([1, 8]) == {1: 1.0, 8: 1.0}
    assert batch_weights({1: 3, 32: 1}) == {1: 3.0, 32: 1.0}
    for bad in ([], [0], [-2], {4: 0.0}):
        with pytest.raises(ValueError, match="batch_sizes"):
            batch_weights(bad)


def two_layer_model(inp: int = 32, hidden: int = 64, out: int = 16) -> onnx.ModelProto:
    w1 = sparse_weight(hidden, inp, 0.1, 1).T.copy()  # MatMul layout [in, out]
    w2 = sparse_weight(out, hidden, 0.1, 2)           # Gemm transB=1 layout [out, in]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
         helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
         helper.make_node("Relu", ["hb"], ["r"], name="relu"),
         helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1, alpha=0.5, beta=2.0)],
        "two_layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inp])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out])],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.full(hidden, 0.1, np.float32), "b1"),
                     numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.full(out, 0.2, np.float32), "b2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_saved_model_keeps_its_choices_and_runs_without_retuning(tmp_path, monkeypatch):
    import onnxruntime as ort

    model = two_layer_model()
    graph = import_onnx(model)
    chooser = make_chooser(CPU, (1, 4), tune=True, cache=TuningCache(tmp_path / "c.json"), timer=FakeTimer({"csr": 0.01}))
    assert lower_linear_layers(graph, chooser) == 2
    linear = [n for n in graph.nodes if n.op_type == "SparseLinear"]
    assert [n.attributes["format"] for n in linear] == ["csr", "csr"]
    path = tmp_path / "model.onnx"
    sparse_rt.save(graph, path)

    def no_tuning(*args, **kwargs):
        raise AssertionError("a saved model must not be re-tuned")

    monkeypatch.setattr("sparse_rt.scheduler.tune.tune_layer", no_tuning)
    monkeypatch.setattr("sparse_rt.scheduler.plan.tune_layer", no_tuning)
    reloaded = sparse_rt.load(path)
    assert [(n.attributes["format"], n.attributes["kernel"], n.attributes["config"]) for n in reloaded.nodes if n.op_type == "SparseLinear"] == \
        [(n.attributes["format"], n.attributes["kernel"], n.attributes["config"]) for n in linear]
    x = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    (y,) = sparse_rt.InferenceSession(path).run(None, {"x": x})
    (expected,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_heuristic_gives_sparse_kernels_to_a_90_percent_sparse_model_and_dense_to_dense():
    sizes = dict(inp=768, hidden=3072, out=768)
    sparse_graph = sparse_rt.convert(two_layer_model(**sizes), tune=False)
    assert all(n.attributes["format"] != "dense" for n in sparse_graph.nodes if n.op_type == "SparseLinear")
    dense_model = two_layer_model(**sizes)
    for init in dense_model.graph.initializer:
        if init.name in ("w1", "w2"):
            array = np.random.default_rng(3).standard_normal(tuple(init.dims)).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    dense_graph = sparse_rt.convert(dense_model, tune=False)
    assert all(n.attributes["format"] == "dense" for n in dense_graph.nodes if n.op_type == "SparseLinear")


def test_heuristic_choice_is_deterministic():
    a = sparse_rt.convert(two_layer_model(), tune=False)
    b = sparse_rt.convert(two_layer_model(), tune=False)
    key = lambda g: [(n.attributes["format"], n.attributes["kernel"], n.attributes["config"]) for n in g.nodes if n.op_type == "SparseLinear"]
    assert key(a) == key(b)


def test_kernels_of_the_chosen_format_are_dispatched_by_batch_size(tmp_path, monkeypatch):
    import onnxruntime as ort

    def timer(candidate, bound, x):
        bound(x)
        if candidate.weight.name != "dense":
            return 100.0
        native = candidate.kernel == "dense_cpu_native"
        return (1.0 if native else 2.0) if x.shape[0] == 1 else (20.0 if native else 10.0)

    w = np.random.default_rng(0).standard_normal((24, 16)).astype(np.float32)
    choice = tune_layer(LinearLayer("l", w, None), CPU, {1: 1.0, 64: 1.0}, TuningCache(tmp_path / "c.json"), timer)
    assert choice.kernel == "dense_cpu_torch"
    assert [(rows, kernel) for rows, kernel, _ in choice.dispatch] == [(1, "dense_cpu_native"), (8, "dense_cpu_torch")]

    model = two_layer_model()
    graph = import_onnx(model)
    lower_linear_layers(graph, make_chooser(CPU, (1, 64), tune=True, cache=TuningCache(tmp_path / "d.json"), timer=timer))
    path = tmp_path / "model.onnx"
    sparse_rt.save(graph, path)
    from sparse_rt.scheduler.explain import format_report, layer_reports

    reports = layer_reports(sparse_rt.load(path))
    assert [r.at(1)[0] for r in reports] == ["dense_cpu_native"] * 2
    assert [r.at(64)[0] for r in reports] == ["dense_cpu_torch"] * 2
    assert "dense/dense_cpu_native (by batch)" in format_report(reports, batch=1)
    calls = []
    from sparse_rt.kernels.cpu import dense as dense_kernels

    real = dense_kernels.dense_linear
    monkeypatch.setattr(dense_kernels, "dense_linear", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    session = sparse_rt.InferenceSession(path)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for rows, native_calls in [(1, 2), (7, 2), (8, 0), (40, 0)]:
        calls.clear()
        x = np.random.default_rng(rows).standard_normal((rows, 32)).astype(np.float32)
        np.testing.assert_allclose(session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)
        assert len(calls) == native_calls, rows


def test_a_malformed_dispatch_is_refused():
    from sparse_rt.ir.graph import Node
    from sparse_rt.ops.sparse_linear import dispatch_of

    node = Node("SparseLinear", ["x"], ["y"], {"dispatch": '[[4, "dense_cpu_native", {}]]'}, "fc")
    with pytest.raises(ValueError, match="dispatch: expected"):
        dispatch_of(node)
