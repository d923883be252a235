"""Helpers shared by the op modules: dtypes, axes, attribute and constant-input parsing.

Errors say what was expected and found; the session prefixes them with the node.

Binders call these once per node at load; on the per-run path only `to_ints`
(a small int64 tensor such as axes or pads -> python list) and the axis checks
of ops whose axes arrive at run time.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from onnx import TensorProto

from sparse_rt.ir.graph import Node
from sparse_rt.ops.registry import BindContext

ONNX_TO_TORCH_DTYPE: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.UINT8: torch.uint8,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT16: torch.uint16,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.BOOL: torch.bool,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.UINT32: torch.uint32,
    TensorProto.UINT64: torch.uint64,
    TensorProto.COMPLEX64: torch.complex64,
    TensorProto.COMPLEX128: torch.complex128,
    TensorProto.BFLOAT16: torch.bfloat16,
}


def torch_dtype(elem_type: int, what: str = "to") -> torch.dtype:
    """The torch dtype of an ONNX element type; ValueError naming the attribute `what` if unsupported."""
    dtype = ONNX_TO_TORCH_DTYPE.get(int(elem_type))
    if dtype is None:
        known = int(elem_type) in TensorProto.DataType.values()
        name = TensorProto.DataType.Name(int(elem_type)) if known else elem_type
        supported = ", ".join(TensorProto.DataType.Name(t) for t in ONNX_TO_TORCH_DTYPE)
        raise ValueError(f"attribute {what!r}: expected one of {supported}, got {name}")
    return dtype


def to_torch(array: np.ndarray | Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """A numpy array (or python scalar/list) as a torch tensor on `device` (always a copy)."""
    array = np.asarray(array)
    if array.dtype.kind in "OUS":
        raise ValueError(f"expected a numeric or bool array, got dtype {array.dtype}")
    return torch.from_numpy(np.array(array, copy=True)).to(device)


def has_input(node: Node, index: int) -> bool:
    """Whether optional input `index` is present (not omitted, not an empty name)."""
    return index < len(node.inputs) and bool(node.inputs[index])


def constant_input(node: Node, ctx: BindContext, index: int) -> np.ndarray | None:
    """The constant value of input `index`, or None if absent or computed at run time."""
    if not has_input(node, index):
        return None
    return ctx.constant(node.inputs[index])


def is_static(node: Node, ctx: BindContext, index: int) -> bool:
    """True when input `index` is omitted or a constant, so a binder can precompute it."""
    return not has_input(node, index) or ctx.constant(node.inputs[index]) is not None


def to_ints(tensor: torch.Tensor | np.ndarray | None) -> list[int] | None:
    """A 0-d or 1-d integer tensor as a python list (None stays None)."""
    if tensor is None:
        return None
    if isinstance(tensor, np.ndarray):
        return [int(v) for v in tensor.reshape(-1)]
    return tensor.reshape(-1).tolist()


def broadcast_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    """The broadcast of two shapes, None where they do not broadcast. Plain Python: the first
    torch.broadcast_shapes of a process imports sympy and some 480 other modules (34 MiB)."""
    a, b = (1,) * (len(b) - len(a)) + tuple(a), (1,) * (len(a) - len(b)) + tuple(b)
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        return None
    return tuple(y if x == 1 else x for x, y in zip(a, b))


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    """`axis` in [-rank, rank) mapped to [0, rank); ValueError naming `what` otherwise."""
    if not -rank <= axis < rank:
        raise ValueError(f"{what}: expected a value in [{-rank}, {rank - 1}] for a rank-{rank} input, got {axis}")
    return axis + rank if axis < 0 else axis


def normalize_axes(axes: Sequence[int], rank: int, what: str = "axes") -> list[int]:
    """Each axis normalized as in `normalize_axis`; duplicates rejected."""
    result = [normalize_axis(int(a), rank, what) for a in axes]
    if len(set(result)) != len(result):
        raise ValueError(f"{what}: expected distinct axes, got {list(axes)}")
    return result


def check_attribute(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """`value` if it is one of `allowed`, else ValueError naming the attribute."""
    if value not in allowed:
        raise ValueError(f"attribute {name!r}: expected one of {list(allowed)}, got {value!r}")
    return value
