"""ONNX's own node tests (onnx.backend.test) run through SparseRtBackend.

The cases are the ones `python -m onnx.backend.test.cmd_tools generate-data`
writes to onnx/backend/test/data/node (the onnx wheel ships the generators, not
the files): a one-node model plus input/output tensors, with each tensor taken
through a TensorProto exactly as the .pb files store it. Every case whose ops
are all registered runs and is compared as onnx's runner does (same shape and
dtype, assert_allclose with the case's rtol/atol, 1e-3/1e-7 by default).

Cases that fail for a documented reason are marked xfail(strict=True) with that
reason, so a case that starts passing is reported and its entry must go.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from sparse_rt.ops.registry import lookup
from sparse_rt.runtime.backend import SparseRtBackend

_NO_NUMPY_DTYPE = "numpy has no such dtype (onnx stores it as ml_dtypes), so the session can neither take nor return it"
# element types the session cannot run, and why
UNSUPPORTED_TYPES: dict[int, str] = {
    TensorProto.STRING: "string tensors are not supported",
    TensorProto.COMPLEX64: "complex tensors are not supported",
    TensorProto.COMPLEX128: "complex tensors are not supported",
    TensorProto.BFLOAT16: _NO_NUMPY_DTYPE,
    TensorProto.FLOAT8E4M3FN: _NO_NUMPY_DTYPE,
    TensorProto.FLOAT8E4M3FNUZ: _NO_NUMPY_DTYPE,
    TensorProto.FLOAT8E5M2: _NO_NUMPY_DTYPE,
    TensorProto.FLOAT8E5M2FNUZ: _NO_NUMPY_DTYPE,
    TensorProto.FLOAT8E8M0: _NO_NUMPY_DTYPE,
    TensorProto.FLOAT4E2M1: _NO_NUMPY_DTYPE,
    TensorProto.UINT4: _NO_NUMPY_DTYPE,
    TensorProto.INT4: _NO_NUMPY_DTYPE,
    TensorProto.UINT2: _NO_NUMPY_DTYPE,
    TensorProto.INT2: _NO_NUMPY_DTYPE,
}

_RANDOM = "training-mode Dropout draws a random mask; onnx's expected output comes from numpy's generator"

EXCLUDED: dict[str, str] = {
    "test_training_dropout": _RANDOM,
    "test_training_dropout_mask": _RANDOM,
    "test_training_dropout_default": _RANDOM,
    "test_training_dropout_default_mask": _RANDOM,
    "test_attention_4d_causal_fp16_expanded": (
        "float16: torch's Softmax/MatMul round once from float32 where numpy rounds every step; "
        "2 of 192 outputs differ by 1 ulp (4.9e-4), over rtol 1e-3"
    ),
}


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _supported(model: onnx.ModelProto) -> bool:
    """All values are tensors (no sequences/optionals) and all nodes are default-domain ops
    registered at the model's opset, without subgraphs."""
    values = list(model.graph.input) + list(model.graph.output)
    if any(not v.type.HasField("tensor_type") for v in values):
        return False
    opset = _opset(model)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or lookup(node.op_type, "", opset) is None:
            return False
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return False
    return True


def _elem_types(model: onnx.ModelProto) -> set[int]:
    values = list(model.graph.input) + list(model.graph.output)
    types = {v.type.tensor_type.elem_type for v in values}
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "to":
                types.add(attribute.i)
    return types


def _as_stored(value) -> np.ndarray:
    """A case tensor as reading its .pb file gives it."""
    proto = value if isinstance(value, TensorProto) else numpy_helper.from_array(np.asarray(value))
    return numpy_helper.to_array(proto)


def _exclusion(case) -> str | None:
    if case.name in EXCLUDED:
        return EXCLUDED[case.name]
    for elem_type in sorted(_elem_types(case.model) & set(UNSUPPORTED_TYPES)):
        return f"{TensorProto.DataType.Name(elem_type)}: {UNSUPPORTED_TYPES[elem_type]}"
    if _opset(case.model) < 7:
        return f"opset {_opset(case.model)}: sparse_rt imports opset 7 and later"
    return None


@functools.cache
def node_cases() -> list:
    """The supported node test cases, in onnx's order."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    return [case for case in cases if case.kind == "node" and _supported(case.model)]


def _params() -> list:
    params = []
    for case in node_cases():
        reason = _exclusion(case)
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


@pytest.mark.parametrize("case", _params())
def test_node_case(case):
    rep = SparseRtBackend.prepare(case.model)
    for inputs, expected_outputs in case.data_sets:
        outputs = rep.run([_as_stored(x) for x in inputs])
        expected_outputs = [_as_stored(x) for x in expected_outputs]
        assert len(outputs) == len(expected_outputs)
        for index, (actual, expected) in enumerate(zip(outputs, expected_outputs)):
            actual = np.asarray(actual)
            assert actual.shape == expected.shape, f"output {index}: shape {actual.shape}, expected {expected.shape}"
            assert actual.dtype == expected.dtype, f"output {index}: dtype {actual.dtype}, expected {expected.dtype}"
            np.testing.assert_allclose(actual, expected, rtol=case.rtol, atol=case.atol, err_msg=f"output {index}")


def test_exclusions_name_supported_cases():
    names = {case.name for case in node_cases()}
    stale = sorted(set(EXCLUDED) - names)
    assert not stale, f"EXCLUDED names cases that do not exist or use unsupported ops: {stale}"


def test_most_supported_cases_run():
    """Guards against the suite silently shrinking (an op dropping out of the registry)."""
    runnable = [case for case in node_cases() if _exclusion(case) is None]
    assert len(runnable) >= 1000, f"only {len(runnable)} node test cases run"
