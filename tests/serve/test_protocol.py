"""v2 codec: JSON and binary tensors, datatypes, and the errors of bad requests."""

import json

import numpy as np
import pytest

from sparse_rt.runtime import NodeArg
from sparse_rt.serve.protocol import (
    BINARY_HEADER,
    RequestError,
    check_inputs,
    datatype_of_onnx_type,
    decode_request,
    encode_response,
    metadata_shape,
)


def json_body(inputs, **fields):
    return json.dumps({"inputs": inputs, **fields}).encode()


def binary_body(tensors, **fields):
    """(body, header length) with every tensor sent as binary data."""
    inputs = [
        {"name": name, "shape": list(a.shape), "datatype": datatype, "parameters": {"binary_data_size": a.nbytes}}
        for name, datatype, a in tensors
    ]
    header = json_body(inputs, **fields)
    return header + b"".join(a.tobytes() for _, _, a in tensors), str(len(header))


def test_json_tensors_flat_or_nested():
    body = json_body([
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6.5]},
        {"name": "ids", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]},
        {"name": "mask", "shape": [2], "datatype": "BOOL", "data": [True, False]},
    ], id="r1", outputs=[{"name": "y", "parameters": {"binary_data": True}}])
    request = decode_request(body, None)
    assert request.id == "r1"
    np.testing.assert_array_equal(request.inputs["x"], np.array([[1, 2, 3], [4, 5, 6.5]], np.float32))
    assert request.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(request.inputs["ids"], np.array([[1, 2], [3, 4]], np.int64))
    assert request.inputs["mask"].dtype == np.bool_ and request.inputs["mask"].tolist() == [True, False]
    assert [(o.name, o.binary) for o in request.outputs] == [("y", True)]
    assert request.binary_output is False and request.timeout_s is None


def test_binary_tensors_in_input_order():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[7, -8]], dtype=np.int64)
    body, length = binary_body([("x", "FP32", x), ("ids", "INT64", ids)], parameters={"binary_data_output": True})
    request = decode_request(body, length)
    np.testing.assert_array_equal(request.inputs["x"], x)
    np.testing.assert_array_equal(request.inputs["ids"], ids)
    assert request.inputs["x"].flags.writeable
    assert request.binary_output is True and request.outputs is None


def test_outputs_follow_binary_data_output_unless_they_say_otherwise():
    body = json_body(
        [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
        outputs=[{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
        parameters={"binary_data_output": True},
    )
    assert [(o.name, o.binary) for o in decode_request(body, None).outputs] == [("a", True), ("b", False)]


def test_request_timeout_parameter_is_in_microseconds():
    body = json_body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], parameters={"timeout": 250000})
    assert decode_request(body, None).timeout_s == 0.25


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "malformed JSON in the request body"),
        (b"[1, 2]", "request body: expected a JSON object, got list"),
        (json_body("x"), "expected 'inputs' to be a list of tensors, got str"),
        (json_body([{"shape": [1], "datatype": "FP32", "data": [1]}]), r"inputs\[0\]: expected 'name' to be a string"),
        (json_body([{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]),
         "input 'x': expected 'shape' to be a list of non-negative integers, got \\[-1\\]"),
        (json_body([{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]), "input 'x': unsupported datatype 'FP8'"),
        (json_body([{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]),
         r"input 'x': shape \[2, 2\] needs 4 values, 'data' has 3"),
        (json_body([{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]),
         "input 'x': 'data' is not a regular nested list of numbers"),
        (json_body([{"name": "x", "shape": [1], "datatype": "FP32", "data": ["a"]}]),
         "input 'x': 'data' holds string values, expected FP32 values"),
        (json_body([{"name": "x", "shape": [1], "datatype": "INT64", "data": [1.5]}]),
         "input 'x': 'data' holds floating-point values, expected INT64 values"),
        (json_body([{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]),
         "input 'x': 'data' holds values outside the range of INT8"),
        (json_body([{"name": "x", "shape": [1], "datatype": "FP32"}]), "input 'x': no data"),
        (json_body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2), "input 'x': given more than once"),
        (json_body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], parameters={"timeout": -5}),
         "request parameter 'timeout': expected a positive integer"),
        (json_body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], outputs=[{"id": 1}]),
         r"outputs\[0\]: expected an object with a string 'name'"),
    ],
)
def test_malformed_json_requests_are_rejected(body, message):
    with pytest.raises(RequestError, match=message) as info:
        decode_request(body, None)
    assert info.value.status == 400


def test_binary_size_must_match_shape_and_body():
    x = np.zeros((2, 3), np.float32)
    body, length = binary_body([("x", "FP32", x)])
    with pytest.raises(RequestError, match=r"input 'x': binary_data_size is 24 bytes, but only 20 bytes are left"):
        decode_request(body[:-4], length)
    with pytest.raises(RequestError, match=r"add up to 24 bytes, but 28 bytes follow the JSON header"):
        decode_request(body + b"1234", length)
    header = json_body([{"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 20}}])
    with pytest.raises(RequestError, match=r"binary_data_size is 20 bytes, but shape \[2, 3\] of FP32 needs 24"):
        decode_request(header + bytes(20), str(len(header)))
    with pytest.raises(RequestError, match=f"{BINARY_HEADER}: expected an integer between 1 and"):
        decode_request(body, "abc")


def test_check_inputs_names_datatypes_and_shapes():
    model = [NodeArg("x", ["batch", 8], "tensor(float)")]
    check_inputs({"x": np.zeros((3, 8), np.float32)}, model, "m")
    cases = [
        ({"z": np.zeros((3, 8), np.float32)}, r"model 'm': unknown input\(s\) \['z'\]; the model's inputs are \['x'\]"),
        ({}, r"model 'm': missing input\(s\) \['x'\]"),
        ({"x": np.zeros((3, 8), np.int64)}, "input 'x': expected datatype FP32, got INT64"),
        ({"x": np.zeros((3, 7), np.float32)}, r"input 'x': expected shape \[-1, 8\], got \[3, 7\]"),
        ({"x": np.zeros((8,), np.float32)}, r"input 'x': expected shape \[-1, 8\], got \[8\]"),
    ]
    for inputs, message in cases:
        with pytest.raises(RequestError, match=message):
            check_inputs(inputs, model, "m")


def test_encode_json_and_binary_outputs():
    y = np.array([[1.5, -2.0]], np.float32)
    ids = np.array([3, 4], np.int64)
    body, headers = encode_response("m", "r1", [("y", y, False), ("ids", ids, False)])
    assert headers == {"content-type": "application/json"}
    assert json.loads(body) == {
        "model_name": "m", "model_version": "1", "id": "r1",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]},
            {"name": "ids", "datatype": "INT64", "shape": [2], "data": [3, 4]},
        ],
    }
    body, headers = encode_response("m", None, [("y", y, True), ("ids", ids, False)])
    length = int(headers[BINARY_HEADER])
    document = json.loads(body[:length])
    assert "id" not in document
    assert document["outputs"][0]["parameters"] == {"binary_data_size": 8}
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32).reshape(1, 2), y)


def test_metadata_datatypes_and_shapes():
    assert datatype_of_onnx_type("tensor(float)") == "FP32"
    assert datatype_of_onnx_type("tensor(int64)") == "INT64"
    assert datatype_of_onnx_type("tensor(bool)") == "BOOL"
    assert datatype_of_onnx_type("tensor(float16)") == "FP16"
    assert metadata_shape(["batch", 8, None]) == [-1, 8, -1]
