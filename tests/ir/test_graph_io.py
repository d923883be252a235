"""IR validation, topological order and save/load round trips."""

import numpy as np
import onnx
import pytest

import sparse_rt
from sparse_rt.ir import Graph, ModelFormatError, Node, Value, graph_from_proto, graph_to_proto
from sparse_rt.ir.graph import SPARSE_DOMAIN


def small_graph() -> Graph:
    return Graph(
        inputs=[Value("x", "float32", ("batch", 4))],
        outputs=[Value("y", "float32", ("batch", 3))],
        nodes=[
            Node("MatMul", ["x", "w"], ["h"], name="mm"),
            Node("Add", ["h", "b"], ["h2"], name="add"),
            Node("Relu", ["h2"], ["y"], name="relu"),
        ],
        constants={"w": np.arange(12, dtype=np.float32).reshape(4, 3), "b": np.ones(3, np.float32)},
        opset=17,
    )


def test_validate_accepts_well_formed_graph():
    small_graph().validate()


def test_validate_rejects_undefined_input():
    graph = small_graph()
    graph.nodes[1].inputs[0] = "nowhere"
    with pytest.raises(ValueError, match="'nowhere' is not defined"):
        graph.validate()


def test_validate_rejects_double_definition():
    graph = small_graph()
    graph.nodes[1].outputs[0] = "h"
    with pytest.raises(ValueError, match="'h' is defined more than once"):
        graph.validate()


def test_toposort_orders_shuffled_nodes_and_detects_cycles():
    graph = small_graph()
    graph.nodes = graph.nodes[::-1]
    graph.toposort()
    assert [n.name for n in graph.nodes] == ["mm", "add", "relu"]
    graph.nodes[0].inputs[0] = "y"  # mm now depends on relu's output
    with pytest.raises(ValueError, match="cycle"):
        graph.toposort()


def test_prune_unused_drops_dead_nodes_and_constants():
    graph = small_graph()
    graph.nodes.append(Node("Neg", ["x"], ["dead"], name="dead"))
    graph.constants["unused"] = np.zeros(2, np.float32)
    graph.prune_unused()
    assert [n.name for n in graph.nodes] == ["mm", "add", "relu"]
    assert set(graph.constants) == {"w", "b"}


def test_save_load_round_trip_is_exact(tmp_path):
    graph = small_graph()
    graph.nodes.append(
        Node(
            "SparseLinear", ["y", "", "w"], ["z"],
            {"format": "dense", "arrays": ["weight"], "kernel": "k", "config": "{}", "shape": [3, 4],
             "alpha": 0.5, "names": ["a", "b"], "table": np.eye(2, dtype=np.float32), "empty": []},
            name="sl", domain=SPARSE_DOMAIN,
        )
    )
    graph.outputs.append(Value("z", "float32", ("batch", 3)))
    path = tmp_path / "g.onnx"
    sparse_rt.save(graph, path)
    loaded = sparse_rt.load(path)
    assert [(v.name, v.dtype, v.shape) for v in loaded.inputs] == [(v.name, v.dtype, v.shape) for v in graph.inputs]
    assert [(v.name, v.dtype, v.shape) for v in loaded.outputs] == [(v.name, v.dtype, v.shape) for v in graph.outputs]
    assert loaded.opset == graph.opset
    assert set(loaded.constants) == set(graph.constants)
    for name, array in graph.constants.items():
        np.testing.assert_array_equal(loaded.constants[name], array)
        assert loaded.constants[name].dtype == array.dtype
    for a, b in zip(loaded.nodes, graph.nodes):
        assert (a.op_type, a.domain, a.inputs, a.outputs, a.name) == (b.op_type, b.domain, b.inputs, b.outputs, b.name)
        assert set(a.attributes) == set(b.attributes)
        for key, value in b.attributes.items():
            np.testing.assert_array_equal(np.asarray(a.attributes[key]), np.asarray(value))
    proto = onnx.load(str(path))
    assert {o.domain for o in proto.opset_import} == {"", SPARSE_DOMAIN}


def test_standard_ops_stay_standard_onnx():
    proto = graph_to_proto(small_graph())
    onnx.checker.check_model(proto)
    assert graph_from_proto(proto).nodes[0].op_type == "MatMul"


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sparse_rt.load(tmp_path / "absent.onnx")


def test_load_garbage_file(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x00\xffthis is not a protobuf\x12\x99" * 10)
    with pytest.raises(ModelFormatError, match="garbage.onnx"):
        sparse_rt.load(path)


def test_load_truncated_file(tmp_path):
    path = tmp_path / "model.onnx"
    sparse_rt.save(small_graph(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="model.onnx"):
        sparse_rt.load(path)


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty"):
        sparse_rt.load(path)


def test_save_rejects_non_graph(tmp_path):
    with pytest.raises(TypeError, match="expected a sparse_rt Graph"):
        sparse_rt.save({"not": "a graph"}, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


def test_load_detects_corrupted_weights(tmp_path):
    path = tmp_path / "model.onnx"
    sparse_rt.save(small_graph(), path)
    data = bytearray(path.read_bytes())
    raw = np.arange(12, dtype=np.float32).tobytes()
    at = bytes(data).index(raw)
    data[at + 5] ^= 0x40  # flip one bit inside the weight tensor: still parses as ONNX
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="checksum mismatch"):
        sparse_rt.load(path)
