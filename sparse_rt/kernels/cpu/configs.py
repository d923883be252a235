"""Options of the CPU kernels and the tuning spaces built over them.

Each kernel family has a frozen dataclass of options; a config (what the registry
and the saved model hold) is that dataclass as a JSON dict, and `parse_options`
turns it back, saying what is wrong with a bad one.

`<family>_configs(weight, device)` builds the space the scheduler times: the
heuristic default first, then the product of the family's axes (other fields from
the default). Axes that size register tiles depend on the SIMD width the kernels
were compiled for (16 floats with AVX-512, 8 with AVX2): a tile must fit the 32
(AVX-512) or 16 (AVX2) vector registers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from sparse_rt.kernels.cpu._native import native_available, vector_width
from sparse_rt.kernels.options import config_space, parse_options  # noqa: F401  (parse_options is re-exported)
from sparse_rt.kernels.registry import Config


# Measured on 2 cores (benchmarks/layers.py): a few tasks per thread balance the nnz-split rows
# without paying for scheduling; 4 was within noise of the best on every shape tried.
DEFAULT_TASKS_PER_THREAD = 4
# Below this many nonzeros a batch-1 CSR call runs on one thread by default: 384x384 at 10 %
# (14.7k nonzeros) took 9.4 us on one thread against 12.5 us on two (2 cores, median of 300),
# where 1536x384 at 10 % (59k) was faster on two (15.6 against 18.9 us).
GEMV_ONE_THREAD_NNZ = 32768
# Batch lanes per register tile of the batched sparse kernels: 32 lanes (two AVX-512 or four
# AVX2 registers) was the fastest at batch 32 for CSR and BSR.
DEFAULT_BATCH_LANES = 32


def _check_int(options: object, name: str, allowed: Iterable[int]) -> None:
    value = getattr(options, name)
    allowed = tuple(allowed)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise ValueError(f"{type(options).__name__}: expected {name} in {list(allowed)}, got {value!r}")


def _check_range(options: object, name: str, low: int, high: int) -> None:
    value = getattr(options, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{type(options).__name__}: expected {name} in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class DenseOptions:
    """Native dense GEMM over panels of 2 * VL outputs.

    panels_per_task: panels one task computes (tasks go to threads dynamically)
    rows_per_tile:   input rows per register tile (1..8; AVX2 has registers for 6)
    k_block:         inputs per reduction block (0: all at once)
    """

    panels_per_task: int
    rows_per_tile: int
    k_block: int

    def __post_init__(self) -> None:
        _check_range(self, "panels_per_task", 1, 1024)
        _check_range(self, "rows_per_tile", 1, 8)
        _check_range(self, "k_block", 0, 1 << 30)


@dataclass(frozen=True)
class TorchDenseOptions:
    """torch's GEMM: layout "out_in" calls F.linear on W, "in_out" multiplies by a contiguous W.T."""

    layout: str

    def __post_init__(self) -> None:
        if self.layout not in ("out_in", "in_out"):
            raise ValueError(f"TorchDenseOptions: expected layout 'out_in' or 'in_out', got {self.layout!r}")


CSR_GEMV_LAYOUTS = ("rows", "slices")
X_LOADS = ("gather", "scalar")


@dataclass(frozen=True)
class CsrOptions:
    """tasks_per_thread: nnz-balanced row ranges (or slices) per thread.
    unroll:        SIMD accumulators per row at batch 1 with layout "rows" (1, 2 or 4).
    batch_vectors: SIMD registers per batch tile when batched (1..4).
    gemv_layout:   the batch-1 kernel: "rows" (a gather dot product per row) or "slices"
                   (rows sorted by length, SIMD-width rows a slice, one lane per row).
    x_loads:       how the "slices" kernel reads x: "gather" (SIMD gather) or "scalar"
                   (scalar loads and inserts); the "rows" kernel always gathers.
    gemv_threads:  threads of the batch-1 kernel at most (0: as many as the runtime runs); a
                   small layer can take longer on two threads than its work on one.

    gemv_layout, x_loads and gemv_threads default to what configs saved before they existed ran."""

    tasks_per_thread: int
    unroll: int
    batch_vectors: int
    gemv_layout: str = "rows"
    x_loads: str = "gather"
    gemv_threads: int = 0

    def __post_init__(self) -> None:
        _check_range(self, "tasks_per_thread", 1, 256)
        _check_int(self, "unroll", (1, 2, 4))
        _check_range(self, "batch_vectors", 1, 4)
        if self.gemv_layout not in CSR_GEMV_LAYOUTS:
            raise ValueError(f"CsrOptions: expected gemv_layout in {list(CSR_GEMV_LAYOUTS)}, got {self.gemv_layout!r}")
        if self.x_loads not in X_LOADS:
            raise ValueError(f"CsrOptions: expected x_loads in {list(X_LOADS)}, got {self.x_loads!r}")
        _check_range(self, "gemv_threads", 0, 1024)


