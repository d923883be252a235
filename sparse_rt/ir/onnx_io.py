"""Graph <-> ONNX ModelProto, and reading/writing model files.

On disk a graph is a standard ONNX model: dense ops stay standard ONNX, the
project's own ops (SparseLinear) live in domain `ai.sparse_rt`, their format
arrays are initializers. Reading parses protobuf only: no code is ever run.

Protobuf cannot serialize a message of 2 GiB or more. Past EXTERNAL_DATA_BYTES of
constants, `save` writes the tensors to a file beside the model (ONNX external data,
as torch.onnx.export does for large models), named after their digest; models that
arrive with external data are read the same way, their tensors mapped from the file.
The model's checksum covers where each tensor lies in that file; the file itself is
checked by its size (hashing it would read every page a mapping leaves on disk).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from sparse_rt.ir.graph import SPARSE_DOMAIN, Dim, Graph, Node, Value

SPARSE_DOMAIN_VERSION = 1
PRODUCER = "sparse_rt"
CHECKSUM_KEY = "sparse_rt.sha256"
# Constants past this many bytes go to an external data file (protobuf's limit is 2 GiB for
# the whole model; the rest of the graph is small)
EXTERNAL_DATA_BYTES = 1536 << 20


class ModelFormatError(ValueError):
    """A model file or object that is not a readable ONNX model."""


def read_model_proto(model: str | os.PathLike | bytes | onnx.ModelProto, external_data: bool = True) -> onnx.ModelProto:
    """Parse a path, serialized bytes or a ModelProto; errors name the source. external_data:
    False leaves a file's external tensors unread (`load_external_data` reads them)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _parse(bytes(model), "model bytes")
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"model file {str(path)!r} does not exist")
        if not path.is_file():
            raise ModelFormatError(f"model file {str(path)!r}: expected a file, found a directory")
        proto = _parse(path.read_bytes(), f"model file {str(path)!r}")
        if external_data:
            load_external_data(proto, path)
        return proto
    raise TypeError(
        "model: expected a path, bytes, onnx.ModelProto, sparse_rt Graph or torch.nn.Module, "
        f"got {type(model).__name__}"
    )


def load_external_data(proto: onnx.ModelProto, model: Any) -> None:
    """Read the external tensors of `proto`, parsed from the file `model`, into it (a model given
    as bytes or a ModelProto has none to read)."""
    if isinstance(model, (str, os.PathLike)) and any(_uses_external_data(t) for t in proto.graph.initializer):
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(Path(model).parent))
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"model file {str(model)!r}: its external data cannot be read: {exc}") from None


def external_arrays(proto: onnx.ModelProto, model: Any) -> dict[str, np.ndarray]:
    """The external tensors of `proto`, parsed from the file `model`, as arrays mapped from their
    files (copy-on-write: pages are read when touched, and a 2 GiB table costs no copy):
    {initializer name: array}. ModelFormatError naming the file when one is missing or short."""
    arrays = {}
    for tensor in proto.graph.initializer:
        if not _uses_external_data(tensor):
            continue
        if not isinstance(model, (str, os.PathLike)):
            raise ModelFormatError(f"initializer {tensor.name!r}: its data is in an external file, but the model "
                                   "came without a path to find it beside: pass the model's path")
        info = onnx.external_data_helper.ExternalDataInfo(tensor)
        path = Path(model).parent / info.location
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        count = int(np.prod(tensor.dims, dtype=np.int64))
        offset = max(int(info.offset or 0), 0)
        length = count * dtype.itemsize
        inside = not Path(info.location).is_absolute() and ".." not in Path(info.location).parts
        available = path.stat().st_size - offset if inside and path.is_file() else -1
        if info.length not in (None, length) or available < length:
            raise ModelFormatError(
                f"model file {str(model)!r}: initializer {tensor.name!r} expects {length} bytes at offset {offset} "
                f"of its external data file {info.location!r}, which " + (
                    "is not a file under the model's directory" if available < 0 else f"holds {max(available, 0)} there"))
        mapped = np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=tuple(tensor.dims)) if count else None
        arrays[tensor.name] = np.zeros(tensor.dims, dtype) if mapped is None else mapped.view(np.ndarray)
    return arrays


def _parse(data: bytes, source: str) -> onnx.ModelProto:
    if not data:
        raise ModelFormatError(f"{source}: empty, expected a serialized ONNX ModelProto")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelFormatError(
            f"{source}: not a valid ONNX model ({type(exc).__name__}: {exc}); "
            "the file is truncated, corrupted or of another kind"
        ) from None
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelFormatError(
            f"{source}: parsed, but holds no ONNX graph or opset import; "
            "it is not an ONNX model (or is corrupted)"
        )
    _verify_checksum(proto, source)
    return proto


