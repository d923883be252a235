"""CSR linear on the CPU: y = x @ W.T + b with W in CsrFormat.

`pack_csr` converts the arrays once per layer (int64 row offsets, float32 values,
column indices kept in their narrow int8/int16/int32 dtype, which the kernels widen
in registers) and splits the rows into tasks of about equal nonzeros; with
gemv_layout "slices" it also builds the row-sliced copy the batch-1 kernel reads
(`pack_slices`; the CsrFormat itself is unchanged). `csr_linear` runs the C kernels
of `_csr_native`: one input row takes the batch-1 kernel of the options' layout
(a gather dot product per row, or one SIMD lane per row over sorted slices);
several take the transposed-input kernel, where each nonzero is a contiguous
batch-wide multiply-add, its tasks cut by output rows or (`splits_by_inputs`) by
tiles of input rows.
"""

from __future__ import annotations

import functools
import threading

from dataclasses import dataclass
from typing import Sequence

import torch

from sparse_rt.kernels.cpu._csr_native import (
    CHAIN_INDEX_CODES,
    CHAIN_LOADS_CODES,
    csr_gemm,
    csr_gemm_blocks,
    csr_gemv,
    csr_slices_chain,
    csr_slices_gemv,
)
from sparse_rt.kernels.cpu._launch import (
    TaskSplit,
    bias_of,
    check_activation,
    check_cpu,
    pointer,
    rows_of,
    shaped_like,
    splits_by_inputs,
    threads,
)
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.configs import CsrOptions, csr_configs, parse_options, simd_width
from sparse_rt.kernels.cpu.gelu import gelu_erf
from sparse_rt.kernels.registry import Config, Kernel, register_kernel

INDEX_NAMES = {torch.int8: "i8", torch.int16: "i16", torch.int32: "i32"}
# Cost of a row beyond its nonzeros (loop set-up, reduction, store), in nonzeros, for the split.
ROW_OVERHEAD = 8
# Cost of a slice beyond its steps (set-up, the scattered store of its outputs), in steps.
SLICE_OVERHEAD = 2


@dataclass(frozen=True)
class CsrSlices:
    """The batch-1 "slices" layout of a CSR weight (SELL-C-sigma: C = `width`, the SIMD width,
    sigma = all rows). Rows are sorted by length, longest first (stable), and cut into slices of
    `width` rows; slice s holds its steps j = 0 .. its longest row's length - 1, step j being
    `width` entries, entry l the j-th nonzero of the slice's l-th row (value 0 past that row's end,
    column index its last column, or 0 for an empty row: a NaN or inf in x there leaks into the
    row, as it does through every zero weight of a dense kernel).

    slice_offsets:  int64 [slices + 1]; slice s is entries slice_offsets[s]:slice_offsets[s + 1]
    slice_rows:     int32 [slices * width]; the output row of each lane, -1 past the last row
    column_indices: the CSR index dtype [slice_offsets[-1]]
    values:         float32 [slice_offsets[-1]]
    slice_bias:     float32 [slices * width]; each lane's bias (0 without a bias or a row)
    tasks:          slice boundaries per thread count, balancing steps
    """

    width: int
    slice_offsets: torch.Tensor
    slice_rows: torch.Tensor
    column_indices: torch.Tensor
    values: torch.Tensor
    slice_bias: torch.Tensor
    tasks: TaskSplit


