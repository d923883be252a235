"""Single-node checks of sparse_rt.ops against onnx.reference.ReferenceEvaluator
(onnxruntime for the opset <13 softmax family, which the evaluator computes with
opset 13 semantics).

ONNX's node tests (test_onnx_node_tests.py) feed every input at run time and
mostly use the newest opsets. These cases cover what they leave out: the older
opset forms (attributes that later became inputs, opset <13 Softmax, Resize-10,
Upsample), and the binders' precomputed path, by running each case twice: with
the integer inputs (shape, axes, pads, ...) as constants the binder sees at bind
time, and as run-time inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from sparse_rt.ir.graph import Graph, Node, Value
from sparse_rt.ops.registry import BindContext, lookup
from sparse_rt.runtime.session import InferenceSession
from tests.helpers import assert_close

RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def ints(*values, dtype=np.int64) -> np.ndarray:
    return np.array(values, dtype=dtype)


@dataclass
class Case:
    op_type: str
    opset: int
    inputs: list[np.ndarray | None]
    attributes: dict[str, Any] = field(default_factory=dict)
    outputs: int = 1
    constant_from: int = 1  # inputs from this index on are constants in the "constant" run
    rtol: float = 1e-5
    id: str = ""
    # "onnxruntime" where the reference evaluator implements only the newest semantics
    reference: str = "onnx"


def _onnx_attribute(value):
    return numpy_helper.from_array(value) if isinstance(value, np.ndarray) else value


def reference(case: Case) -> list[np.ndarray]:
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(case.inputs)]
    outputs = [f"out{i}" for i in range(case.outputs)]
    node = helper.make_node(case.op_type, names, outputs, **{k: _onnx_attribute(v) for k, v in case.attributes.items()})
    graph_inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
        for name, x in zip(names, case.inputs)
        if x is not None
    ]
    graph_outputs = [helper.make_value_info(name, onnx.TypeProto()) for name in outputs]
    graph = helper.make_graph([node], "case", graph_inputs, graph_outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)  # output types, which onnxruntime needs
    feeds = {name: x for name, x in zip(names, case.inputs) if x is not None}
    if case.reference == "onnxruntime":
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, feeds)
    return ReferenceEvaluator(model).run(None, feeds)


def run_sparse_rt(case: Case, constant: bool) -> list[np.ndarray]:
    names = [f"in{i}" if x is not None else "" for i, x in enumerate(case.inputs)]
    node = Node(case.op_type, names, [f"out{i}" for i in range(case.outputs)], dict(case.attributes))
    constants = {}
    if constant:
        constants = {n: x for i, (n, x) in enumerate(zip(names, case.inputs)) if i >= case.constant_from and x is not None}
    ctx = BindContext(device=torch.device("cpu"), opset=case.opset, constants=constants)
    spec = lookup(case.op_type, "", case.opset)
    assert spec is not None, f"{case.op_type} is not registered at opset {case.opset}"
    fn = spec.bind(node, ctx)
    args = [None if x is None else torch.from_numpy(np.array(x)) for x in case.inputs]
    result = fn(*args)
    results = [result] if isinstance(result, torch.Tensor) else list(result)
    return [r.numpy() for r in results]


def check(case: Case, constant: bool) -> None:
    expected = reference(case)
    actual = run_sparse_rt(case, constant)
    assert len(actual) == len(expected)
    for index, (got, want) in enumerate(zip(actual, expected)):
        want = np.asarray(want)
        assert got.shape == want.shape, f"output {index}: shape {got.shape}, expected {want.shape}"
        assert got.dtype == want.dtype, f"output {index}: dtype {got.dtype}, expected {want.dtype}"
        if want.dtype.kind == "f":
            assert_close(got, want, rtol=case.rtol)
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"output {index}")


X4 = rand(2, 3, 5, 6)
X3 = rand(2, 3, 4)

CASES = [
    # softmax family: opset < 13 flattens at `axis`
    Case("Softmax", 11, [X3], {"axis": 1}, reference="onnxruntime", id="softmax11_axis1"),
    Case("Softmax", 11, [X3], reference="onnxruntime", id="softmax11_default_axis"),
    Case("LogSoftmax", 11, [X3], {"axis": 2}, reference="onnxruntime", id="logsoftmax11"),
    Case("Hardmax", 11, [X3], {"axis": 1}, reference="onnxruntime", id="hardmax11"),
    Case("Softmax", 13, [X3], {"axis": 1}, id="softmax13_axis1"),
    # split
    Case("Split", 11, [rand(6, 4)], {"axis": 0, "split": [2, 4]}, outputs=2, id="split11_attribute"),
    Case("Split", 11, [rand(4, 6)], {"axis": -1}, outputs=3, id="split11_equal"),
    Case("Split", 13, [rand(6, 4), ints(1, 5)], {"axis": 0}, outputs=2, id="split13_input"),
    Case("Split", 18, [rand(7, 2)], {"axis": 0, "num_outputs": 3}, outputs=3, id="split18_uneven"),
    # reductions: axes attribute (old) and input (new)
    Case("ReduceSum", 11, [X4], {"axes": [1, -1], "keepdims": 0}, id="reducesum11"),
    Case("ReduceSum", 13, [X4, ints(0, 2)], id="reducesum13"),
    Case("ReduceSum", 13, [X4, ints()], {"noop_with_empty_axes": 1}, id="reducesum13_noop"),
    Case("ReduceSum", 13, [X4, ints()], id="reducesum13_all"),
    Case("ReduceMean", 13, [X4], {"axes": [2, 3]}, id="reducemean13_attribute"),
    Case("ReduceMean", 18, [X4, ints(-2, -1)], id="reducemean18"),
    Case("ReduceMax", 18, [X4, ints(1)], {"keepdims": 0}, id="reducemax18"),
    Case("ReduceMin", 11, [X4], {"axes": [0]}, id="reducemin11"),
    Case("ReduceProd", 18, [X3, ints(0, 2)], id="reduceprod18"),
    Case("ReduceL2", 18, [X3, ints(1)], id="reducel2"),
    Case("ReduceLogSumExp", 13, [X3], {"axes": [1]}, id="reducelogsumexp13"),
    Case("ReduceSum", 13, [ints(1, 2, 3, 4, dtype=np.int32).reshape(2, 2), ints(1)], id="reducesum_int32"),
    Case("ArgMax", 13, [X3], {"axis": 1, "keepdims": 0}, id="argmax"),
    Case("ArgMin", 13, [np.array([[1, 0, 0, 3]], np.float32)], {"axis": 1, "select_last_index": 1}, id="argmin_last"),
    # squeeze / unsqueeze
    Case("Squeeze", 11, [rand(1, 3, 1, 2)], {"axes": [0, -2]}, id="squeeze11"),
    Case("Squeeze", 13, [rand(1, 3, 1, 2), ints(2)], id="squeeze13"),
    Case("Squeeze", 13, [rand(1, 3, 1, 2)], id="squeeze13_all"),
    Case("Unsqueeze", 11, [rand(3, 2)], {"axes": [0, -1]}, id="unsqueeze11"),
    Case("Unsqueeze", 13, [rand(3, 2), ints(-1, 1)], id="unsqueeze13"),
    # reshape family
    Case("Reshape", 14, [rand(2, 3, 4), ints(0, -1)], id="reshape_copy_dim"),
    Case("Reshape", 14, [rand(0, 3), ints(3, 0)], {"allowzero": 1}, id="reshape_allowzero"),
    Case("Reshape", 13, [rand(2, 3, 4), ints(4, 6)], id="reshape13"),
    Case("Flatten", 13, [X4], {"axis": -1}, id="flatten_negative"),
    Case("Flatten", 13, [X4], {"axis": 0}, id="flatten_zero"),
    Case("Transpose", 13, [X4], {"perm": [0, 2, 3, 1]}, id="transpose"),
    Case("Expand", 13, [rand(3, 1), ints(2, 1, 4)], id="expand"),
    Case("Tile", 13, [rand(2, 3), ints(2, 1)], id="tile"),
    Case("Shape", 15, [X4], {"start": 1, "end": -1}, id="shape_start_end"),
    Case("Size", 13, [X4], id="size"),
    Case("Concat", 13, [rand(2, 3), rand(2, 1)], {"axis": -1}, id="concat"),
    Case("DepthToSpace", 13, [rand(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}, id="depth_to_space_crd"),
    # pad
    Case("Pad", 2, [X4], {"pads": [0, 0, 1, 2, 0, 0, 2, 1], "mode": "reflect"}, id="pad2_reflect"),
    Case("Pad", 2, [X4], {"pads": [0, 0, 1, 0, 0, 0, 0, 3], "mode": "edge"}, id="pad2_edge"),
    Case("Pad", 11, [X4, ints(0, 0, 1, -1, 0, 0, -2, 2), np.array(1.5, np.float32)], reference="onnxruntime", id="pad11_constant_crop"),
    Case("Pad", 18, [X4, ints(1, 2, 0, 3), None, ints(1, 3)], id="pad18_axes"),
    Case("Pad", 19, [X4, ints(0, 0, 2, 7, 0, 0, 1, 3)], {"mode": "wrap"}, id="pad19_wrap"),
    Case("Pad", 13, [ints(1, 2, 3, dtype=np.int32), ints(2, 1)], {"mode": "reflect"}, id="pad_int_reflect"),
    # clip
    Case("Clip", 6, [X3], {"min": -0.5, "max": 0.5}, id="clip6"),
    Case("Clip", 11, [X3, np.array(-0.2, np.float32)], id="clip11_min_only"),
    Case("Clip", 13, [ints(-5, 0, 5, dtype=np.int32), None, np.array(2, np.int32)], id="clip13_int_max_only"),
    # slice
    Case("Slice", 1, [X4], {"starts": [1, 0], "ends": [3, -1], "axes": [2, 3]}, id="slice1"),
    Case("Slice", 13, [X4, ints(-1, 4), ints(-9999, 0), ints(2, -1), ints(-1, -2)], id="slice_negative_steps"),
    Case("Slice", 13, [X4, ints(0, 1), ints(1, 9999), ints(0, -1)], id="slice_mixed_axes"),
    Case("Slice", 13, [X4, ints(1), ints(-1)], id="slice_default_axes"),
    Case("Slice", 13, [X4, ints(1, 0), ints(9999, 5), ints(-1, -2), ints(2, 2)], id="slice_negative_axes"),
    # resize / upsample
    Case("Upsample", 7, [rand(1, 2, 2, 3)], {"scales": [1.0, 1.0, 2.0, 3.0]}, reference="onnxruntime", id="upsample7_nearest"),
    Case("Upsample", 9, [rand(1, 2, 2, 3), np.array([1, 1, 2, 2], np.float32)], {"mode": "linear"}, reference="onnxruntime", id="upsample9_linear"),
    Case("Resize", 10, [rand(1, 1, 3, 4), np.array([1, 1, 2, 1.5], np.float32)], reference="onnxruntime", id="resize10_nearest"),
    Case("Resize", 10, [rand(1, 1, 3, 4), np.array([1, 1, 2, 1.5], np.float32)], {"mode": "linear"},
         reference="onnxruntime", id="resize10_linear"),
    Case("Resize", 11, [rand(1, 2, 4, 4), np.zeros(0, np.float32), np.zeros(0, np.float32), ints(1, 2, 7, 3)],
         {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, id="resize11_sizes_linear"),
    Case("Resize", 13, [rand(1, 1, 4, 5), None, np.array([1, 1, 0.6, 1.7], np.float32)],
         {"mode": "cubic", "exclude_outside": 1}, id="resize13_cubic"),
    Case("Resize", 18, [rand(1, 2, 8, 8), None, np.array([0.5, 0.25], np.float32)],
         {"mode": "linear", "antialias": 1, "axes": [2, 3]}, id="resize18_antialias_axes"),
    Case("Resize", 13, [rand(1, 2, 3, 4), np.zeros(0, np.float32), np.array([1, 1, 2, 3], np.float32)],
         {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, id="resize_nearest_integer_upscale"),
    Case("Resize", 19, [ints(1, 2, 3, 4, dtype=np.int32).reshape(1, 1, 2, 2), None, np.array([1, 1, 2, 2], np.float32)],
         {"mode": "nearest", "coordinate_transformation_mode": "half_pixel_symmetric"}, id="resize19_int_nearest"),
    # top-k
    Case("TopK", 1, [X3], {"k": 2, "axis": 1}, outputs=2, id="topk1"),
    Case("TopK", 10, [X3, ints(3)], outputs=2, id="topk10"),
    Case("TopK", 11, [np.array([[3, 1, 3, 1, 2]], np.float32), ints(3)], {"largest": 0}, outputs=2, id="topk11_smallest_ties"),
    Case("TopK", 11, [RNG.integers(0, 6, (3, 300)).astype(np.float32), ints(5)], outputs=2, id="topk11_long_axis_ties"),
    Case("TopK", 11, [RNG.integers(0, 6, (300, 2)).astype(np.int32), ints(4)], {"axis": 0, "largest": 0}, outputs=2, id="topk11_long_axis_smallest"),
    Case("TopK", 11, [rand(2, 500), ints(3)], outputs=2, id="topk11_long_axis_distinct"),
    # dropout (inference)
    Case("Dropout", 7, [X3], {"ratio": 0.3}, id="dropout7"),
    Case("Dropout", 10, [X3], outputs=2, id="dropout10_mask"),
    Case("Dropout", 13, [X3, np.array(0.4, np.float32)], outputs=2, id="dropout13_mask"),
    # normalization
    Case("BatchNormalization", 7, [X4, rand(3), rand(3), rand(3), np.abs(rand(3)) + 0.5], reference="onnxruntime", id="batchnorm7"),
    Case("BatchNormalization", 15, [X4, rand(3), rand(3), rand(3), np.abs(rand(3)) + 0.5], {"epsilon": 1e-3}, id="batchnorm15"),
    Case("InstanceNormalization", 6, [X4, rand(3), rand(3)], id="instancenorm"),
    Case("LayerNormalization", 17, [X3, rand(4), rand(4)], {"axis": -1}, outputs=3, rtol=1e-4, id="layernorm_statistics"),
    Case("LayerNormalization", 17, [X3, rand(3, 4)], {"axis": 1}, id="layernorm_axis1_no_bias"),
    Case("LayerNormalization", 17, [X3.astype(np.float16), rand(4).astype(np.float16)], rtol=2e-3, id="layernorm_fp16"),
    Case("GroupNormalization", 18, [rand(2, 4, 3), rand(2), rand(2)], {"num_groups": 2}, rtol=1e-4, id="groupnorm18"),
    Case("GroupNormalization", 21, [rand(2, 4, 3), rand(4), rand(4)], {"num_groups": 2}, rtol=1e-4, id="groupnorm21"),
    Case("LRN", 13, [X4], {"size": 3, "bias": 2.0}, reference="onnxruntime", id="lrn_odd_size"),
    Case("LpNormalization", 13, [X3], {"axis": 1, "p": 1}, reference="onnxruntime", id="lpnormalization"),
    # conv
    Case("Conv", 11, [rand(1, 4, 7, 8), rand(6, 2, 3, 3), rand(6)],
         {"group": 2, "dilations": [2, 1], "pads": [1, 0, 2, 1], "strides": [1, 2]}, rtol=1e-4, id="conv_group_dilation_asymmetric"),
    Case("Conv", 11, [rand(1, 2, 7, 8), rand(3, 2, 3, 2)], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, rtol=1e-4, id="conv_same_lower"),
    Case("Conv", 11, [rand(2, 3, 9), rand(4, 3, 3)], {"pads": [1, 1], "kernel_shape": [3]}, rtol=1e-4, id="conv1d"),
    Case("Conv", 11, [rand(1, 2, 4, 4, 4), rand(2, 2, 2, 2, 2)], {"strides": [2, 1, 1]}, rtol=1e-4, id="conv3d"),
    Case("ConvTranspose", 11, [rand(1, 2, 3, 4), rand(2, 3, 3, 3), rand(3)],
         {"strides": [2, 2], "pads": [1, 0, 0, 1], "output_padding": [1, 0]}, rtol=1e-4, id="convtranspose_asymmetric"),
    Case("ConvTranspose", 11, [rand(1, 4, 3, 3), rand(4, 1, 2, 2)],
         {"strides": [2, 2], "group": 2, "output_shape": [7, 6]}, rtol=1e-4, reference="onnxruntime", id="convtranspose_output_shape_groups"),
    Case("ConvTranspose", 11, [rand(1, 2, 3), rand(2, 2, 3)], {"strides": [2], "auto_pad": "SAME_UPPER"}, rtol=1e-4, id="convtranspose_same_upper"),
    # pooling
    Case("MaxPool", 12, [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, id="maxpool_ceil"),
    Case("MaxPool", 12, [X4], {"kernel_shape": [2, 3], "pads": [0, 2, 1, 0], "dilations": [2, 1]}, id="maxpool_asymmetric_dilated"),
    Case("MaxPool", 12, [X4], {"kernel_shape": [2, 2], "strides": [2, 2]}, outputs=2, id="maxpool_indices"),
    Case("MaxPool", 12, [X4], {"kernel_shape": [2, 2], "storage_order": 1}, outputs=2, reference="onnxruntime", id="maxpool_indices_column_major"),
    Case("MaxPool", 12, [X4], {"kernel_shape": [3, 3], "pads": [0, 1, 2, 0]}, outputs=2, reference="onnxruntime", id="maxpool_indices_padded"),
    Case("AveragePool", 11, [X4], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}, id="avgpool_ceil"),
    Case("AveragePool", 11, [X4], {"kernel_shape": [3, 2], "pads": [1, 0, 0, 1], "count_include_pad": 1}, id="avgpool_include_pad"),
    Case("AveragePool", 11, [X4], {"kernel_shape": [3, 2], "pads": [1, 0, 0, 1]}, id="avgpool_exclude_pad"),
    Case("AveragePool", 19, [X4], {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 1, 1]}, id="avgpool19_dilated"),
    Case("AveragePool", 11, [X4], {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]}, id="avgpool_same_upper"),
    Case("LpPool", 18, [X4], {"kernel_shape": [2, 2], "p": 3, "pads": [1, 0, 0, 1]}, rtol=1e-4, id="lppool"),
    Case("GlobalAveragePool", 13, [X4], id="global_average_pool"),
    Case("GlobalMaxPool", 13, [X4], id="global_max_pool"),
    # indexing
    Case("Gather", 13, [X3, ints(2, 0, 1, 1).reshape(2, 2)], {"axis": 1}, id="gather"),
    Case("Gather", 13, [X3, ints(-1, 0)], {"axis": -1}, id="gather_negative_indices"),
    Case("Gather", 13, [X3, np.array(1, np.int64)], {"axis": 0}, id="gather_scalar_index"),
    Case("GatherElements", 13, [X3, ints(0, -1, 1, 0, 2, 1, 0, 1).reshape(2, 1, 4)], {"axis": 1}, id="gather_elements"),
    Case("GatherND", 13, [X3, ints(1, 0, 0, -1).reshape(2, 2)], id="gather_nd"),
    Case("GatherND", 13, [X3, ints(1, 2).reshape(2, 1)], {"batch_dims": 1}, id="gather_nd_batch"),
    Case("ScatterND", 18, [X3, ints(1, 0, 1, 0).reshape(2, 1, 2), rand(2, 1, 4)], {"reduction": "add"}, id="scatter_nd_add"),
    Case("ScatterND", 18, [X3, ints(0, 1).reshape(2, 1), rand(2, 3, 4)], {"reduction": "max"}, id="scatter_nd_max"),
    Case("ScatterElements", 18, [X3, ints(0, 2, 2, 1).reshape(1, 2, 2), rand(1, 2, 2)], {"axis": 1, "reduction": "mul"}, id="scatter_elements_mul"),
    Case("ScatterElements", 13, [X3, ints(-1, 0).reshape(1, 1, 2), rand(1, 1, 2)], {"axis": 2}, id="scatter_elements"),
    Case("OneHot", 11, [ints(0, 2, -1, 5), np.array(4, np.int64), np.array([0, 3], np.float32)], {"axis": 0}, id="onehot"),
    Case("NonZero", 13, [np.array([[1, 0], [0, 3]], np.int32)], id="nonzero"),
    Case("Compress", 11, [X3, np.array([True, False, True])], {"axis": 1}, id="compress"),
    Case("Trilu", 14, [X4, np.array(-1, np.int64)], {"upper": 0}, id="trilu_lower"),
    Case("CumSum", 14, [X3, np.array(1, np.int32)], {"exclusive": 1, "reverse": 1}, id="cumsum_exclusive_reverse"),
    # arithmetic and logic
    Case("Div", 14, [ints(7, -7, 7, -7, dtype=np.int32), ints(2, 2, -2, -2, dtype=np.int32)], id="div_int_truncates"),
    Case("Mod", 13, [ints(7, -7, 7, -7), ints(3, 3, -3, -3)], id="mod_int"),
    Case("Mod", 13, [np.array([5.5, -5.5], np.float32), np.array([2, 2], np.float32)], {"fmod": 1}, id="mod_fmod"),
    Case("Pow", 15, [rand(3, 4), ints(2, dtype=np.int32)], id="pow_float_int"),
    Case("Gemm", 13, [rand(4, 3), rand(5, 4), rand(5)], {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}, rtol=1e-4, id="gemm_transposed"),
    Case("Gemm", 13, [rand(2, 3), rand(3, 4)], id="gemm_no_c"),
    Case("MatMul", 13, [rand(2, 1, 3, 4), rand(5, 4, 2)], rtol=1e-4, id="matmul_broadcast"),
    Case("MatMul", 13, [rand(4), rand(4, 3)], rtol=1e-4, id="matmul_vector"),
    Case("Einsum", 12, [rand(2, 3, 4), rand(2, 4, 5)], {"equation": "bij, bjk -> bik"}, rtol=1e-4, id="einsum"),
    Case("Sum", 13, [rand(3, 1), rand(1, 4), rand(3, 4)], id="sum_broadcast"),
    Case("Mean", 13, [rand(3, 1), rand(1, 4)], reference="onnxruntime", id="mean"),
    Case("Max", 13, [ints(1, 5, dtype=np.int32), ints(3, dtype=np.int32)], id="max_int"),
    Case("Where", 16, [np.array([True, False, True]), rand(3), rand(2, 3)], id="where"),
    Case("PRelu", 16, [X4, rand(3, 1, 1)], id="prelu"),
    Case("Gelu", 20, [X3], {"approximate": "tanh"}, id="gelu_tanh"),
    Case("HardSigmoid", 6, [X3], {"alpha": 0.3, "beta": 0.4}, id="hardsigmoid"),
    Case("Shrink", 9, [ints(-3, -1, 0, 1, 3, dtype=np.int8)], {"lambd": 1.5, "bias": 1.0}, id="shrink_int8"),
    Case("IsInf", 20, [np.array([np.inf, -np.inf, 0, np.nan], np.float32)], {"detect_negative": 0}, id="isinf_positive"),
    Case("Cast", 13, [np.array([-1.7, 0.0, 2.9], np.float32)], {"to": TensorProto.INT32}, id="cast_float_int"),
    Case("Cast", 13, [ints(0, 3, -2)], {"to": TensorProto.BOOL}, id="cast_int_bool"),
    Case("Cast", 13, [rand(3)], {"to": TensorProto.FLOAT16}, rtol=1e-3, id="cast_float16"),
    # sources
    Case("ConstantOfShape", 20, [ints(2, 3)], {"value": np.array([7], np.int32)}, constant_from=0, id="constant_of_shape"),
    Case("ConstantOfShape", 20, [ints(2, 0)], constant_from=0, id="constant_of_shape_default"),
    Case("Range", 11, [np.array(1, np.int64), np.array(-8, np.int64), np.array(-3, np.int64)], constant_from=0, id="range_int"),
    Case("Range", 11, [np.array(0.5, np.float32), np.array(2.0, np.float32), np.array(0.3, np.float32)], constant_from=0, id="range_float"),
    Case("Range", 11, [np.array(5, np.int64), np.array(1, np.int64), np.array(2, np.int64)], constant_from=0, id="range_empty"),
    Case("Constant", 13, [], {"value_floats": [1.0, 2.5]}, id="constant_floats"),
    Case("Constant", 13, [], {"value": rand(2, 2)}, id="constant_tensor"),
    Case("EyeLike", 9, [rand(3, 4)], {"k": 1, "dtype": TensorProto.INT32}, id="eyelike"),
]


@pytest.mark.parametrize("constant", [False, True], ids=["runtime_inputs", "constant_inputs"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_op_matches_reference(case: Case, constant: bool):
    check(case, constant)


def test_case_ids_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


def test_lrn_even_size_matches_spec():
    """LRN's channel window is c - floor((size-1)/2) .. c + ceil((size-1)/2); onnxruntime takes only
    odd sizes and the reference evaluator sums over the wrong axis, so the spec is written out here."""
    x, size, alpha, beta, bias = X4.astype(np.float64), 2, 0.01, 0.75, 1.0
    squares = np.zeros_like(x)
    for c in range(x.shape[1]):
        low, high = max(c - (size - 1) // 2, 0), min(c + size // 2, x.shape[1] - 1)
        squares[:, c] = (x[:, low : high + 1] ** 2).sum(axis=1)
    expected = x / (bias + alpha / size * squares) ** beta
    case = Case("LRN", 13, [X4], {"size": size, "alpha": alpha, "beta": beta, "bias": bias})
    assert_close(run_sparse_rt(case, constant=False)[0], expected, rtol=1e-5)


def test_bad_attribute_error_names_node_expected_and_found():
    graph = Graph(
        [Value("x", "float32", (2,))],
        [Value("y", "float32", (2,))],
        [Node("Gelu", ["x"], ["y"], {"approximate": "erf"}, name="gelu_1")],
        opset=20,
    )
    with pytest.raises(ValueError, match=r"gelu_1.*approximate.*\['none', 'tanh'\].*'erf'"):
        InferenceSession(graph)


def test_expand_to_incompatible_shape_says_both_shapes():
    case = Case("Expand", 13, [rand(3, 2), ints(3, 4)])
    with pytest.raises(ValueError, match=r"shape \[3, 4\].*\[3, 2\]"):
        run_sparse_rt(case, constant=True)


@pytest.mark.parametrize("attributes, torch_pool", [
    ({"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, lambda x: F.max_pool2d(x, 2, 2, ceil_mode=True)),
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, lambda x: F.max_pool2d(x, 3, 2, 1)),
    ({"kernel_shape": [2, 3], "pads": [0, 2, 1, 0], "dilations": [2, 1]},
     lambda x: F.max_pool2d(F.pad(x, [2, 0, 0, 1], value=-np.inf), [2, 3], 1, 0, [2, 1])),
], ids=["ceil", "padded", "asymmetric_dilated"])
def test_max_pool_propagates_nans(attributes, torch_pool):
    """2-D MaxPool runs in channels-last layout; a window with a NaN still gives NaN, as in
    torch's NCHW pooling (onnxruntime and the reference evaluator drop some NaNs)."""
    x = rand(2, 5, 9, 11)
    x[0, 1, 4, :] = np.nan
    x[1, 4, 0, 0] = np.nan
    (got,) = run_sparse_rt(Case("MaxPool", 12, [x], attributes), constant=False)
    expected = torch_pool(torch.from_numpy(x)).numpy()
    assert np.isnan(expected).sum() > 2
    np.testing.assert_array_equal(got, expected)  # NaNs in the same places
    assert got.flags.c_contiguous
