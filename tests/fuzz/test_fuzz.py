"""The fuzzing properties of tests/fuzz/cases.py, bounded for the normal test run
(benchmarks/fuzz.py runs them for minutes)."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings

import sparse_rt
from sparse_rt.ops.sparse_linear import bias_of, weight_of
from tests.fuzz.cases import (
    assert_close,
    base_model,
    check_file,
    check_format,
    check_graph,
    check_int8_kernel,
    check_kernel,
    file_cases,
    format_cases,
    graph_cases,
    int8_kernel_cases,
    kernel_cases,
)

BOUNDED = settings(
    deadline=5000, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@settings(BOUNDED, max_examples=100)
@given(format_cases())
def test_formats_round_trip(case):
    check_format(case)


@settings(BOUNDED, max_examples=150)
@given(kernel_cases())
def test_kernels_match_the_dense_reference(case):
    check_kernel(case)


@settings(BOUNDED, max_examples=100)
@given(int8_kernel_cases())
def test_int8_kernels_match_the_int32_reference(case):
    check_int8_kernel(case)


@settings(BOUNDED, max_examples=40)
@given(graph_cases())
def test_random_graphs_match_onnxruntime(case):
    check_graph(case)


@settings(BOUNDED, max_examples=150)
@given(file_cases())
def test_mutated_model_files_load_or_fail_cleanly(case):
    check_file(case)


def test_the_base_model_of_the_file_cases_runs_every_format():
    session = sparse_rt.InferenceSession(base_model())
    nodes = [node for node in session.graph.nodes if node.op_type == "SparseLinear"]
    assert [node.attributes["format"] for node in nodes] == ["csr", "bsr", "nm", "bitmask", "butterfly", "permuted", "dense"]
    x = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    h = torch.from_numpy(x).double()
    for node in nodes:
        h = h @ weight_of(node, session.graph.constants).to_dense().double().T + bias_of(node, session.graph.constants)
        if node.attributes.get("activation") == "gelu":
            h = torch.nn.functional.gelu(h)
    assert_close(session.run(None, {"x": x})[0], h.numpy(), "base model")


# Found by the fuzzer: unclean errors (KeyError) from files a flipped bit had changed.


def test_an_initializer_of_unknown_type_is_a_model_format_error():
    import onnx
    import pytest

    from sparse_rt.ir.onnx_io import ModelFormatError

    proto = onnx.ModelProto()
    proto.ParseFromString(base_model())
    proto.graph.initializer[0].data_type = 35
    with pytest.raises(ModelFormatError, match=r"initializer 'l0\.row_offsets': unreadable \(data type 35"):
        sparse_rt.InferenceSession(proto.SerializeToString())


def test_a_sparse_linear_node_without_its_format_is_a_value_error():
    import onnx
    import pytest

    proto = onnx.ModelProto()
    proto.ParseFromString(base_model())
    node = proto.graph.node[1]
    kept = [a for a in node.attribute if a.name != "format"]
    del node.attribute[:]
    node.attribute.extend(kept)
    with pytest.raises(ValueError, match="SparseLinear 'l1': expected attribute 'format' to be a string, got None"):
        sparse_rt.InferenceSession(proto.SerializeToString())
