"""Conversion tunes every layer at the rows it really sees (scheduler.workload)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt import zoo
from sparse_rt.bench import prune
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.converters.torch import export_module
from sparse_rt.scheduler.explain import format_report, layer_reports
from sparse_rt.scheduler.workload import (
    DEFAULT_SEQUENCE,
    ROW_SPREAD,
    representative_feeds,
    representative_shapes,
    rows_per_input,
)


def _dynamic_encoder(sparsity: float) -> onnx.ModelProto:
    """A 2-layer BERT-style encoder (hidden 512, FFN 2048), magnitude-pruned, exported with
    dynamic batch and sequence axes as users export them.

    Hidden 512, not smaller: at 90% the sparse kernels beat dense by 2.2-3.1x at 128 rows
    there, against 1.4x for a 256x256 layer, which a noisy machine's timing can overturn."""
    config = zoo.TransformerConfig(vocab_size=100, hidden=512, layers=2, heads=8, ffn=2048, max_positions=256)
    module = zoo.seeded(zoo.Encoder(config))
    prune(module, sparsity, "unstructured")
    ids = torch.ones(2, 16, dtype=torch.int64)
    proto, _ = export_module(module, (ids, torch.ones_like(ids)), dynamic_dims={1: "sequence"})
    return proto


def test_dynamic_axes_model_is_tuned_at_the_representative_token_count(tmp_path):
    proto = _dynamic_encoder(0.9)
    graph = sparse_rt.convert(proto)
    reports = layer_reports(graph)
    assert len(reports) == 2 * 4  # per block: q/k/v merged, attention output, FFN up, FFN down
    for report in reports:
        assert report.tuned_rows == (DEFAULT_SEQUENCE,), report.name  # 1 x 128 tokens, not one row
        assert report.density < 0.11
        assert report.format != "dense", f"{report.name}: 90% sparse layer tuned at 128 rows chose dense"
        chosen = report.timings[report.chosen]
        assert set(ROW_SPREAD) <= set(chosen), "the chosen kernel is timed across the row spread"
    assert f"candidates (ms at {DEFAULT_SEQUENCE} rows)" in format_report(reports)
    # the converted model answers like onnxruntime at the tuned shape and at others
    path = tmp_path / "encoder.onnx"
    onnx.save(proto, path)
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    session = sparse_rt.InferenceSession(graph)
    rng = np.random.default_rng(0)
    for batch, sequence in ((1, 128), (1, 1), (3, 37)):
        ids = rng.integers(0, 100, (batch, sequence)).astype(np.int64)
        feeds = {"input_0": ids, "input_1": np.ones_like(ids)}
        expected = reference.run(None, feeds)[0]
        actual = session.run(None, feeds)[0]
        assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_given_shapes_set_the_tuned_rows():
    graph = sparse_rt.convert(_dynamic_encoder(0.9), shapes={"input_0": (2, 32), "input_1": (2, 32)}, tune=False)
    assert {r.tuned_rows for r in layer_reports(graph)} <= {(), (64,)}


def test_batch_sizes_still_tune_every_layer_at_those_rows():
    graph = sparse_rt.convert(_dynamic_encoder(0.9), batch_sizes=(4,))
    for report in layer_reports(graph):
        assert report.tuned_rows == (4,)
        assert {b for t in report.timings.values() for b in t} == {4}


def test_shapes_and_batch_sizes_exclude_each_other():
    with pytest.raises(TypeError, match="not both"):
        sparse_rt.convert(_dynamic_encoder(0.5), shapes={"input_0": (1, 8)}, batch_sizes=(8,))


def _graph(inputs, nodes, outputs, initializers=()):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(initializers)),
                              opset_imports=[helper.make_opsetid("", 17)])
    return import_onnx(model)


def test_representative_shapes_fill_dynamic_dims():
    graph = _graph(
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_node("Identity", ["image"], ["out"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3, "h", "w"])],
    )
    assert representative_shapes(graph) == {"ids": (1, DEFAULT_SEQUENCE), "image": (1, 3, 128, 128)}
    assert representative_shapes(graph, {"image": (2, 3, 224, 224)})["image"] == (2, 3, 224, 224)
    feeds = representative_feeds(graph)
    assert feeds["ids"].dtype == np.int64 and (feeds["ids"] == 1).all()
    with pytest.raises(ValueError, match=r"unknown input\(s\) \['pixels'\]; the model's inputs are \['ids', 'image'\]"):
        representative_shapes(graph, {"pixels": (1, 3)})
    with pytest.raises(ValueError, match=r"input 'image': expected rank 4 float32 \[n, 3, h, w\], got \[1, 3\]"):
        representative_shapes(graph, {"image": (1, 3)})
    with pytest.raises(ValueError, match=r"input 'image': expected float32 \[n, 3, h, w\], got \[1, 4, 8, 8\]"):
        representative_shapes(graph, {"image": (1, 4, 8, 8)})


def test_rows_of_a_pointwise_conv_are_its_pixels():
    weight = numpy_helper.from_array(np.ones((8, 4, 1, 1), np.float32), "w")
    graph = _graph([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, "h", "w"])],
                   [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Conv", ["r", "w"], ["y"])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, "h", "w"])], [weight])
    assert rows_per_input(graph, {"r": 1}) == {"r": 1 * 128 * 128}
    assert rows_per_input(graph, {"r": 1}, {"x": (2, 4, 7, 5)}) == {"r": 2 * 7 * 5}
    assert rows_per_input(graph, {"r": -1}, {"x": (2, 4, 7, 5)}) == {"r": 2 * 4 * 7}
