"""Fuzzing properties: hypothesis strategies for cases, and the check each case must pass.

Shared by the bounded suites in tests/fuzz and the long run of benchmarks/fuzz.py:
PROPERTIES maps a name to (strategy of cases, check). A check raises AssertionError
on a wrong answer; any crash of the process (segfault, abort) or hang is a bug in
the runtime, never an accepted outcome.

    formats   every weight format: from_dense -> to_dense is exact, arrays round-trip
    kernels   every CPU kernel of every format, at any config its options accept, with
              bias and fused activation, on odd inputs: equal to the dense reference, or
              a clean TypeError/ValueError for inputs it does not take
    graphs    random graphs of supported ops (sparse linear layers among them), random
              shapes: sparse_rt (converted, lowered) equals onnxruntime; bad feeds get
              a clean error
    int8      every CPU int8 kernel (CSR, BSR 1x4, dense) the same way, against the int32
              reference of `sparse_rt.kernels.int8`, tokens with NaN and Inf among the inputs
    files     a saved sparse model truncated, with bytes flipped, or with its nodes,
              attributes and arrays mutated: loading and running either works or
              raises a clean error
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import numpy as np
import onnx
import torch
from hypothesis import assume
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import sparse_rt
from sparse_rt.formats import (
    BitmaskFormat,
    BsrFormat,
    ButterflyFormat,
    CsrFormat,
    DenseFormat,
    NmFormat,
    PermutedFormat,
)
from sparse_rt.formats.base import narrowest_index_dtype
from sparse_rt.kernels.cpu import configs as cpu_configs
from sparse_rt.kernels.registry import kernels_for
from sparse_rt.ops.sparse_linear import SPARSE_DOMAIN

# Errors that report bad input cleanly (ModelFormatError, json's JSONDecodeError and
# UnsupportedOpError are ValueErrors; a failing node raises RuntimeError naming it).
CLEAN_ERRORS = (ValueError, TypeError, NotImplementedError, RuntimeError)
OPSET = 17


def assert_close(actual: Any, expected: Any, what: str, rtol: float = 2e-4) -> None:
    """Same shape; max |actual - expected| <= rtol * max(1, max |expected|) (NaN where the reference has NaN)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape}, expected {e.shape}"
    assert np.array_equal(np.isnan(a), np.isnan(e)), f"{what}: NaN where the reference has none (or the reverse)"
    finite = ~np.isnan(e)
    if not finite.any():
        return
    scale = max(1.0, float(np.abs(e[finite]).max()))
    error = float(np.abs(a[finite] - e[finite]).max())
    assert error <= rtol * scale, f"{what}: max error {error:.3g} over {rtol:g} x scale {scale:.3g}"


# -- weights ------------------------------------------------------------------------------


@st.composite
def masked_weights(draw, max_out: int = 40, max_in: int = 70, dtypes=(torch.float32,)) -> torch.Tensor:
    """A random [out, in] weight: dense, unstructured-sparse, all zero, with empty rows and columns."""
    out_features = draw(st.integers(1, max_out))
    in_features = draw(st.integers(1, max_in))
    seed = draw(st.integers(0, 2**31 - 1))
    density = draw(st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]))
    dtype = draw(st.sampled_from(dtypes))
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(out_features, in_features, generator=generator)
    keep = torch.rand(out_features, in_features, generator=generator) < density
    if draw(st.booleans()):  # whole rows and columns of zeros
        keep[torch.rand(out_features, generator=generator) < 0.3] = False
        keep[:, torch.rand(in_features, generator=generator) < 0.3] = False
    return torch.where(keep, values, torch.zeros(())).to(dtype)


