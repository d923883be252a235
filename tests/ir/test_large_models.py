"""Models past protobuf's 2 GiB limit: their tensors live in an external data file beside the
model, both when they arrive (torch.onnx.export writes large models so) and when sparse_rt saves."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.ir import ModelFormatError, onnx_io


def gather_model(table: np.ndarray | None, rows: int, width: int) -> onnx.ModelProto:
    """y = table[ids]: ids int64 [n], table float32 [rows, width] (an initializer; left out when None)."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"])], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        [] if table is None else [numpy_helper.from_array(table, "table")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_a_plain_model_with_external_data_converts_from_another_directory(tmp_path, monkeypatch):
    table = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    onnx.save_model(gather_model(table, 300, 8), tmp_path / "model.onnx", save_as_external_data=True,
                    location="model.weights", size_threshold=0)
    monkeypatch.chdir(tmp_path.parent)  # the data file is found beside the model, not in the working directory
    ids = np.array([3, 299, 0], np.int64)
    for session in (sparse_rt.InferenceSession(sparse_rt.convert(str(tmp_path / "model.onnx"))),
                    sparse_rt.InferenceSession(tmp_path / "model.onnx")):
        np.testing.assert_array_equal(session.run(None, {"ids": ids})[0], table[ids])


def test_a_missing_data_file_is_named(tmp_path):
    onnx.save_model(gather_model(np.ones((300, 8), np.float32), 300, 8), tmp_path / "model.onnx",
                    save_as_external_data=True, location="model.weights", size_threshold=0)
    (tmp_path / "model.weights").unlink()
    with pytest.raises(ModelFormatError, match="model.weights"):
        sparse_rt.convert(str(tmp_path / "model.onnx"))


def test_saved_constants_past_the_limit_go_to_a_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_BYTES", 1000)
    table = np.random.default_rng(1).standard_normal((300, 8)).astype(np.float32)
    graph = sparse_rt.convert(gather_model(table, 300, 8))
    path = tmp_path / "model.sparse.onnx"
    sparse_rt.save(graph, path)
    first = sorted(p.name for p in tmp_path.iterdir())
    assert len(first) == 2 and first[1].startswith("model.sparse.onnx.") and first[1].endswith(".data")
    assert os.path.getsize(path) < table.nbytes
    ids = np.array([7, 1], np.int64)
    np.testing.assert_array_equal(sparse_rt.InferenceSession(path).run(None, {"ids": ids})[0], table[ids])
    np.testing.assert_array_equal(sparse_rt.load(path).constants["table"], table)

    graph.constants["table"] = table * 2  # saved again: a new data file, the old one removed
    sparse_rt.save(graph, path)
    second = sorted(p.name for p in tmp_path.iterdir())
    assert len(second) == 2 and second[1] != first[1]
    np.testing.assert_array_equal(sparse_rt.load(path).constants["table"], table * 2)

    with open(tmp_path / second[1], "r+b") as f:  # a truncated data file
        f.truncate(100)
    with pytest.raises(ModelFormatError, match="external data"):
        sparse_rt.load(path)


@pytest.mark.slow
def test_a_model_past_protobufs_limit_converts_saves_and_runs(tmp_path):
    """A 2.1 GiB embedding table, written as torch.onnx.export writes one: the graph in the model
    file, the table in a data file beside it."""
    rows, width = 550_000, 1024
    model = gather_model(None, rows, width)
    table = TensorProto(name="table", data_type=TensorProto.FLOAT, dims=[rows, width])
    for key, value in (("location", "model.data"), ("offset", "0"), ("length", str(rows * width * 4))):
        table.external_data.add(key=key, value=value)
    table.data_location = TensorProto.EXTERNAL
    model.graph.initializer.append(table)
    onnx.save_model(model, tmp_path / "model.onnx")
    with open(tmp_path / "model.data", "wb") as f:  # row r holds r + column / 1024
        for start in range(0, rows, 50_000):
            block = np.arange(start, min(start + 50_000, rows), dtype=np.float32)[:, None]
            (block + np.arange(width, dtype=np.float32) / 1024).tofile(f)
    ids = np.array([0, 123_457, rows - 1], np.int64)
    expected = ids[:, None].astype(np.float32) + np.arange(width, dtype=np.float32) / 1024

    graph = sparse_rt.convert(str(tmp_path / "model.onnx"))
    np.testing.assert_array_equal(sparse_rt.InferenceSession(graph).run(None, {"ids": ids})[0], expected)
    sparse_rt.save(graph, tmp_path / "model.sparse.onnx")
    del graph
    assert os.path.getsize(tmp_path / "model.sparse.onnx") < 1 << 20
    session = sparse_rt.InferenceSession(tmp_path / "model.sparse.onnx")
    np.testing.assert_array_equal(session.run(None, {"ids": ids})[0], expected)