@dataclass(frozen=True)
class BlockOptions:
    """BSR and N:M. tasks_per_thread: balanced row ranges per thread;
    batch_vectors: SIMD registers per batch tile when batched (1, 2 or 4)."""

    tasks_per_thread: int
    batch_vectors: int

    def __post_init__(self) -> None:
        _check_range(self, "tasks_per_thread", 1, 256)
        _check_int(self, "batch_vectors", (1, 2, 4))


@dataclass(frozen=True)
class RowsOptions:
    """Butterfly and permuted: input rows per task (each row runs through every stage)."""

    rows_per_task: int

    def __post_init__(self) -> None:
        _check_range(self, "rows_per_task", 1, 1 << 20)


BITMASK_BATCH_ROWS = (4, 8)
BITMASK_BATCHED = ("direct", "expand", "panels")
BITMASK_GEMV_EXPAND = ("vexpandps", "vpermps")
# Below this many stored bytes (mask + values) a batch-1 bitmask call runs on one thread by
# default, as for CSR (GEMV_ONE_THREAD_NNZ x 6 bytes).
BITMASK_ONE_THREAD_BYTES = 6 * GEMV_ONE_THREAD_NNZ


@dataclass(frozen=True)
class BitmaskOptions:
    """tasks_per_thread: row ranges of about equal bytes per thread.
    batch_rows:   input rows each expanded weight chunk is multiplied into when batched (4 or 8;
                  with "panels", the input rows of a register tile).
    gemv_threads: threads of the batch-1 kernel at most (0: as many as the runtime runs).
    batched:      several input rows: "direct" (the bitmask GEMM) or "expand" (the whole weight
                  expanded to a dense scratch, then torch's GEMM) or "panels" (blocks of the
                  weight expanded into the dense kernel's panel layout in cache, then its register
                  tiles); "direct" for configs saved before it existed.
    gemv_expand:  how the batch-1 kernel expands a 16-column chunk with AVX-512: "vexpandps", or
                  "vpermps" (lane indices from a table; faster where vexpandps is slow, as on
                  AMD Zen 4). Without AVX-512 both run the same code."""

    tasks_per_thread: int
    batch_rows: int
    gemv_threads: int
    batched: str = "direct"
    gemv_expand: str = "vexpandps"

    def __post_init__(self) -> None:
        _check_range(self, "tasks_per_thread", 1, 256)
        _check_int(self, "batch_rows", BITMASK_BATCH_ROWS)
        _check_range(self, "gemv_threads", 0, 1024)
        if self.batched not in BITMASK_BATCHED:
            raise ValueError(f"BitmaskOptions: expected batched in {list(BITMASK_BATCHED)}, got {self.batched!r}")
        if self.gemv_expand not in BITMASK_GEMV_EXPAND:
            raise ValueError(f"BitmaskOptions: expected gemv_expand in {list(BITMASK_GEMV_EXPAND)}, "
                             f"got {self.gemv_expand!r}")


def simd_width() -> int:
    """Floats per SIMD register of the compiled kernels (8 when they cannot be built)."""
    return vector_width() if native_available() else 8


def tile_rows() -> int:
    """Input rows of the dense kernel's widest register tile: 8 with AVX-512 (32 registers), 6
    with AVX2 (16 registers), each row holding two vectors of accumulators."""
    return 8 if simd_width() == 16 else 6


