"""Open Inference Protocol v2 (KServe v2 REST) codec: tensors as JSON or as binary data.

A request body is JSON, or, with the binary tensor data extension, a JSON header
of `Inference-Header-Content-Length` bytes followed by the raw little-endian bytes
of the binary inputs, in input order:

    {"id"?: str,
     "parameters"?: {"binary_data_output"?: bool, "timeout"?: int (microseconds)},
     "inputs": [{"name": str, "shape": [int], "datatype": "FP32",
                 "data"?: [...] (flat or nested, row-major),
                 "parameters"?: {"binary_data_size"?: int}}],
     "outputs"?: [{"name": str, "parameters"?: {"binary_data"?: bool}}]}

A response is shaped the same way: JSON outputs carry "data", binary ones carry
parameters.binary_data_size and their bytes follow the JSON header. Every decoding
problem raises `RequestError` (HTTP 400) naming the tensor and saying what was
expected and what was found.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

BINARY_HEADER = "Inference-Header-Content-Length"

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
"""v2 datatype -> numpy dtype, for every datatype a request may carry."""

_DATATYPE_OF_DTYPE = {dtype.name: datatype for datatype, dtype in DATATYPES.items()}

_ONNX_TYPE_DATATYPES = {
    "float": "FP32",
    "double": "FP64",
    "float16": "FP16",
    "bfloat16": "BF16",
    "string": "BYTES",
    **{dtype.name: datatype for datatype, dtype in DATATYPES.items()},
}

# numpy kinds a JSON array may parse to, per kind of the target dtype
_JSON_KINDS = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}


class RequestError(ValueError):
    """A request the server cannot accept; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """A decoded request: inputs as numpy arrays, and the outputs asked for.

    outputs is None when the request names none (then every output is returned,
    binary iff `binary_output`, the request's binary_data_output). timeout_s is
    the request's own timeout, if any.
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None
    binary_output: bool
    timeout_s: float | None


def datatype_of_dtype(dtype: np.dtype) -> str:
    """The v2 datatype string of a numpy dtype ("float32" -> "FP32")."""
    try:
        return _DATATYPE_OF_DTYPE[np.dtype(dtype).name]
    except KeyError:
        raise ValueError(f"dtype {np.dtype(dtype).name} has no v2 datatype; supported: {sorted(_DATATYPE_OF_DTYPE)}") from None


def datatype_of_onnx_type(type_string: str) -> str:
    """The v2 datatype of an onnxruntime-style type string ("tensor(float)" -> "FP32")."""
    inner = type_string.removeprefix("tensor(").removesuffix(")")
    try:
        return _ONNX_TYPE_DATATYPES[inner]
    except KeyError:
        raise ValueError(f"type {type_string!r} has no v2 datatype") from None


def metadata_shape(shape: Sequence[int | str | None]) -> list[int]:
    """A model shape for metadata: static dims as they are, dynamic ones (names, None) as -1."""
    return [dim if isinstance(dim, int) else -1 for dim in shape]


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode a request body; `header_length` is the Inference-Header-Content-Length header, if sent."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        length = _parse_header_length(header_length, len(body))
        header, binary = body[:length], memoryview(body)[length:]
    try:
        document = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"malformed JSON in the request body: {exc}") from None
    if not isinstance(document, dict):
        raise RequestError(f"request body: expected a JSON object, got {type(document).__name__}")
    parameters = _object(document.get("parameters", {}), "request parameters")
    inputs_field = document.get("inputs")
    if not isinstance(inputs_field, list):
        raise RequestError(f"request body: expected 'inputs' to be a list of tensors, got {_describe(inputs_field)}")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(inputs_field):
        name, array, used = _decode_input(index, tensor, binary[offset:])
        if name in inputs:
            raise RequestError(f"input {name!r}: given more than once")
        inputs[name] = array
        offset += used
    if offset != len(binary):
        raise RequestError(
            f"binary tensor data: the inputs' binary_data_size add up to {offset} bytes, "
            f"but {len(binary)} bytes follow the JSON header"
        )
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f"request 'id': expected a string, got {_describe(request_id)}")
    binary_output = _flag(parameters, "binary_data_output", "request parameters", False)
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=_decode_outputs(document.get("outputs"), binary_output),
        binary_output=binary_output,
        timeout_s=_timeout(parameters),
    )


def _parse_header_length(value: str, body_length: int) -> int:
    try:
        length = int(value)
    except ValueError:
        length = -1
    if not 0 < length <= body_length:
        raise RequestError(
            f"{BINARY_HEADER}: expected an integer between 1 and the body length {body_length}, got {value!r}"
        )
    return length


def _decode_input(index: int, tensor: Any, binary: memoryview) -> tuple[str, np.ndarray, int]:
    """(name, array, binary bytes consumed) of the index-th input."""
    if not isinstance(tensor, dict):
        raise RequestError(f"inputs[{index}]: expected a tensor object, got {_describe(tensor)}")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise RequestError(f"inputs[{index}]: expected 'name' to be a string, got {_describe(name)}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise RequestError(f"input {name!r}: expected 'shape' to be a list of non-negative integers, got {shape!r}")
    dtype = dtype_of_datatype(tensor.get("datatype"), f"input {name!r}")
    count = math.prod(shape)
    parameters = _object(tensor.get("parameters", {}), f"input {name!r} parameters")
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise RequestError(f"input {name!r}: has both 'data' and parameters.binary_data_size")
        return name, _binary_array(name, shape, dtype, count, size, binary), size
    if "data" not in tensor:
        raise RequestError(f"input {name!r}: no data: expected 'data' or parameters.binary_data_size")
    return name, _json_array(name, shape, dtype, count, tensor["data"]), 0


def dtype_of_datatype(datatype: Any, what: str) -> np.dtype:
    """The numpy dtype of a v2 datatype string; RequestError naming `what` if unsupported."""
    try:
        return DATATYPES[datatype]
    except (KeyError, TypeError):
        raise RequestError(f"{what}: unsupported datatype {datatype!r}; supported: {sorted(DATATYPES)}") from None


def _binary_array(name: str, shape: list[int], dtype: np.dtype, count: int, size: Any, binary: memoryview) -> np.ndarray:
    expected = count * dtype.itemsize
    if type(size) is not int or size != expected:
        raise RequestError(
            f"input {name!r}: binary_data_size is {size!r} bytes, but shape {shape} of "
            f"{datatype_of_dtype(dtype)} needs {expected}"
        )
    if size > len(binary):
        raise RequestError(f"input {name!r}: binary_data_size is {size} bytes, but only {len(binary)} bytes are left")
    array = np.frombuffer(binary[:size], dtype=dtype.newbyteorder("<"), count=count)
    return array.astype(dtype, copy=True).reshape(shape)


def _json_array(name: str, shape: list[int], dtype: np.dtype, count: int, data: Any) -> np.ndarray:
    datatype = datatype_of_dtype(dtype)
    if not isinstance(data, list):
        raise RequestError(f"input {name!r}: expected 'data' to be a list, got {_describe(data)}")
    try:
        parsed = np.array(data)
    except ValueError as exc:
        raise RequestError(f"input {name!r}: 'data' is not a regular nested list of numbers ({exc})") from None
    if parsed.size == 0:
        parsed = parsed.astype(dtype)
    elif parsed.dtype.kind not in _JSON_KINDS[dtype.kind]:
        raise RequestError(f"input {name!r}: 'data' holds {_kind_name(parsed.dtype)} values, expected {datatype} values")
    if parsed.size != count:
        raise RequestError(f"input {name!r}: shape {shape} needs {count} values, 'data' has {parsed.size}")
    if dtype.kind in "iu" and parsed.size and (parsed.min() < np.iinfo(dtype).min or parsed.max() > np.iinfo(dtype).max):
        raise RequestError(f"input {name!r}: 'data' holds values outside the range of {datatype}")
    return parsed.astype(dtype).reshape(shape)


def _kind_name(dtype: np.dtype) -> str:
    return {"b": "boolean", "i": "integer", "u": "integer", "f": "floating-point", "U": "string"}.get(dtype.kind, "non-numeric")


def _decode_outputs(outputs: Any, binary_default: bool) -> list[RequestedOutput] | None:
    """The requested outputs; one without a binary_data parameter follows binary_data_output."""
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise RequestError(f"request 'outputs': expected a list, got {_describe(outputs)}")
    decoded = []
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise RequestError(f"outputs[{index}]: expected an object with a string 'name', got {output!r}")
        parameters = _object(output.get("parameters", {}), f"output {output['name']!r} parameters")
        binary = _flag(parameters, "binary_data", f"output {output['name']!r}", binary_default)
        decoded.append(RequestedOutput(output["name"], binary))
    return decoded


def _timeout(parameters: Mapping[str, Any]) -> float | None:
    value = parameters.get("timeout")
    if value is None:
        return None
    if type(value) is not int or value <= 0:
        raise RequestError(f"request parameter 'timeout': expected a positive integer (microseconds), got {value!r}")
    return value / 1e6


def _flag(parameters: Mapping[str, Any], key: str, what: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise RequestError(f"{what}: expected {key!r} to be true or false, got {value!r}")
    return value


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(f"{what}: expected a JSON object, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def check_inputs(inputs: Mapping[str, np.ndarray], model_inputs: Sequence[Any], model: str) -> None:
    """Check names, datatypes and shapes against the model's NodeArgs; RequestError names the first problem."""
    expected = {arg.name: arg for arg in model_inputs}
    unknown = [name for name in inputs if name not in expected]
    if unknown:
        raise RequestError(f"model {model!r}: unknown input(s) {unknown}; the model's inputs are {list(expected)}")
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise RequestError(f"model {model!r}: missing input(s) {missing}; the model's inputs are {list(expected)}")
    for name, arg in expected.items():
        array = inputs[name]
        want = datatype_of_onnx_type(arg.type)
        got = datatype_of_dtype(array.dtype)
        if got != want:
            raise RequestError(f"input {name!r}: expected datatype {want}, got {got}")
        if arg.shape and not _shape_matches(array.shape, arg.shape):
            raise RequestError(
                f"input {name!r}: expected shape {metadata_shape(arg.shape)}, got {list(array.shape)}"
            )


def _shape_matches(shape: tuple[int, ...], model_shape: Sequence[int | str | None]) -> bool:
    return len(shape) == len(model_shape) and all(
        not isinstance(want, int) or want == got for want, got in zip(model_shape, shape)
    )


def encode_response(
    model: str,
    request_id: str | None,
    outputs: Sequence[tuple[str, np.ndarray, bool]],
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a response; outputs are (name, array, binary) in response order."""
    tensors = []
    chunks = []
    for name, array, binary in outputs:
        tensor: dict[str, Any] = {"name": name, "datatype": datatype_of_dtype(array.dtype), "shape": list(array.shape)}
        if binary:
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    document: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": tensors}
    if request_id is not None:
        document["id"] = request_id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, {"content-type": "application/json"}
    return b"".join([header, *chunks]), {
        "content-type": "application/octet-stream",
        BINARY_HEADER: str(len(header)),
    }
