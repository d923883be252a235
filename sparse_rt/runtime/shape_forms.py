"""The ops of shape computations on plain Python values, mirroring the torch ops exactly.

A shape value takes one canonical form: an int64 scalar is an `int`, an int64 vector a
`tuple` of ints, a bool scalar a `bool`; any other value (int32, floats, bool vectors,
rank 2 and more) is a numpy array. Exported models compute their reshape targets from
int64 scalars and vectors (Shape, Gather, Unsqueeze, Concat, ...), where a tuple op costs
a tenth of a microsecond and a numpy op on a 4-element array about one.

`FORMS[op_type](node, opset)` builds a function of a node's inputs in these forms (data
tensors for Shape and Size, which read only the shape) returning its output in canonical
form, with the value, dtype and shape the torch op (`sparse_rt.ops`) gives. A case it
does not mirror (mixed dtypes, an integer division by zero, an index out of range, a
float Range, an overflowing cast, ...) raises: the caller then runs the torch op. A
builder raises `NoForm` for a node it cannot mirror at all (a Cast to bfloat16).
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from sparse_rt.ir.graph import Node
from sparse_rt.ops.common import normalize_axes

FormFn = Callable[..., Any]
FORMS: dict[str, Callable[[Node, int], FormFn]] = {}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT8: np.int8, onnx.TensorProto.INT16: np.int16, onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.UINT64: np.uint64, onnx.TensorProto.BOOL: np.bool_,
}
# dtypes whose arithmetic numpy and torch compute alike (IEEE floats, wrapping integers)
_EXACT = frozenset(np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.float32, np.float64))
_COMPARABLE = _EXACT | {np.dtype(np.bool_)}
_INDEX = frozenset(np.dtype(t) for t in (np.int32, np.int64))
_TUPLE = {tuple}


class NoForm(Exception):
    """A node, or one call of it, that these forms do not mirror."""


def canonical(value: Any) -> Any:
    """A numpy value (array or scalar) in canonical form."""
    value = np.asarray(value)
    if value.dtype == np.int64 and value.ndim <= 1:
        return int(value) if value.ndim == 0 else tuple(value.tolist())
    if value.dtype == np.bool_ and value.ndim == 0:
        return bool(value)
    return value


def as_array(value: Any) -> np.ndarray:
    """A canonical value as a numpy array."""
    if isinstance(value, np.ndarray):
        return value
    return np.array(value, np.bool_ if type(value) is bool else np.int64)


def dims(value: Any) -> tuple[int, ...]:
    """The shape of a canonical value or a tensor."""
    kind = type(value)
    if kind is tuple:
        return (len(value),)
    if kind is int or kind is bool:
        return ()
    return tuple(value.shape)


def _form(*op_types: str):
    def register(builder):
        for op_type in op_types:
            FORMS[op_type] = builder
        return builder

    return register


def _on_arrays(fn: Callable[..., Any]) -> FormFn:
    """fn over numpy arrays as a function of canonical values."""
    return lambda *values: canonical(fn(*(None if v is None else as_array(v) for v in values)))


def _ints(value: Any) -> list[int]:
    """A 0-d or 1-d integer value as a list."""
    if type(value) is tuple:
        return list(value)
    if type(value) is int:
        return [value]
    return [int(v) for v in as_array(value).reshape(-1)]


def _same_dtype(arrays: Sequence[np.ndarray], allowed: frozenset | None) -> None:
    dtype = arrays[0].dtype
    if any(a.dtype != dtype for a in arrays[1:]) or (allowed is not None and dtype not in allowed):
        raise NoForm(f"dtypes {[str(a.dtype) for a in arrays]}")


def _one_dtype(array: Callable[..., Any], allowed: frozenset | None = _EXACT) -> FormFn:
    """`array` over numpy arrays as a function of canonical values of one dtype in `allowed`."""

    def on_arrays(*arrays):
        _same_dtype(arrays, allowed)
        return array(*arrays)

    return _on_arrays(on_arrays)


def _int64(value: int) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise OverflowError("int64 overflow")  # the torch op runs instead, and wraps it
    return value


# ---------------------------------------------------------------- sources


@_form("Shape")
def _shape(node: Node, opset: int) -> FormFn:
    start, end = node.attributes.get("start", 0), node.attributes.get("end")
    if start == 0 and end is None:
        return dims
    return lambda x: dims(x)[start:end]


@_form("Size")
def _size(node: Node, opset: int) -> FormFn:
    return lambda x: math.prod(dims(x))


# ---------------------------------------------------------------- layout


@_form("Identity")
def _identity(node: Node, opset: int) -> FormFn:
    return lambda x: x


@_form("Gather")
def _gather(node: Node, opset: int) -> FormFn:
    axis = int(node.attributes.get("axis", 0))
    lead = (slice(None),) * axis if axis >= 0 else (Ellipsis,)
    trail = () if axis >= -1 else (slice(None),) * (-axis - 1)

    def gather_arrays(data, indices):  # numpy indexing wraps negative indices and checks bounds, as torch's
        if indices.dtype not in _INDEX or data.ndim == 0:
            raise NoForm(f"indices {indices.dtype}, data rank {data.ndim}")
        return data[lead + (indices,) + trail]

    slow = _on_arrays(gather_arrays)
    if axis not in (0, -1):
        return slow

    def gather(data, indices):
        if type(data) is tuple:
            if type(indices) is int:
                return data[indices]  # IndexError out of range, as torch
            if type(indices) is tuple:
                return tuple(data[i] for i in indices)
        return slow(data, indices)

    return gather


def _reshaped(x: Any, shape: list[int]) -> Any:
    """x (canonical) reshaped to `shape` (no 0 entries), without numpy for int64 results of rank <= 1."""
    if type(x) is int or type(x) is tuple:
        flat = (x,) if type(x) is int else x
        if not shape and len(flat) == 1:
            return flat[0]
        if len(shape) == 1 and shape[0] in (-1, len(flat)):
            return flat
    return canonical(np.reshape(as_array(x), shape))


def _unsqueezed(x: Any, axes: list[int]) -> Any:
    """x with size-1 dims at `axes` (positions in the output), as `ops.shape_ops._unsqueezer`."""
    shape = list(dims(x))
    if any(a < 0 for a in axes):
        axes = normalize_axes(axes, len(shape) + len(axes))
    for d in sorted(axes):
        shape.insert(d, 1)
    return _reshaped(x, shape)


@_form("Unsqueeze")
def _unsqueeze(node: Node, opset: int) -> FormFn:
    if opset < 13:
        axes = [int(a) for a in node.attributes.get("axes", [])]
        return lambda x: _unsqueezed(x, axes)

    def unsqueeze(x, axes):
        if type(x) is int and type(axes) is tuple and axes in ((0,), (-1,)):
            return (x,)
        return _unsqueezed(x, _ints(axes))

    return unsqueeze


def _squeezed(x: Any, axes: list[int] | None) -> Any:
    """x without the size-1 dims at `axes` (all of them when empty); other dims are refused,
    as `ops.shape_ops._squeeze` does."""
    if type(x) is tuple and len(x) == 1 and (not axes or axes in ([0], [-1])):
        return x[0]
    if not axes:
        return canonical(np.squeeze(as_array(x)))
    if not dims(x):
        raise NoForm("squeeze of a 0-d value")
    return canonical(np.squeeze(as_array(x), axis=tuple(axes)))


@_form("Squeeze")
def _squeeze(node: Node, opset: int) -> FormFn:
    if opset < 13:
        axes = node.attributes.get("axes")
        axes = None if axes is None else [int(a) for a in axes]
        return lambda x: _squeezed(x, axes)
    return lambda x, axes=None: _squeezed(x, None if axes is None else _ints(axes))


def _reshape_to(x: Any, shape: list[int], allowzero: bool) -> Any:
    """As `ops.shape_ops._reshape_target` then reshape: 0 copies the input dim unless allowzero."""
    if not allowzero and 0 in shape:
        sizes = dims(x)
        if len(shape) > len(sizes) and 0 in shape[len(sizes):]:
            raise NoForm(f"shape {shape}: a 0 past the input rank {len(sizes)}")
        shape = [sizes[i] if s == 0 else s for i, s in enumerate(shape)]
    if 0 in shape:
        return canonical(np.reshape(as_array(x), shape))
    return _reshaped(x, shape)


@_form("Reshape")
def _reshape(node: Node, opset: int) -> FormFn:
    if opset < 5:
        shape = [int(s) for s in node.attributes.get("shape", [])]
        return lambda x: _reshape_to(x, shape, False)
    allowzero = bool(node.attributes.get("allowzero", 0))
    return lambda x, shape: _reshape_to(x, _ints(shape), allowzero)


@_form("Concat")
def _concat(node: Node, opset: int) -> FormFn:
    axis = int(node.attributes.get("axis", 1))
    slow = _one_dtype(lambda *arrays: np.concatenate(arrays, axis), allowed=None)
    if axis not in (0, -1):
        return slow

    def concat(*values):
        if set(map(type, values)) == _TUPLE:
            return functools.reduce(operator.add, values)
        return slow(*values)

    return concat


def _sliced(x: np.ndarray, starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None):
    """As `ops.indexing._slice`: python slices for positive steps; a negative step takes
    indices from the start clamped to [0, dim - 1] down to the end clamped to [-1, dim - 1]."""
    if x.ndim == 0 or len(ends) != len(starts):
        raise NoForm(f"slice of rank {x.ndim}, {len(starts)} starts, {len(ends)} ends")
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index: list[Any] = [slice(None)] * x.ndim
    reversed_axes = []
    for start, end, axis, step in zip(starts, ends, normalize_axes(axes, x.ndim), steps):
        if step > 0:
            index[axis] = slice(start, end, step)
        elif step < 0:
            reversed_axes.append((axis, start, end, step))
        else:
            raise NoForm("a zero step")
    y = x[tuple(index)]
    for axis, start, end, step in reversed_axes:
        dim = y.shape[axis]
        start = min(max(start + dim if start < 0 else start, 0), dim - 1)
        end = min(max(end + dim if end < 0 else end, -1), dim - 1)
        y = np.take(y, np.arange(start, end, step), axis)
    return canonical(y)


@_form("Slice")
def _slice(node: Node, opset: int) -> FormFn:
    if opset < 10:
        starts = [int(v) for v in node.attributes["starts"]]
        ends = [int(v) for v in node.attributes["ends"]]
        axes = node.attributes.get("axes")
        axes = None if axes is None else [int(a) for a in axes]
        return lambda x: _sliced(as_array(x), starts, ends, axes, None)

    def slice_(x, starts, ends, axes=None, steps=None):
        return _sliced(as_array(x), _ints(starts), _ints(ends), None if axes is None else _ints(axes),
                       None if steps is None else _ints(steps))

    return slice_


# ---------------------------------------------------------------- arithmetic


@_form("Cast")
def _cast(node: Node, opset: int) -> FormFn:
    to = node.attributes["to"]
    to = onnx.TensorProto.DataType.Value(to) if isinstance(to, str) else int(to)
    if to not in _ONNX_TO_NUMPY:
        raise NoForm(f"cast to {onnx.TensorProto.DataType.Name(to)}")
    dtype = np.dtype(_ONNX_TO_NUMPY[to])

    def cast_array(x):
        # floats outside an integer type's range (and NaN) convert as the platform decides
        if dtype.kind in "iu" and x.dtype.kind == "f" and x.size:
            info = np.iinfo(dtype)
            if not (np.all(x >= info.min) and np.all(x < info.max + 1)):
                raise NoForm("a float outside the integer range")
        return x.astype(dtype)

    slow = _on_arrays(cast_array)
    if dtype == np.int64:
        return lambda x: x if type(x) is int or type(x) is tuple else int(x) if type(x) is bool else slow(x)
    if dtype == np.bool_:
        return lambda x: bool(x) if type(x) is int or type(x) is bool else slow(x)
    return slow


def _elementwise(fn: Callable[[int, int], Any], a: Any, b: Any) -> Any:
    """fn on int64 scalars and vectors broadcast against each other; None for other forms."""
    kind_a, kind_b = type(a), type(b)
    if kind_a is int:
        if kind_b is int:
            return fn(a, b)
        if kind_b is tuple:
            return tuple(fn(a, y) for y in b)
    elif kind_a is tuple:
        if kind_b is int:
            return tuple(fn(x, b) for x in a)
        if kind_b is tuple and len(a) == len(b):
            return tuple(fn(x, y) for x, y in zip(a, b))
    return None


def _trunc_divide(a: int, b: int) -> int:
    quotient = abs(a) // abs(b)  # ZeroDivisionError for 0, as torch's integer Div
    return _int64(quotient if (a < 0) == (b < 0) else -quotient)


def _divide_arrays(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return a / b
    if not np.all(b):
        raise ZeroDivisionError("integer division by zero")
    quotient = a // b  # floor; torch's integer Div truncates toward zero
    return quotient + ((a % b != 0) & ((a < 0) != (b < 0))).astype(a.dtype)


def _remainder_arrays(fmod: bool) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def remainder(a, b):
        if a.dtype.kind not in "iu":
            raise NoForm(f"{a.dtype} operands")
        if not np.all(b):
            raise ZeroDivisionError("integer division by zero")
        return np.fmod(a, b) if fmod else np.remainder(a, b)

    return remainder


def _binary(scalar: Callable[[int, int], Any], array: Callable[[Any, Any], Any]) -> Callable[[Node, int], FormFn]:
    """An op computing `scalar` on int64 scalars and vectors, `array` on numpy arrays otherwise."""
    slow = _one_dtype(array)

    def build(node: Node, opset: int) -> FormFn:
        def run(a, b):
            result = _elementwise(scalar, a, b)
            return slow(a, b) if result is None else result

        return run

    return build


def _wrapping(fn: Callable[[int, int], int]) -> Callable[[int, int], int]:
    return lambda a, b: _int64(fn(a, b))


_form("Add")(_binary(_wrapping(operator.add), np.add))
_form("Sub")(_binary(_wrapping(operator.sub), np.subtract))
_form("Mul")(_binary(_wrapping(operator.mul), np.multiply))
_form("Div")(_binary(_trunc_divide, _divide_arrays))


def _comparison(scalar: Callable[[int, int], bool], array: Callable[[Any, Any], Any]) -> Callable[[Node, int], FormFn]:
    """A comparison: bool scalars for int64 scalars, numpy bool arrays otherwise."""
    slow = _one_dtype(array, _COMPARABLE)

    def build(node: Node, opset: int) -> FormFn:
        def compare(a, b):
            if type(a) is int and type(b) is int:
                return scalar(a, b)
            if type(a) is tuple and type(b) is tuple and len(a) == len(b):
                return np.array([scalar(x, y) for x, y in zip(a, b)], np.bool_)
            return slow(a, b)

        return compare

    return build


_form("Equal")(_comparison(operator.eq, np.equal))
_form("Less")(_comparison(operator.lt, np.less))
_form("Greater")(_comparison(operator.gt, np.greater))


@_form("Mod")
def _mod(node: Node, opset: int) -> FormFn:
    fmod = int(node.attributes.get("fmod", 0))
    if fmod not in (0, 1):
        raise NoForm(f"fmod={fmod}")

    def scalar(a: int, b: int) -> int:
        if fmod:  # C fmod: the sign of the dividend
            remainder = abs(a) % abs(b)
            return -remainder if a < 0 else remainder
        return a % b  # the sign of the divisor; ZeroDivisionError for 0, as torch

    return _binary(scalar, _remainder_arrays(bool(fmod)))(node, opset)


@_form("Max", "Min")
def _extreme(node: Node, opset: int) -> FormFn:
    scalar, array = (max, np.maximum) if node.op_type == "Max" else (min, np.minimum)
    slow = _one_dtype(lambda *arrays: functools.reduce(array, arrays))
    return lambda *values: scalar(values) if all(type(v) is int for v in values) else slow(*values)


def _unary(scalar: Callable[[int], int] | None, array: Callable[[np.ndarray], np.ndarray], kinds: str):
    def on_array(x):
        if x.dtype not in _EXACT or x.dtype.kind not in kinds:
            raise NoForm(f"a {x.dtype} operand")
        return array(x)

    slow = _on_arrays(on_array)

    def build(node: Node, opset: int) -> FormFn:
        if scalar is None:
            return slow
        return lambda x: _int64(scalar(x)) if type(x) is int else slow(x)

    return build


_form("Abs")(_unary(abs, np.abs, "iuf"))
_form("Neg")(_unary(operator.neg, np.negative, "if"))
_form("Ceil")(_unary(None, np.ceil, "f"))
_form("Floor")(_unary(None, np.floor, "f"))
_form("Sqrt")(_unary(None, np.sqrt, "f"))


@_form("Not")
def _not(node: Node, opset: int) -> FormFn:
    slow = _on_arrays(np.logical_not)
    return lambda x: not x if type(x) is bool else slow(x)


@_form("Where")
def _where(node: Node, opset: int) -> FormFn:
    def where_arrays(condition, x, y):
        if condition.dtype != np.bool_:
            raise NoForm(f"a {condition.dtype} condition")
        _same_dtype((x, y), allowed=None)
        return np.where(condition, x, y)

    slow = _on_arrays(where_arrays)

    def where(condition, x, y):
        if type(condition) is bool and type(x) is type(y) and (type(x) is int or (type(x) is tuple and len(x) == len(y))):
            return x if condition else y
        if (type(x) is tuple and type(y) is tuple and isinstance(condition, np.ndarray)
                and condition.dtype == np.bool_ and condition.shape == (len(x),) == (len(y),)):
            return tuple(a if c else b for c, a, b in zip(condition.tolist(), x, y))
        return slow(condition, x, y)

    return where


@_form("Range")
def _range(node: Node, opset: int) -> FormFn:
    def range_(start, limit, delta):
        if type(start) is int and type(limit) is int and type(delta) is int:
            if delta == 0:
                raise NoForm("a zero delta")
            return tuple(range(start, limit, delta))  # ONNX's length, max(ceil((limit - start) / delta), 0)
        start, limit, delta = as_array(start), as_array(limit), as_array(delta)
        if start.dtype not in _INDEX or any(v.dtype.kind not in "iu" or v.size != 1 for v in (start, limit, delta)):
            raise NoForm(f"a range over {start.dtype}")
        step = int(delta.item())
        if step == 0:
            raise NoForm("a zero delta")
        return canonical(np.arange(int(start.item()), int(limit.item()), step, dtype=start.dtype))

    return range_


@_form("ReduceProd")
def _reduce_prod(node: Node, opset: int) -> FormFn:
    keepdims = bool(node.attributes.get("keepdims", 1))
    noop = bool(node.attributes.get("noop_with_empty_axes", 0)) and opset >= 18

    def reduce(x, axes):
        x = as_array(x)
        if x.dtype not in _EXACT or x.dtype.kind not in "iu":  # a float product depends on the order
            raise NoForm(f"a {x.dtype} product")
        if not axes:
            return canonical(x if noop else np.prod(x, keepdims=keepdims, dtype=x.dtype))
        return canonical(np.prod(x, axis=tuple(axes), keepdims=keepdims, dtype=x.dtype))

    if opset < 18:
        attribute = node.attributes.get("axes")
        axes = [int(a) for a in attribute] if attribute else []
        return lambda x: reduce(x, axes)
    return lambda x, axes=None: reduce(x, [] if axes is None else _ints(axes))