def _batch_vectors() -> int:
    return max(1, min(4, DEFAULT_BATCH_LANES // simd_width()))


def dense_configs(weight, device: torch.device) -> list[Config]:
    """Native dense: panels per task, rows per register tile, reduction block."""
    out_features = weight.shape[0]
    panels = -(-out_features // (2 * simd_width()))
    default = DenseOptions(panels_per_task=max(1, min(4, panels // 24)), rows_per_tile=tile_rows(), k_block=0)
    axes = {"panels_per_task": [1, 4], "rows_per_tile": [4, tile_rows()], "k_block": [0, 256]}
    return config_space(default, axes)


def torch_dense_configs(weight, device: torch.device) -> list[Config]:
    """torch's GEMM on W or on a contiguous W.T."""
    return config_space(TorchDenseOptions(layout="out_in"), {"layout": ["out_in", "in_out"]})


def csr_configs(weight, device: torch.device) -> list[Config]:
    """CSR: tasks per thread, batch-1 layout, x loads (accumulators per row for "rows") and
    threads, batch tile (batched)."""
    lengths = weight.row_offsets.diff()
    mean = float(lengths.float().mean()) if lengths.numel() else 0.0
    # rows shorter than two registers cannot use more than one accumulator
    unroll = 4 if mean >= 8 * simd_width() else (2 if mean >= 2 * simd_width() else 1)
    default = CsrOptions(
        tasks_per_thread=DEFAULT_TASKS_PER_THREAD,
        unroll=unroll,
        batch_vectors=_batch_vectors(),
        gemv_layout="slices",
        x_loads=default_x_loads(),
        gemv_threads=1 if int(weight.row_offsets[-1]) < GEMV_ONE_THREAD_NNZ else 0,
    )
    axes = {
        "tasks_per_thread": [1, DEFAULT_TASKS_PER_THREAD, 16],
        "gemv_layout": list(CSR_GEMV_LAYOUTS),
        "x_loads": list(X_LOADS),
        "gemv_threads": [0, 1],
        "unroll": [1, 2, 4],
        "batch_vectors": sorted({1, _batch_vectors(), 4}),
    }
    # unroll only matters to "rows", x_loads only to "slices"; the thread cap is tried on "slices"
    keep = (lambda o: o.x_loads == "gather" and o.gemv_threads == default.gemv_threads if o.gemv_layout == "rows"
            else o.unroll == default.unroll)
    return config_space(default, axes, keep)


def default_x_loads() -> str:
    """How the batch-1 "slices" kernel reads x by default: scalar loads with AVX2 (on AMD Zen 3
    the AVX2 gather was 1.3x to 1.8x slower), the gather with AVX-512 (on an Intel Xeon 16
    scalar loads and inserts were 1.0x to 1.55x slower); benchmarks/results/csr_gemv.md."""
    return "gather" if simd_width() == 16 else "scalar"


def block_configs(weight, device: torch.device) -> list[Config]:
    """BSR and N:M: tasks per thread, batch tile (batched)."""
    widest = 4 if simd_width() == 16 else 2
    default = BlockOptions(tasks_per_thread=DEFAULT_TASKS_PER_THREAD, batch_vectors=min(widest, _batch_vectors()))
    axes = {"tasks_per_thread": [1, DEFAULT_TASKS_PER_THREAD, 16], "batch_vectors": sorted({1, 2, widest})}
    return config_space(default, axes, lambda o: o.batch_vectors <= widest)


def bitmask_configs(weight, device: torch.device) -> list[Config]:
    """Bitmask: tasks per thread, batch-1 thread cap (one thread for small layers) and expansion
    instruction (AVX-512), input rows per pass and the batched kernel."""
    default = BitmaskOptions(
        tasks_per_thread=DEFAULT_TASKS_PER_THREAD,
        batch_rows=8,
        gemv_threads=1 if weight.nbytes < BITMASK_ONE_THREAD_BYTES else 0,
        batched="panels",
    )
    axes = {
        "tasks_per_thread": [1, DEFAULT_TASKS_PER_THREAD, 16],
        "batch_rows": list(BITMASK_BATCH_ROWS),
        "gemv_threads": [0, 1],
        "batched": list(BITMASK_BATCHED),
    }
    if simd_width() == 16:
        axes["gemv_expand"] = list(BITMASK_GEMV_EXPAND)
    return config_space(default, axes)


def rows_configs(weight, device: torch.device) -> list[Config]:
    """Butterfly and permuted: input rows per task."""
    return config_space(RowsOptions(rows_per_task=1), {"rows_per_task": [1, 4, 16]})


@dataclass(frozen=True)
class Int8CsrOptions:
    """Int8 CSR: tasks_per_thread, row ranges balanced by nonzero groups per thread."""

    tasks_per_thread: int

    def __post_init__(self) -> None:
        _check_range(self, "tasks_per_thread", 1, 256)


@dataclass(frozen=True)
class Int8DenseOptions:
    """Int8 dense: output rows per task (a multiple of 4, the kernel's register block)."""

    rows_per_task: int

    def __post_init__(self) -> None:
        _check_range(self, "rows_per_task", 4, 1 << 20)
        if self.rows_per_task % 4:
            raise ValueError(f"Int8DenseOptions: expected rows_per_task a multiple of 4, got {self.rows_per_task}")


def int8_csr_configs(weight, device: torch.device) -> list[Config]:
    """Int8 CSR: tasks per thread."""
    default = Int8CsrOptions(tasks_per_thread=DEFAULT_TASKS_PER_THREAD)
    return config_space(default, {"tasks_per_thread": [1, DEFAULT_TASKS_PER_THREAD, 16]})


def int8_dense_configs(weight, device: torch.device) -> list[Config]:
    """Int8 dense: output rows per task (by default about 32 tasks, 4 to 64 rows each)."""
    out_features = weight.shape[0]
    default = Int8DenseOptions(rows_per_task=max(4, min(64, -(-out_features // 128) * 4)))
    return config_space(default, {"rows_per_task": [16, 64]})