def pack_slices(row_offsets: torch.Tensor, column_indices: torch.Tensor, values: torch.Tensor,
                bias: torch.Tensor | None, width: int, tasks_per_thread: int) -> CsrSlices:
    """The "slices" layout (CsrSlices) of CSR arrays: row_offsets int64 [out + 1], column_indices
    [nnz], values float32 [nnz], bias float32 [out] or None, `width` rows a slice."""
    out_features = row_offsets.shape[0] - 1
    lengths = row_offsets.diff()
    order = torch.sort(lengths, descending=True, stable=True).indices  # lane position -> row
    slices = -(-out_features // width)
    lanes = slices * width
    slice_rows = torch.full((lanes,), -1, dtype=torch.int32)
    slice_rows[:out_features] = order.to(torch.int32)
    lane_lengths = torch.zeros(lanes, dtype=torch.int64)
    lane_lengths[:out_features] = lengths[order]
    steps = lane_lengths.view(slices, width).amax(1) if slices else lane_lengths[:0]
    slice_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), (steps * width).cumsum(0)])
    total = int(slice_offsets[-1])
    # every entry's place: slice of its row, step = its rank in the row, lane of its row
    position = torch.empty(out_features, dtype=torch.int64)
    position[order] = torch.arange(out_features)
    nnz = values.shape[0]
    entry_rows = torch.repeat_interleave(torch.arange(out_features), lengths, output_size=nnz)
    rank = torch.arange(nnz) - row_offsets[entry_rows]
    row_position = position[entry_rows]
    destination = slice_offsets[row_position // width] + rank * width + row_position % width
    # padding: each lane repeats its row's last column (0 for an empty or missing row)
    last_column = torch.zeros(lanes, dtype=column_indices.dtype)
    filled = lane_lengths > 0
    last_column[filled] = column_indices[row_offsets[slice_rows[filled].long() + 1] - 1]
    within_slice = torch.arange(total) - torch.repeat_interleave(slice_offsets[:-1], steps * width, output_size=total)
    slice_of_entry = torch.repeat_interleave(torch.arange(slices), steps * width, output_size=total)
    padded_indices = last_column[slice_of_entry * width + within_slice % width]
    padded_indices[destination] = column_indices
    padded_values = torch.zeros(total, dtype=torch.float32)
    padded_values[destination] = values
    slice_bias = torch.zeros(lanes, dtype=torch.float32)
    if bias is not None:
        slice_bias[:out_features] = bias[order]
    return CsrSlices(
        width=width,
        slice_offsets=slice_offsets,
        slice_rows=slice_rows,
        column_indices=padded_indices.contiguous(),
        values=padded_values,
        slice_bias=slice_bias,
        tasks=TaskSplit(steps + SLICE_OVERHEAD, tasks_per_thread),
    )


@dataclass(frozen=True)
class CsrPacked:
    """A CSR weight ready for the C kernels.

    row_offsets:    int64 [out + 1]
    column_indices: int8/int16/int32 [nnz] (named by `index`: "i8", "i16", "i32")
    values:         float32 [nnz]
    bias:           float32 [out] or None
    tasks:          row boundaries per thread count, balancing nonzeros
    slices_layout:  whether the batch-1 kernel reads the "slices" layout (gemv_layout "slices");
                    `slices` builds it on first use: a second copy of the nonzeros (the batched
                    kernel reads the rows above), which a layer never called with one row
                    never holds
    """

    shape: tuple[int, int]
    index: str
    row_offsets: torch.Tensor
    column_indices: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor | None
    tasks: TaskSplit
    slices_layout: bool = False
    tasks_per_thread: int = 1

    @functools.cached_property
    def slices(self) -> CsrSlices | None:
        """The batch-1 "slices" layout, built on first use; None without slices_layout."""
        if not self.slices_layout:
            return None
        return pack_slices(self.row_offsets, self.column_indices, self.values, self.bias, simd_width(),
                           self.tasks_per_thread)


def pack_csr_arrays(
    shape: tuple[int, int],
    row_offsets: torch.Tensor,
    column_indices: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    options: CsrOptions,
    what: str = "csr_linear",
) -> CsrPacked:
    """Pack raw CSR arrays (as in CsrFormat) and bias [out] for the kernels."""
    if column_indices.dtype not in INDEX_NAMES:
        raise ValueError(
            f"{what}: expected column_indices of dtype int8, int16 or int32, got {column_indices.dtype}"
        )
    out_features, in_features = shape
    row_offsets = row_offsets.to(torch.int64).contiguous()
    column_indices = column_indices.contiguous()
    values = values.to(torch.float32).contiguous()
    bias = bias_of(bias, out_features, what)
    return CsrPacked(
        shape=(out_features, in_features),
        index=INDEX_NAMES[column_indices.dtype],
        row_offsets=row_offsets,
        column_indices=column_indices,
        values=values,
        bias=bias,
        tasks=TaskSplit(row_offsets.diff() + ROW_OVERHEAD, options.tasks_per_thread),
        slices_layout=options.gemv_layout == "slices",
        tasks_per_thread=options.tasks_per_thread,
    )


def pack_csr(weight, bias: torch.Tensor | None, options: CsrOptions) -> CsrPacked:
    """Pack a CsrFormat (and bias [out]) for the kernels."""
    return pack_csr_arrays(weight.shape, weight.row_offsets, weight.column_indices, weight.values, bias, options)


@dataclass(frozen=True)
class BatchTiles:
    """A batched CSR layer's output left in the next CSR layer's input layout (the batch tiles
    of `_csr_native`), so that neither transposes it: tiles float32 [features * padded rows],
    cut `width` rows wide (batch_vectors * SIMD width), for `rows` rows of the tensor
    [*leading, features] it stands for."""

    tiles: torch.Tensor
    rows: int
    features: int
    leading: tuple[int, ...]
    width: int


def csr_rows_linear(rows: torch.Tensor, packed: CsrPacked, options: CsrOptions, gelu: bool = False) -> torch.Tensor:
    """rows: contiguous float32 [batch, in] -> y: float32 [batch, out] (GELU of it with gelu)."""
    out_features, _ = packed.shape
    batch = rows.shape[0]
    y = torch.empty(batch, out_features, dtype=torch.float32)
    if batch == 0:
        return y
    if batch == 1 and packed.slices_layout:
        num_threads = gemv_threads(options)
        slices = packed.slices
        split = slices.tasks(num_threads)
        csr_slices_gemv(packed.index, options.x_loads)(
            num_threads, split.shape[0] - 1, pointer(split), pointer(slices.slice_offsets),
            pointer(slices.slice_rows), pointer(slices.column_indices), pointer(slices.values),
            pointer(slices.slice_bias), pointer(rows), pointer(y), int(gelu),
        )
        return y
    if batch == 1:
        num_threads = gemv_threads(options)
        split = packed.tasks(num_threads)
        csr_gemv(packed.index, options.unroll)(
            num_threads, split.shape[0] - 1, pointer(split), pointer(packed.row_offsets),
            pointer(packed.column_indices), pointer(packed.values), pointer(packed.bias), pointer(rows), pointer(y),
        )
        return gelu_erf(y) if gelu else y
    _gemm(packed, options, batch, rows, False, y, False, gelu)
    return y


def gemv_threads(options: CsrOptions) -> int:
    """Threads of a batch-1 call: the runtime's count, at most options.gemv_threads (0: no cap)."""
    num_threads = threads()
    return min(num_threads, options.gemv_threads) if options.gemv_threads else num_threads


def _gemm(packed: CsrPacked, options: CsrOptions, batch: int, x: torch.Tensor, x_tiles: bool, y: torch.Tensor,
          y_tiles: bool, gelu: bool) -> None:
    """The batched kernel: x rows [batch, in] (or batch tiles) -> y [batch, out] (or batch tiles).
    Split by input rows where their tiles share out evenly among the threads."""
    out_features, in_features = packed.shape
    num_threads = threads()
    width = options.batch_vectors * simd_width()
    if splits_by_inputs(batch, width, num_threads):
        scratch = None if x_tiles else torch.empty(num_threads * in_features * width, dtype=torch.float32)
        csr_gemm_blocks(packed.index)(
            num_threads, pointer(packed.row_offsets), pointer(packed.column_indices), pointer(packed.values),
            pointer(packed.bias), batch, in_features, out_features, pointer(x), pointer(y), pointer(scratch),
            options.batch_vectors, int(gelu), int(x_tiles), int(y_tiles),
        )
        return
    split = packed.tasks(num_threads)
    # xT scratch: [in, batch padded to the SIMD width], unless x already is
    transposed = None if x_tiles else torch.empty(in_features * _padded(batch), dtype=torch.float32)
    csr_gemm(packed.index)(
        num_threads, split.shape[0] - 1, pointer(split), pointer(packed.row_offsets),
        pointer(packed.column_indices), pointer(packed.values), pointer(packed.bias), batch, in_features,
        out_features, pointer(x), pointer(y), pointer(transposed), options.batch_vectors, int(gelu), int(x_tiles),
        int(y_tiles),
    )


def _padded(batch: int) -> int:
    width = simd_width()
    return -(-batch // width) * width


def csr_linear(x: torch.Tensor | BatchTiles, packed: CsrPacked, options: CsrOptions, gelu: bool = False,
               tiles_out: bool = False) -> torch.Tensor | BatchTiles:
    """x: float32 [..., in] (or BatchTiles of it) -> y: float32 [..., out] (GELU of it with gelu);
    with tiles_out, a batched y stays in batch tiles for the next CSR layer."""
    out_features, in_features = packed.shape
    width = options.batch_vectors * simd_width()
    if isinstance(x, BatchTiles):
        if x.features != in_features or x.width != width:
            raise ValueError(f"csr_linear: input tiles: expected {in_features} features cut {width} rows wide, "
                             f"got {x.features} features cut {x.width} wide")
        batch, leading, rows, x_tiles = x.rows, x.leading, x.tiles, True
    else:
        rows = rows_of(x, in_features, "csr_linear")
        batch, leading, x_tiles = rows.shape[0], tuple(x.shape[:-1]), False
        if batch <= 1 or not tiles_out:
            return shaped_like(csr_rows_linear(rows, packed, options, gelu), x)
    if tiles_out:
        y = torch.empty(out_features * _padded(batch), dtype=torch.float32)
        _gemm(packed, options, batch, rows, x_tiles, y, True, gelu)
        return BatchTiles(y, batch, out_features, leading, width)
    y = torch.empty(batch, out_features, dtype=torch.float32)
    _gemm(packed, options, batch, rows, x_tiles, y, False, gelu)
    return y.reshape(*leading, out_features)


class BoundCsr:
    """x -> csr_linear(x, packed, options, gelu, tiles_out): a layer bound to the CSR kernels.

    A single contiguous float32 row [1, in] with the "slices" layout goes straight to the C
    kernel, its weight-side arguments made once (per thread count for the task split): at
    384x384 and 10 % the kernel takes about 4 us, and the general path spent 7 us more in
    Python."""

    def __init__(self, packed: CsrPacked, options: CsrOptions, gelu: bool, tiles_out: bool) -> None:
        self.packed = packed
        self.options = options
        self.gelu = gelu
        self.tiles_out = tiles_out
        self._row_shape = torch.Size([1, packed.shape[1]])
        self._out_features = packed.shape[0]
        self._launches: dict[int, tuple] = {}
        self._pinned: dict[int, tuple] = {}
        self._lock = threading.Lock()
        self._slices_gemv = csr_slices_gemv(packed.index, options.x_loads) if packed.slices_layout else None

    def _launch(self, num_threads: int) -> tuple:
        """(threads, tasks, task boundaries, weight-side pointers...) of the slices kernel."""
        launch = self._launches.get(num_threads)
        if launch is None:
            # one launch per count, the arrays its pointers point into pinned with it
            with self._lock:
                launch = self._launches.get(num_threads)
                if launch is None:
                    slices = self.packed.slices  # built on the first one-row call
                    split = slices.tasks(num_threads)
                    launch = (num_threads, split.shape[0] - 1, pointer(split), pointer(slices.slice_offsets),
                              pointer(slices.slice_rows), pointer(slices.column_indices), pointer(slices.values),
                              pointer(slices.slice_bias))
                    self._pinned[num_threads] = (slices, split)  # what the pointers point into
                    self._launches[num_threads] = launch
        return launch

    def __call__(self, x):
        if (
            self._slices_gemv is not None
            and type(x) is torch.Tensor
            and x.shape == self._row_shape
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and x.is_contiguous()
        ):
            y = torch.empty(1, self._out_features)
            self._slices_gemv(*self._launch(gemv_threads(self.options)), x.data_ptr(), y.data_ptr(), self.gelu)
            return y
        return csr_linear(x, self.packed, self.options, self.gelu, self.tiles_out)


class CsrRowChain:
    """Layers bound by `bind_csr` with the "slices" layout where each reads the previous one's
    output, run at batch 1 in one C call (`csr_slices_chain`): x float32 [..., in of the first]
    with one row -> y float32 [..., out of the last]. Other row counts are not its to run."""

    def __init__(self, layers: Sequence[BoundCsr]) -> None:
        if len(layers) < 2:
            raise ValueError(f"CsrRowChain: expected at least 2 layers, got {len(layers)}")
        for i, layer in enumerate(layers):
            if not layer.packed.slices_layout:
                raise ValueError(f"CsrRowChain: layer {i}: expected gemv_layout 'slices', got "
                                 f"{layer.options.gemv_layout!r}")
        for i, (a, b) in enumerate(zip(layers, layers[1:])):
            if a.packed.shape[0] != b.packed.shape[1]:
                raise ValueError(f"CsrRowChain: layer {i} gives {a.packed.shape[0]} features but layer {i + 1} "
                                 f"takes {b.packed.shape[1]}")
        self.layers = tuple(layers)
        self.in_features = layers[0].packed.shape[1]
        self.out_features = layers[-1].packed.shape[0]
        self._max_between = max(layer.packed.shape[0] for layer in layers[:-1])
        self._tables: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def _table(self, num_threads: int) -> torch.Tensor:
        """The layers' rows for `csr_slices_chain` at this thread count (task splits differ)."""
        table = self._tables.get(num_threads)
        if table is not None:
            return table
        with self._lock:  # one table per count: a call in flight holds a pointer to it
            table = self._tables.get(num_threads)
            if table is not None:
                return table
            rows = []
            for layer in self.layers:
                cap = layer.options.gemv_threads
                layer_threads, tasks, *pointers = layer._launch(min(num_threads, cap) if cap else num_threads)
                variant = 2 * CHAIN_INDEX_CODES[layer.packed.index] + CHAIN_LOADS_CODES[layer.options.x_loads]
                rows.append([variant, layer_threads, tasks, *pointers, int(layer.gelu)])
            table = torch.tensor(rows, dtype=torch.int64)
            self._tables[num_threads] = table
            return table

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        row = rows_of(x, self.in_features, "csr_row_chain")
        if row.shape[0] != 1:
            raise ValueError(f"csr_row_chain: input 'x': expected one row of {self.in_features}, got {list(x.shape)}")
        num_threads = threads()
        y = torch.empty(1, self.out_features)
        work = torch.empty(2 * self._max_between)
        csr_slices_chain()(len(self.layers), pointer(self._table(num_threads)), pointer(row), pointer(work),
                           self._max_between, pointer(y))
        return shaped_like(y, x)


def bind_csr(weight, bias: torch.Tensor | None, config: Config, device: torch.device, activation: str | None = None,
             tiles_out: bool = False) -> BoundCsr:
    """Kernel.bind: pack once, return x -> csr_linear(x) (GELU'd for activation "gelu"; batched
    outputs left as BatchTiles with tiles_out)."""
    check_cpu(device, "csr_linear")
    check_activation(activation, "csr_linear")
    options = parse_options(CsrOptions, config)
    return BoundCsr(pack_csr(weight, bias, options), options, activation == "gelu", tiles_out)


def csr_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: scatter-add values[k] * x[..., column_indices[k]] into the row of entry k."""
    out_features, _ = weight.shape
    rows = torch.repeat_interleave(torch.arange(out_features), weight.row_offsets.diff().long())
    products = x[..., weight.column_indices.long()] * weight.values.to(x.dtype)
    y = torch.zeros(*x.shape[:-1], out_features, dtype=x.dtype)
    y.index_add_(-1, rows, products)
    return y if bias is None else y + bias.to(x.dtype)


CSR_CPU_ROWWISE = register_kernel(
    Kernel(
        name="csr_cpu_rowwise",
        format="csr",
        backend="cpu",
        bind=bind_csr,
        configs=csr_configs,
        supports=lambda weight, device: native_available() and weight.column_indices.dtype in INDEX_NAMES,
        activations=("gelu",),
    )
)