def _checksum(proto: onnx.ModelProto) -> str:
    """sha256 of the model serialized without its checksum entry."""
    unsigned = onnx.ModelProto()
    unsigned.CopyFrom(proto)
    entries = [(p.key, p.value) for p in unsigned.metadata_props if p.key != CHECKSUM_KEY]
    del unsigned.metadata_props[:]
    for key, value in entries:
        unsigned.metadata_props.add(key=key, value=value)
    return hashlib.sha256(unsigned.SerializeToString(deterministic=True)).hexdigest()


def _verify_checksum(proto: onnx.ModelProto, source: str) -> None:
    recorded = next((p.value for p in proto.metadata_props if p.key == CHECKSUM_KEY), None)
    if recorded is not None and recorded != _checksum(proto):
        raise ModelFormatError(
            f"{source}: checksum mismatch (expected sha256 {recorded[:12]}..., found "
            f"{_checksum(proto)[:12]}...): the file was corrupted or edited after it was saved"
        )


def _uses_external_data(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL


def onnx_dtype_name(elem_type: int) -> str:
    """ONNX element type -> numpy dtype name ("float32"); ModelFormatError for a type ONNX does not define."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        raise ModelFormatError(f"unknown ONNX element type {elem_type}") from None


def _constant(tensor: TensorProto) -> np.ndarray:
    """An initializer as an array; ModelFormatError naming it if its type or data is unreadable."""
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # onnx raises KeyError, ValueError, TypeError for bad types and sizes
        raise ModelFormatError(
            f"initializer {tensor.name!r}: unreadable (data type {tensor.data_type}, dims {list(tensor.dims)}): "
            f"{type(exc).__name__}: {exc}"
        ) from None


def _value_from_proto(info: onnx.ValueInfoProto) -> Value:
    tensor_type = info.type.tensor_type
    dtype = onnx_dtype_name(tensor_type.elem_type) if tensor_type.elem_type else "float32"
    shape: tuple[Dim, ...] | None = None
    if tensor_type.HasField("shape"):
        dims: list[Dim] = []
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim.dim_param:
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return Value(info.name, dtype, shape)


def _value_to_proto(value: Value) -> onnx.ValueInfoProto:
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(value.dtype))
    shape = None if value.shape is None else list(value.shape)
    return helper.make_tensor_value_info(value.name, elem_type, shape)


def _attribute_value(attr: AttributeProto, node_label: str) -> Any:
    if attr.type == AttributeProto.TENSOR:
        return _constant(attr.t)
    if attr.type == AttributeProto.STRING:
        return attr.s.decode("utf-8")
    if attr.type == AttributeProto.STRINGS:
        return [s.decode("utf-8") for s in attr.strings]
    if attr.type == AttributeProto.INTS:
        return [int(v) for v in attr.ints]
    if attr.type == AttributeProto.FLOATS:
        return [float(v) for v in attr.floats]
    if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
        raise ModelFormatError(
            f"node {node_label!r}: attribute {attr.name!r} holds a subgraph; "
            "control flow (If/Loop/Scan) is not supported"
        )
    return helper.get_attribute_value(attr)


def _attribute_proto(name: str, value: Any) -> AttributeProto:
    if isinstance(value, np.ndarray):
        return helper.make_attribute(name, numpy_helper.from_array(value))
    if isinstance(value, (list, tuple)) and len(value) == 0:
        return helper.make_attribute(name, [], attr_type=AttributeProto.INTS)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in value):
        return helper.make_attribute(name, [int(v) for v in value], attr_type=AttributeProto.INTS)
    return helper.make_attribute(name, value)


def graph_from_proto(proto: onnx.ModelProto, external: dict[str, np.ndarray] | None = None) -> Graph:
    """A faithful IR copy of an ONNX model (no folding, no lowering); the initializers in
    `external` (those whose data lies in external files: `external_arrays`) as those arrays."""
    onnx_graph = proto.graph
    external = external or {}
    constants = {t.name: external[t.name] if t.name in external else _constant(t) for t in onnx_graph.initializer}
    nodes: list[Node] = []
    for index, n in enumerate(onnx_graph.node):
        label = n.name or (n.output[0] if n.output else f"#{index}")
        attributes = {a.name: _attribute_value(a, label) for a in n.attribute}
        domain = "" if n.domain in ("", "ai.onnx") else n.domain
        nodes.append(Node(n.op_type, list(n.input), list(n.output), attributes, n.name, domain))
    inputs = [_value_from_proto(v) for v in onnx_graph.input if v.name not in constants]
    outputs = [_value_from_proto(v) for v in onnx_graph.output]
    value_info = {v.name: _value_from_proto(v) for v in onnx_graph.value_info}
    opset = next(
        (o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None
    )
    if opset is None:
        raise ModelFormatError("model imports no version of the default ONNX domain ('ai.onnx')")
    graph = Graph(inputs, outputs, nodes, constants, value_info, int(opset), onnx_graph.name or "graph")
    return graph


def graph_to_proto(graph: Graph, external: dict[str, TensorProto] | None = None) -> onnx.ModelProto:
    """The ONNX ModelProto of a graph (opset imports for ai.onnx and ai.sparse_rt); the constants
    in `external` as those TensorProtos (their data in a file, see `save`)."""
    external = external or {}
    nodes = []
    for node in graph.nodes:
        proto_node = helper.make_node(
            node.op_type, node.inputs, node.outputs, name=node.name or None, domain=node.domain or None
        )
        proto_node.attribute.extend(_attribute_proto(k, v) for k, v in node.attributes.items())
        nodes.append(proto_node)
    onnx_graph = helper.make_graph(
        nodes,
        graph.name,
        [_value_to_proto(v) for v in graph.inputs],
        [_value_to_proto(v) for v in graph.outputs],
        initializer=[external[name] if name in external else numpy_helper.from_array(np.asarray(a), name)
                     for name, a in graph.constants.items()],
        value_info=[_value_to_proto(v) for v in graph.value_info.values()],
    )
    opsets = [helper.make_opsetid("", graph.opset)]
    if any(n.domain == SPARSE_DOMAIN for n in graph.nodes):
        opsets.append(helper.make_opsetid(SPARSE_DOMAIN, SPARSE_DOMAIN_VERSION))
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name=PRODUCER)
    model.ir_version = min(model.ir_version, 10)
    return model


def save(graph: Graph, path: str | os.PathLike) -> None:
    """Write a graph as an ONNX file, atomically (a crash never leaves half a file). Constants
    past EXTERNAL_DATA_BYTES go to `<name>.<digest>.data` beside it, written before the model
    that names it; the data file a previous save left is then removed."""
    if not isinstance(graph, Graph):
        raise TypeError(f"save: expected a sparse_rt Graph, got {type(graph).__name__}")
    path = Path(path)
    data_file, external = None, {}
    if sum(np.asarray(a).nbytes for a in graph.constants.values()) > EXTERNAL_DATA_BYTES:
        data_file, external = _write_external_data(graph.constants, path)
    proto = graph_to_proto(graph, external)
    proto.metadata_props.add(key=CHECKSUM_KEY, value=_checksum(proto))
    with _replacing(path) as f:
        f.write(proto.SerializeToString(deterministic=True))
    for stale in path.parent.glob(f"{path.name}.*.data"):
        if stale.name != data_file:
            stale.unlink(missing_ok=True)


def _write_external_data(constants: dict[str, Any], path: Path) -> tuple[str, dict[str, TensorProto]]:
    """Write the numeric constants of 1 KiB or more into one file beside `path`, named after their
    digest: (the file's name, {constant: TensorProto naming its place in the file})."""
    arrays = {name: np.ascontiguousarray(a) for name, a in constants.items()}
    arrays = {name: a for name, a in arrays.items() if a.nbytes >= 1024 and a.dtype.kind in "biuf"}
    digest = hashlib.sha256()
    for a in arrays.values():
        digest.update(memoryview(a).cast("B"))
    name = f"{path.name}.{digest.hexdigest()[:16]}.data"
    tensors = {}
    with _replacing(path.parent / name) as f:
        for constant, a in arrays.items():
            tensor = TensorProto(name=constant, data_type=helper.np_dtype_to_tensor_dtype(a.dtype), dims=a.shape,
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", name), ("offset", str(f.tell())), ("length", str(a.nbytes))):
                tensor.external_data.add(key=key, value=value)
            f.write(memoryview(a).cast("B"))
            tensors[constant] = tensor
    return name, tensors


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[BinaryIO]:
    """A file whose contents replace `path` when the block ends without an error, and are
    deleted when it raises: `path` is never half written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(model: str | os.PathLike | bytes | onnx.ModelProto) -> Graph:
    """Read a model saved by `save` (or any ONNX model) into a Graph, as it is; tensors in an
    external data file are mapped from it (`external_arrays`)."""
    return graph_from_file(read_model_proto(model, external_data=False), model)


def graph_from_file(proto: onnx.ModelProto, model: Any) -> Graph:
    """`load` of the proto already read from `model` (external tensors left unread)."""
    graph = graph_from_proto(proto, external_arrays(proto, model))
    graph.validate()
    return graph