def _block_weight(weight: torch.Tensor, block_shape: tuple[int, int], seed: int) -> torch.Tensor:
    """`weight` with whole r x c tiles zeroed (about half of them)."""
    r, c = block_shape
    rows, columns = -(-weight.shape[0] // r), -(-weight.shape[1] // c)
    keep = torch.rand(rows, columns, generator=torch.Generator().manual_seed(seed)) < 0.5
    mask = keep.repeat_interleave(r, 0).repeat_interleave(c, 1)[: weight.shape[0], : weight.shape[1]]
    return torch.where(mask, weight, torch.zeros((), dtype=weight.dtype))


def _nm_weight(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """`weight` with all but the n largest magnitudes of every group of m inputs zeroed."""
    out_features, in_features = weight.shape
    groups = -(-in_features // m)
    padded = weight.new_zeros(out_features, groups * m)
    padded[:, :in_features] = weight
    grouped = padded.view(out_features, groups, m)
    keep = grouped.abs().topk(n, dim=2).indices
    mask = torch.zeros_like(grouped, dtype=torch.bool).scatter_(2, keep, True)
    return torch.where(mask, grouped, torch.zeros((), dtype=weight.dtype)).view(out_features, -1)[:, :in_features]


def _twiddles(stages: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(stages, 2**stages // 2, 2, 2, generator=torch.Generator().manual_seed(seed)).to(dtype)


@st.composite
def weight_formats(draw, dtypes=(torch.float32,)):
    """(format instance, the dense weight it was built from or stands for)."""
    name = draw(st.sampled_from(["dense", "csr", "bitmask", "bsr", "nm", "butterfly", "permuted"]))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from(dtypes))
    if name in ("dense", "csr", "bitmask"):
        weight = draw(masked_weights(dtypes=(dtype,)))
        cls = {"dense": DenseFormat, "csr": CsrFormat, "bitmask": BitmaskFormat}[name]
        return cls.from_dense(weight), weight
    if name == "bsr":
        side = st.one_of(st.integers(1, 8), st.sampled_from([16, 33, 64]))
        block_shape = (draw(side), draw(side))
        weight = _block_weight(draw(masked_weights(dtypes=(dtype,))), block_shape, seed)
        return BsrFormat.from_dense(weight, block_shape=block_shape), weight
    if name == "nm":
        m = draw(st.sampled_from([1, 2, 3, 4, 8, 16, 37, 128]))
        n = draw(st.integers(1, m))
        weight = _nm_weight(draw(masked_weights(dtypes=(dtype,))), n, m)
        return NmFormat.from_dense(weight, n=n, m=m), weight
    stages = draw(st.integers(1, 6))
    size = 2**stages
    out_features, in_features = draw(st.integers(1, size)), draw(st.integers(1, size))
    if name == "butterfly":
        fmt = ButterflyFormat(in_features, out_features, _twiddles(stages, seed, dtype))
        return fmt, fmt.to_dense()
    layers = draw(st.integers(1, 4))
    n = size + size % 2 if size > 1 else 2
    generator = torch.Generator().manual_seed(seed)
    permutations = torch.stack([torch.randperm(n, generator=generator) for _ in range(layers)])
    blocks = torch.randn(layers, n // 2, 2, 2, generator=generator).to(dtype)
    fmt = PermutedFormat(in_features, out_features, permutations.to(narrowest_index_dtype(n - 1)), blocks)
    return fmt, fmt.to_dense()


# -- formats --------------------------------------------------------------------------------


@dataclass
class FormatCase:
    fmt: Any
    weight: torch.Tensor


@st.composite
def format_cases(draw) -> FormatCase:
    fmt, weight = draw(weight_formats(dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16)))
    return FormatCase(fmt, weight)


def check_format(case: FormatCase) -> None:
    fmt, weight = case.fmt, case.weight
    cls = type(fmt)
    assert fmt.shape == tuple(weight.shape)
    if cls is ButterflyFormat and weight.shape[0] == weight.shape[1] and fmt.n == weight.shape[0]:
        if weight.dtype in (torch.float32, torch.float64):
            rebuilt = ButterflyFormat.from_dense(weight).to_dense()
            assert_close(rebuilt.double(), weight.double(), "butterfly from_dense -> to_dense", rtol=1e-3)
    elif cls is not ButterflyFormat and cls is not PermutedFormat:
        params = {}
        if cls is BsrFormat:
            params = {"block_shape": fmt.block_shape}
        elif cls is NmFormat:
            params = {"n": fmt.n, "m": fmt.m}
        rebuilt = cls.from_dense(weight, **params).to_dense()
        assert rebuilt.dtype == weight.dtype and torch.equal(rebuilt, weight), f"{cls.name}: from_dense -> to_dense"
    again = cls.from_arrays(fmt.arrays(), fmt.attributes()).to_dense()
    assert torch.equal(again, fmt.to_dense()), f"{cls.name}: from_arrays(arrays(), attributes())"
    assert fmt.nbytes == sum(t.numel() * t.element_size() for t in fmt.arrays().values())


# -- kernels --------------------------------------------------------------------------------

_OPTIONS = {
    "dense_cpu_native": cpu_configs.DenseOptions,
    "dense_cpu_torch": cpu_configs.TorchDenseOptions,
    "csr_cpu_rowwise": cpu_configs.CsrOptions,
    "bsr_cpu_blockrow": cpu_configs.BlockOptions,
    "nm_cpu_grouped": cpu_configs.BlockOptions,
    "bitmask_cpu_expand": cpu_configs.BitmaskOptions,
    "butterfly_cpu_stages": cpu_configs.RowsOptions,
    "permuted_cpu_layers": cpu_configs.RowsOptions,
}
# Every value each option field accepts, sampled (the tuning spaces hold only some).
_FIELD_VALUES = {
    "panels_per_task": st.integers(1, 1024),
    "rows_per_tile": st.integers(1, 8),
    "k_block": st.sampled_from([0, 1, 3, 8, 64, 255, 256, 1 << 30]),
    "layout": st.sampled_from(["out_in", "in_out"]),
    "tasks_per_thread": st.integers(1, 256),
    "unroll": st.sampled_from([1, 2, 4]),
    "batch_vectors": st.sampled_from([1, 2, 3, 4]),
    "rows_per_task": st.integers(1, 1 << 20),
    "gemv_layout": st.sampled_from(["rows", "slices"]),
    "x_loads": st.sampled_from(["gather", "scalar"]),
    "gemv_threads": st.integers(0, 1024),
    "batch_rows": st.sampled_from([4, 8]),
    "batched": st.sampled_from(list(cpu_configs.BITMASK_BATCHED)),
    "gemv_expand": st.sampled_from(list(cpu_configs.BITMASK_GEMV_EXPAND)),
}


@dataclass
class KernelCase:
    fmt: Any
    weight: torch.Tensor | None  # dense (float) or, for int8 formats, the int8 values
    kernel: str
    config: dict
    bias: torch.Tensor | None
    activation: str | None
    x: torch.Tensor
    threads: int


@st.composite
def kernel_cases(draw) -> KernelCase:
    fmt, weight = draw(weight_formats())
    kernels = [k for k in kernels_for(fmt, "cpu")]
    assume(kernels)
    kernel = draw(st.sampled_from(kernels))
    if draw(st.booleans()):
        config = draw(st.sampled_from(kernel.configs(fmt, torch.device("cpu"))))
    else:  # any config the options accept, not only the tuning space's
        options = _OPTIONS[kernel.name]
        config = {f.name: draw(_FIELD_VALUES[f.name]) for f in fields(options)}
    case = draw(kernel_cases_for(fmt, kernel.name, config))
    case.weight = weight
    return case


@st.composite
def kernel_cases_for(draw, fmt, kernel: str, config: dict) -> KernelCase:
    """Bias, activation, threads and an input (odd shapes, or one the kernel must refuse) for
    `kernel` over `fmt`; the case's weight is left for the caller (None)."""
    out_features, in_features = fmt.shape
    bias = torch.randn(out_features) if draw(st.booleans()) else None
    activation = draw(st.sampled_from([None, "gelu"]))
    leading = draw(st.sampled_from([(), (0,), (1,), (2,), (3,), (7,), (17,), (33,), (70,), (2, 3), (1, 1, 5)]))
    x = torch.randn(*leading, in_features, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1))))
    bad = draw(st.sampled_from(["none"] * 6 + ["transposed", "float64", "int32", "width", "scalar", "strided"]))
    if bad == "transposed" and x.dim() == 2:
        x = x.T.contiguous().T
    elif bad == "float64":
        x = x.double()
    elif bad == "int32":
        x = x.to(torch.int32)
    elif bad == "width":
        x = torch.randn(*leading, in_features + draw(st.sampled_from([-1, 1, 7])))
    elif bad == "scalar":
        x = torch.tensor(1.0)
    elif bad == "strided":
        x = torch.randn(*leading, 2 * in_features)[..., ::2]
    threads = draw(st.sampled_from([1, 2, 3]))
    return KernelCase(fmt, None, kernel, config, bias, activation, x, threads)


def dense_reference(case: KernelCase) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> the float64 product with the case's dense weight, bias added, GELU'd where fused."""
    def reference(x: torch.Tensor) -> torch.Tensor:
        y = x.double() @ case.weight.double().T
        if case.bias is not None:
            y = y + case.bias.double()
        return torch.nn.functional.gelu(y) if case.activation == "gelu" else y
    return reference


def check_kernel(case: KernelCase, reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 rtol: float = 2e-4) -> None:
    from sparse_rt.kernels.activation import bind_with_activation
    from sparse_rt.kernels.registry import get_kernel

    kernel = get_kernel(case.kernel)
    try:
        linear = bind_with_activation(kernel, case.fmt, case.bias, case.config, torch.device("cpu"), case.activation)
    except ValueError as exc:  # a config its options accept but this machine's kernels do not
        assert "expected" in str(exc), f"{case.kernel}: unclear bind error {exc}"
        return
    out_features, in_features = case.fmt.shape
    x = case.x
    takes = x.dtype == torch.float32 and x.dim() >= 1 and x.shape[-1] == in_features
    previous = torch.get_num_threads()
    torch.set_num_threads(case.threads)
    try:
        y = linear(x)
    except (TypeError, ValueError) as exc:
        assert not takes, f"{case.kernel} refused a float32 [..., {in_features}] input {list(x.shape)}: {exc}"
        assert "input 'x'" in str(exc) or "expected" in str(exc), f"{case.kernel}: unclear error {exc}"
        return
    finally:
        torch.set_num_threads(previous)
    assert takes, f"{case.kernel} took an input it should refuse: {x.dtype} {list(x.shape)}"
    expected = (reference or dense_reference(case))(x)
    assert y.dtype == torch.float32
    assert_close(y.detach().numpy(), expected.numpy(), f"{case.kernel} {case.config}", rtol=rtol)


# -- int8 kernels ---------------------------------------------------------------------------

_INT8_OPTIONS = {
    "csr_int8_cpu": cpu_configs.Int8CsrOptions,
    "bsr_int8_cpu": cpu_configs.Int8CsrOptions,
    "dense_int8_cpu": cpu_configs.Int8DenseOptions,
}


@st.composite
def int8_kernel_cases(draw) -> KernelCase:
    """A KernelCase of an int8 format (its `weight` the int8 values q [out, in])."""
    from sparse_rt.formats import BsrInt8Format, CsrInt8Format, DenseInt8Format

    weight = draw(masked_weights())
    if draw(st.booleans()):  # pruned in 1x4 blocks, as BSR int8 stores them exactly
        weight = _block_weight(weight, (1, 4), draw(st.integers(0, 2**31 - 1)))
    cls = draw(st.sampled_from([CsrInt8Format, BsrInt8Format, DenseInt8Format]))
    fmt = cls.from_dense(weight)
    kernel = draw(st.sampled_from(kernels_for(fmt, "cpu")))
    if draw(st.booleans()):
        config = draw(st.sampled_from(kernel.configs(fmt, torch.device("cpu"))))
    else:
        config = {f.name: draw(_FIELD_VALUES[f.name]) for f in fields(_INT8_OPTIONS[kernel.name])}
    case = draw(kernel_cases_for(fmt, kernel.name, config))
    case.weight = torch.round(fmt.to_dense() / torch.where(fmt.scales > 0, fmt.scales, 1.0)[:, None]).to(torch.int8)
    if case.x.dtype == torch.float32 and case.x.numel() > 1 and draw(st.booleans()):
        case.x = case.x.clone()
        where = np.unravel_index(draw(st.integers(0, case.x.numel() - 1)), tuple(case.x.shape))
        case.x[tuple(int(i) for i in where)] = draw(st.sampled_from([float("nan"), float("inf")]))
    return case


def check_int8_kernel(case: KernelCase) -> None:
    from sparse_rt.kernels.int8 import int8_linear_reference

    def reference(x: torch.Tensor) -> torch.Tensor:
        y = int8_linear_reference(x, case.weight, case.fmt.scales, case.bias).double()
        return torch.nn.functional.gelu(y) if case.activation == "gelu" else y
    check_kernel(case, reference, rtol=1e-5)


# -- graphs ---------------------------------------------------------------------------------


@dataclass
class GraphCase:
    model: onnx.ModelProto
    feeds: list[dict[str, np.ndarray]]  # good feeds (different batch sizes)
    bad_feeds: list[Any] = field(default_factory=list)
    formats_seed: int = 0  # picks the formats, kernels and configs the linear layers are re-encoded in


class _Builder:
    """Grows a graph: values with their concrete shapes (dim 0 is the dynamic batch)."""

    def __init__(self, draw, batch: int):
        self.draw = draw
        self.batch = batch
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.values: list[tuple[str, tuple[int, ...]]] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def constant(self, array: np.ndarray) -> str:
        name = self.name("c")
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attributes) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attributes))
        self.values.append((out, shape))
        return out

    def pick(self) -> tuple[str, tuple[int, ...]]:
        return self.draw(st.sampled_from(self.values))

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.draw(st.integers(0, 2**31 - 1)))


def _sparse_matrix(draw, rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """[rows, columns] with a random sparsity pattern (the converter picks a format for it)."""
    weight = rng.standard_normal((rows, columns)).astype(np.float32)
    pattern = draw(st.sampled_from(["dense", "unstructured", "very_sparse", "block", "2:4", "zero"]))
    if pattern == "unstructured":
        weight[rng.random(weight.shape) < 0.7] = 0
    elif pattern == "very_sparse":
        weight[rng.random(weight.shape) < 0.97] = 0
    elif pattern == "block":
        weight = _block_weight(torch.from_numpy(weight), (8, 8), int(rng.integers(1 << 30))).numpy()
        weight[:, rng.random(columns) < 0.8] = 0
    elif pattern == "2:4":
        weight = _nm_weight(torch.from_numpy(weight.T.copy()), 2, 4).numpy().T.copy()
    elif pattern == "zero":
        weight[:] = 0
    return weight


def _grow(b: _Builder) -> None:
    """Add one random op reading existing values."""
    draw = b.draw
    x, shape = b.pick()
    last = shape[-1]
    op = draw(st.sampled_from([
        "linear", "linear", "linear", "unary", "unary", "binary", "binary_const", "gelu", "softmax",
        "layernorm", "reduce", "transpose", "concat", "clip", "leaky",
    ]))
    if op == "linear":
        rng = b.rng()
        width = draw(st.one_of(st.integers(1, 48), st.sampled_from([64, 128, 256])))
        weight = _sparse_matrix(draw, rng, width, last)  # [out, in]
        if draw(st.booleans()) and len(shape) == 2:
            inputs = [x, b.constant(weight)]
            if draw(st.booleans()):
                inputs.append(b.constant(rng.standard_normal(width)))
            b.node("Gemm", inputs, (shape[0], width), transB=1)
        else:
            y = b.node("MatMul", [x, b.constant(weight.T.copy())], shape[:-1] + (width,))
            if draw(st.booleans()):
                b.node("Add", [y, b.constant(rng.standard_normal(width))], shape[:-1] + (width,))
    elif op == "unary":
        b.node(draw(st.sampled_from(["Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Erf", "Softplus", "Elu"])), [x], shape)
    elif op == "leaky":
        b.node("LeakyRelu", [x], shape, alpha=draw(st.sampled_from([0.01, 0.2])))
    elif op == "binary":
        same = [(name, s) for name, s in b.values if s == shape]
        other, _ = draw(st.sampled_from(same))
        b.node(draw(st.sampled_from(["Add", "Sub", "Mul"])), [x, other], shape)
    elif op == "binary_const":
        constant = b.rng().uniform(0.5, 2.0, draw(st.sampled_from([(), (last,), (1, last)])))
        b.node(draw(st.sampled_from(["Add", "Mul", "Div", "Sub"])), [x, b.constant(constant)],
               shape if constant.ndim < 2 or len(shape) >= 2 else (1,) + shape)
    elif op == "gelu":  # the erf form the converter fuses
        half = b.node("Mul", [x, b.constant(np.array(0.5))], shape)
        scaled = b.node("Div", [x, b.constant(np.array(math.sqrt(2.0)))], shape)
        erf = b.node("Erf", [scaled], shape)
        one = b.node("Add", [erf, b.constant(np.array(1.0))], shape)
        b.node("Mul", [half, one], shape)
    elif op == "softmax":
        b.node("Softmax", [x], shape, axis=-1)
    elif op == "layernorm":
        rng = b.rng()
        b.node("LayerNormalization", [x, b.constant(rng.standard_normal(last)), b.constant(rng.standard_normal(last))],
               shape, axis=-1, epsilon=1e-5)
    elif op == "reduce":
        b.node(draw(st.sampled_from(["ReduceMean", "ReduceMax"])), [x], shape[:-1] + (1,), axes=[-1], keepdims=1)
    elif op == "transpose" and len(shape) == 3:
        b.node("Transpose", [x], (shape[0], shape[2], shape[1]), perm=[0, 2, 1])
    elif op == "concat":
        partners = [(name, s) for name, s in b.values if s[:-1] == shape[:-1]]
        other, other_shape = draw(st.sampled_from(partners))
        b.node("Concat", [x, other], shape[:-1] + (last + other_shape[-1],), axis=-1)
    elif op == "clip":
        b.node("Clip", [x, b.constant(np.array(-1.5)), b.constant(np.array(2.0))], shape)


@st.composite
def graph_cases(draw) -> GraphCase:
    batch = draw(st.integers(1, 4))
    b = _Builder(draw, batch)
    rank = draw(st.sampled_from([2, 3]))
    inputs = []
    for index in range(draw(st.integers(1, 2))):
        dims = tuple(draw(st.one_of(st.integers(1, 24), st.sampled_from([96, 200]))) for _ in range(rank - 1))
        name = f"x{index}"
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims]))
        b.values.append((name, (batch, *dims)))
    for _ in range(draw(st.integers(1, 8))):
        _grow(b)
    produced = [(name, shape) for name, shape in b.values if not name.startswith("x")] or b.values[:1]
    chosen = [produced[-1]] + ([produced[0]] if len(produced) > 1 and draw(st.booleans()) else [])
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch" if shape[0] == batch else shape[0], *shape[1:]])
        for name, shape in chosen
    ]
    if any(name == info.name for info in inputs for name, _ in chosen):
        outputs = [helper.make_tensor_value_info(b.node("Identity", [chosen[0][0]], chosen[0][1]), TensorProto.FLOAT,
                                                 ["batch", *chosen[0][1][1:]])]
    graph = helper.make_graph(b.nodes, "fuzz", inputs, outputs, initializer=b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    shapes = {info.name: [d.dim_value for d in info.type.tensor_type.shape.dim][1:] for info in inputs}
    feeds = [
        {name: rng.standard_normal((rows, *dims)).astype(np.float32) for name, dims in shapes.items()}
        for rows in sorted({batch, draw(st.integers(0, 6))})  # 0 rows too
    ]
    first = feeds[-1]  # the most rows: at least one
    name = next(iter(first))
    bad = [
        {**first, name: first[name].astype(np.float64)},
        {**first, name: first[name].astype(np.int64)},
        {**first, name: first[name][..., None]},
        {**first, name: np.zeros((first[name].shape[0], *(d + 1 for d in first[name].shape[1:])), np.float32)},
        {**first, "extra": first[name]},
        {k: v for k, v in first.items() if k != name},
        [first[name]],
    ]
    if len(first) == 2:
        other = [k for k in first if k != name][0]
        bad.append({name: first[name], other: np.concatenate([first[other], first[other]])})
    return GraphCase(model, feeds, bad, draw(st.integers(0, 2**31 - 1)))


_BLOCK_SHAPES = [(1, 4), (4, 1), (2, 3), (4, 4), (8, 8)]
_NM_PATTERNS = [(2, 4), (1, 4), (4, 8), (1, 1)]


def reencode(graph, seed: int):
    """A copy of a converted graph whose SparseLinear layers hold their weights in random lossless
    formats (CSR, BSR, N:M where it fits, dense), each on a random CPU kernel and config of its space,
    CSR layers chained as the converter chains them; tests every kernel inside whole graphs."""
    import copy

    from sparse_rt.converters.fusion import chain_csr_layers
    from sparse_rt.ops.sparse_linear import sparse_linear_node, weight_of

    rng = np.random.default_rng(seed)
    graph = copy.deepcopy(graph)
    cpu = torch.device("cpu")
    for index, node in enumerate(graph.nodes):
        if node.op_type != "SparseLinear" or node.domain != SPARSE_DOMAIN:
            continue
        dense = weight_of(node, graph.constants).to_dense()
        choices = [CsrFormat.from_dense(dense), DenseFormat.from_dense(dense),
                   BsrFormat.from_dense(dense, block_shape=_BLOCK_SHAPES[rng.integers(len(_BLOCK_SHAPES))])]
        n, m = _NM_PATTERNS[rng.integers(len(_NM_PATTERNS))]
        try:
            choices.append(NmFormat.from_dense(dense, n=n, m=m))
        except ValueError:
            pass
        fmt = choices[rng.integers(len(choices))]
        kernel = kernels_for(fmt, cpu)[rng.integers(len(kernels_for(fmt, cpu)))]
        space = kernel.configs(fmt, cpu)
        arrays = {}
        for field_name, array in fmt.arrays().items():
            arrays[field_name] = f"{node.name or index}.re.{field_name}"
            graph.constants[arrays[field_name]] = array.numpy()
        fresh = sparse_linear_node(node.name, node.inputs[0], node.outputs[0], node.inputs[1], arrays, fmt,
                                   kernel.name, space[rng.integers(len(space))])
        if node.attributes.get("activation"):
            fresh.attributes["activation"] = node.attributes["activation"]
        graph.nodes[index] = fresh
    used = {name for node in graph.nodes for name in node.inputs}
    graph.constants = {name: array for name, array in graph.constants.items() if name in used}
    chain_csr_layers(graph)
    return graph


def check_graph(case: GraphCase) -> None:
    import onnxruntime as ort

    onnx.checker.check_model(case.model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    reference = ort.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    converted = sparse_rt.convert(case.model, tune=False)
    session = sparse_rt.InferenceSession(converted)
    names = [o.name for o in reference.get_outputs()]
    reencoded = sparse_rt.InferenceSession(reencode(converted, case.formats_seed))
    for feeds in case.feeds:
        expected = reference.run(names, feeds)
        rows = next(iter(feeds.values())).shape[0]
        for which, runner in (("converted", session), ("re-encoded", reencoded)):
            for name, a, e in zip(names, runner.run(names, feeds), expected):
                assert_close(a, e, f"{which}: output {name!r} at batch {rows}")
    for feeds in case.bad_feeds:
        try:
            session.run(None, feeds)
        except (TypeError, ValueError) as exc:
            assert "input" in str(exc), f"unclear error for a bad feed: {exc}"
        else:
            raise AssertionError(f"a bad feed was accepted: { {k: (v.dtype, v.shape) for k, v in feeds.items()} }")


# -- model files ----------------------------------------------------------------------------


_BASE: dict[str, bytes] = {}


def base_model() -> bytes:
    """A saved sparse_rt model x [batch, 32] -> y [batch, 8] through SparseLinear layers in every format
    (CSR with GELU, BSR, N:M, bitmask, butterfly, permuted, dense), each on its first CPU kernel (built once)."""
    if "model" not in _BASE:
        from sparse_rt.ir.graph import Graph, Node, Value
        from sparse_rt.ir.onnx_io import graph_to_proto
        from sparse_rt.ops.sparse_linear import sparse_linear_node

        rng = np.random.default_rng(7)
        dense = torch.from_numpy(rng.standard_normal((32, 32)).astype(np.float32))
        generator = torch.Generator().manual_seed(7)
        permutations = torch.stack([torch.randperm(32, generator=generator) for _ in range(2)]).to(torch.int8)
        formats = [
            CsrFormat.from_dense(torch.where(torch.rand(32, 32, generator=generator) < 0.1, dense, 0.0)),
            BsrFormat.from_dense(_block_weight(dense, (8, 4), 3), block_shape=(8, 4)),
            NmFormat.from_dense(_nm_weight(dense, 2, 4), n=2, m=4),
            BitmaskFormat.from_dense(torch.where(torch.rand(32, 32, generator=generator) < 0.5, dense, 0.0)),
            ButterflyFormat(32, 32, _twiddles(5, 7)),
            PermutedFormat(32, 32, permutations, torch.randn(2, 16, 2, 2, generator=generator)),
            DenseFormat.from_dense(dense[:8]),
        ]
        nodes, constants, previous = [], {}, "x"
        for index, fmt in enumerate(formats):
            kernel = kernels_for(fmt, "cpu")[0]
            arrays = {}
            for field_name, array in fmt.arrays().items():
                arrays[field_name] = f"l{index}.{field_name}"
                constants[arrays[field_name]] = array.numpy()
            constants[f"l{index}.bias"] = rng.standard_normal(fmt.shape[0]).astype(np.float32)
            out = "y" if index == len(formats) - 1 else f"h{index}"
            node = sparse_linear_node(f"l{index}", previous, out, f"l{index}.bias", arrays, fmt, kernel.name,
                                      kernel.configs(fmt, torch.device("cpu"))[0])
            if index == 0:
                node.attributes["activation"] = "gelu"
            nodes.append(node)
            previous = out
        graph = Graph([Value("x", "float32", ("batch", 32))], [Value("y", "float32", ("batch", 8))], nodes, constants,
                      {}, OPSET, "base")
        _BASE["model"] = graph_to_proto(graph).SerializeToString()
    return _BASE["model"]


@dataclass
class FileCase:
    data: bytes
    mutation: str


def _integers(draw) -> int:
    return draw(st.one_of(st.integers(-3, 70), st.sampled_from([-(2**31), 2**31 - 1, 2**31, 2**62, -1, 0])))


def _mutate_attribute(draw, node: onnx.NodeProto) -> str:
    from sparse_rt.kernels.registry import KERNELS

    attribute = draw(st.sampled_from(list(node.attribute)))
    if attribute.type == onnx.AttributeProto.INTS:
        values = list(attribute.ints)
        if values and draw(st.booleans()):
            values[draw(st.integers(0, len(values) - 1))] = _integers(draw)
        else:
            values = [_integers(draw) for _ in range(draw(st.integers(0, 3)))]
        del attribute.ints[:]
        attribute.ints.extend(values)
    elif attribute.type == onnx.AttributeProto.INT:
        attribute.i = _integers(draw)
    elif attribute.type == onnx.AttributeProto.STRING and attribute.name == "config":
        try:  # an earlier mutation may have left it unreadable
            config = json.loads(attribute.s) if draw(st.booleans()) else {}
        except ValueError:
            config = {}
        config = config if isinstance(config, dict) else {}
        if config and draw(st.booleans()):
            config[draw(st.sampled_from(sorted(config)))] = draw(st.one_of(
                st.integers(-5, 300), st.sampled_from([2**40, "x", None, 1.5, [], True])))
        else:
            config = draw(st.sampled_from([config, [1, 2], 3, "text", None]))
        attribute.s = (json.dumps(config) if draw(st.integers(0, 9)) else "{not json").encode()
    elif attribute.type == onnx.AttributeProto.STRING and attribute.name == "kernel":
        attribute.s = draw(st.sampled_from(sorted(KERNELS) + ["nope"])).encode()
    elif attribute.type == onnx.AttributeProto.STRING and attribute.name == "format":
        attribute.s = draw(st.sampled_from(["dense", "csr", "bitmask", "bsr", "nm", "butterfly", "permuted", "nope"])).encode()
    elif attribute.type == onnx.AttributeProto.STRINGS:
        values = list(attribute.strings)
        draw(st.randoms()).shuffle(values)
        del attribute.strings[:]
        attribute.strings.extend(values[: draw(st.integers(0, len(values)))])
    else:
        node.attribute.remove(attribute)
        return f"attribute {attribute.name!r} removed"
    return f"attribute {attribute.name!r} of {node.name or node.op_type}"


def _mutate_tensor(draw, tensor: TensorProto) -> str:
    array = numpy_helper.to_array(tensor).copy()
    how = draw(st.sampled_from(["value", "value", "dtype", "truncate", "extend", "reshape", "empty"]))
    if how == "value" and array.size:
        flat = array.reshape(-1)
        index = draw(st.integers(0, flat.size - 1))
        if flat.dtype.kind in "iu":
            info = np.iinfo(flat.dtype)
            # only what the dtype holds: -1 in a uint8 tensor is an error of numpy's, not a mutation
            values = [info.min, info.max, -1, 0, 1, 7, 100, int(flat.max()) + 1]
            flat[index] = draw(st.sampled_from([v for v in values if info.min <= v <= info.max]))
        else:
            flat[index] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e38, 0.0, -0.0]))
    elif how == "dtype":
        with np.errstate(invalid="ignore", over="ignore"):
            array = array.astype(draw(st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.float16, np.float64,
                                                       np.uint8, np.bool_])))
    elif how == "truncate":
        array = array.reshape(-1)[: draw(st.integers(0, max(array.size - 1, 0)))]
    elif how == "extend":
        array = np.concatenate([array.reshape(-1), array.reshape(-1)[:1].repeat(draw(st.integers(1, 9)))])
    elif how == "reshape":
        array = array.reshape(-1, 1) if array.ndim == 1 else array.reshape(-1)
    else:
        array = array.reshape(-1)[:0]
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return f"initializer {tensor.name!r} ({how})"


def _mutate_graph(draw, proto: onnx.ModelProto) -> str:
    graph = proto.graph
    how = draw(st.sampled_from(["input_dim", "input_dtype", "drop_initializer", "rewire", "drop_node", "opset"]))
    if how == "input_dim":
        dim = graph.input[0].type.tensor_type.shape.dim[draw(st.integers(0, 1))]
        dim.dim_value = draw(st.integers(0, 64))
    elif how == "input_dtype":
        graph.input[0].type.tensor_type.elem_type = draw(st.sampled_from([TensorProto.DOUBLE, TensorProto.INT64,
                                                                           TensorProto.FLOAT16, TensorProto.STRING]))
    elif how == "drop_initializer":
        del graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
    elif how == "rewire":
        node = graph.node[draw(st.integers(0, len(graph.node) - 1))]
        names = [i.name for i in graph.initializer] + [v.name for v in graph.input] + ["missing", ""]
        node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(names))
    elif how == "drop_node":
        del graph.node[draw(st.integers(0, len(graph.node) - 1))]
    else:
        proto.opset_import[0].version = draw(st.sampled_from([1, 6, 11, 13, 99]))
    return f"graph: {how}"


@st.composite
def file_cases(draw) -> FileCase:
    data = base_model()
    kind = draw(st.sampled_from(["truncate", "flip", "attribute", "attribute", "tensor", "tensor", "graph"]))
    if kind == "truncate":
        return FileCase(data[: draw(st.integers(0, len(data) - 1))], "truncated")
    if kind == "flip":
        mutable = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            mutable[draw(st.integers(0, len(mutable) - 1))] ^= 1 << draw(st.integers(0, 7))
        return FileCase(bytes(mutable), "bytes flipped")
    proto = onnx.ModelProto()
    proto.ParseFromString(data)
    sparse_nodes = [n for n in proto.graph.node if n.domain == SPARSE_DOMAIN]
    mutations = []
    for _ in range(draw(st.integers(1, 3))):
        if kind == "attribute":
            mutations.append(_mutate_attribute(draw, draw(st.sampled_from(sparse_nodes))))
        elif kind == "tensor":
            tensors = list(proto.graph.initializer)
            mutations.append(_mutate_tensor(draw, draw(st.sampled_from(tensors))))
        else:
            mutations.append(_mutate_graph(draw, proto))
    return FileCase(proto.SerializeToString(), "; ".join(mutations))


def check_file(case: FileCase) -> None:
    """Load and run the (mutated) model: it works, or it raises a clean error."""
    try:
        session = sparse_rt.InferenceSession(case.data)
    except CLEAN_ERRORS:
        return
    feeds = {}
    for arg in session.get_inputs():
        dims = [d if isinstance(d, int) else 3 for d in arg.shape]
        if arg.type != "tensor(float)" or any(d > 64 for d in dims):
            return
        feeds[arg.name] = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    for _ in range(2):  # the second run takes the cached shape path
        try:
            outputs = session.run(None, feeds)
        except CLEAN_ERRORS:
            return
        assert all(isinstance(o, np.ndarray) for o in outputs)


PROPERTIES: dict[str, tuple[Callable[[], st.SearchStrategy], Callable[[Any], None]]] = {
    "formats": (format_cases, check_format),
    "kernels": (kernel_cases, check_kernel),
    "int8": (int8_kernel_cases, check_int8_kernel),
    "graphs": (graph_cases, check_graph),
    "files": (file_cases, check_file),
}
"""name -> (strategy factory, check)."""
