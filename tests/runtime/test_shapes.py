"""Shape values: which nodes compute from shapes alone, and the session reusing them."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.converters.onnx import import_onnx
from sparse_rt.runtime.memory import retain_freed_memory
from sparse_rt.runtime.shapes import shape_values
from tests.helpers import assert_close


def head_split_model(extra_nodes=(), output="y") -> onnx.ModelProto:
    """x [batch, seq, 8] -> Reshape to [batch, seq, 2, 4] with a target computed from Shape(x),
    as exported attention layers do, then Relu."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
        helper.make_node("Unsqueeze", ["seq", "axes"], ["seq1"]),
        helper.make_node("Concat", ["batch1", "seq1", "heads"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["split"]),
        helper.make_node("Relu", ["split"], ["y"]),
        *extra_nodes,
    ]
    graph = helper.make_graph(
        nodes, "heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 2, 4]) if output == "y"
         else helper.make_tensor_value_info(output, TensorProto.INT64, [4])],
        initializer=[
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array([0], np.int64), "axes"),
            numpy_helper.from_array(np.array([2, 4], np.int64), "heads"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_reshape_targets_computed_from_shapes_are_shape_values():
    graph = import_onnx(head_split_model())
    assert shape_values(graph) == {"shape", "batch", "seq", "batch1", "seq1", "target"}


def test_an_op_with_data_dependent_output_shape_disables_shape_values():
    model = head_split_model([helper.make_node("NonZero", ["y"], ["nz"])])
    model.graph.output.append(helper.make_tensor_value_info("nz", TensorProto.INT64, [4, "n"]))
    assert shape_values(import_onnx(model)) == set()


def test_a_reshape_target_computed_from_data_disables_shape_values():
    graph = import_onnx(head_split_model())
    reshape = next(n for n in graph.nodes if n.op_type == "Reshape")
    graph.inputs.append(sparse_rt.ir.graph.Value("target_in", "int64", (4,)))
    reshape.inputs[1] = "target_in"
    assert shape_values(graph) == set()


def test_session_reuses_shape_values_per_input_shape_signature():
    model = head_split_model()
    ours = sparse_rt.InferenceSession(model.SerializeToString())
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, seq in [(1, 5), (3, 7), (1, 5), (3, 7), (2, 5)]:
        x = rng.standard_normal((batch, seq, 8)).astype(np.float32)
        (y,) = ours.run(None, {"x": x})
        assert y.shape == (batch, seq, 2, 4)
        assert_close(y, reference.run(None, {"x": x})[0])
    assert len(ours._shape_cache) == 3


def test_an_output_that_is_a_kept_shape_value_is_a_copy():
    model = head_split_model([helper.make_node("Identity", ["target"], ["target_out"])], output="target_out")
    ours = sparse_rt.InferenceSession(model.SerializeToString())
    x = np.zeros((2, 3, 8), np.float32)
    (first,) = ours.run(None, {"x": x})
    first[:] = -1
    (second,) = ours.run(None, {"x": x})
    np.testing.assert_array_equal(second, [2, 3, 2, 4])


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="Linux only")
def test_freed_memory_is_retained_on_glibc():
    import platform

    assert retain_freed_memory() == (platform.libc_ver()[0] == "glibc")


def test_blocks_over_the_largest_mmap_threshold_are_recycled():
    import resource

    if not retain_freed_memory():
        pytest.skip("glibc only")
    floats = (48 << 20) // 4  # 48 MiB: over glibc's largest mmap threshold
    for _ in range(12):  # aligned blocks settle into reused places after a few rounds
        torch.empty(floats).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(floats).fill_(1.0)
    # mapped afresh, each block would fault once per page: 5 x 12,288 faults
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < (48 << 20) // 4096
