"""Launch options of the Triton kernels and the tuning spaces built over them.

Each kernel family has a frozen dataclass of options. Upper-case fields are the
kernel's compile-time constants (tile sizes, split factors); `num_warps` and
`num_stages` go to the launch. A config (what the registry and the saved model
hold) is the dataclass as a JSON dict; `parse_options` turns it back and says
what is wrong with a bad one.

`<family>_configs(weight, device)` builds the space the scheduler times: the
heuristic default first, then the product of the axes below, keeping the
points whose tiles fit the per-thread register budget and the weight's shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from sparse_rt.kernels.options import config_space, parse_options
from sparse_rt.kernels.registry import Config


# Accumulator elements one thread may hold (fp32 registers) before a tile stops paying off.
MAX_ELEMENTS_PER_THREAD = 64
# Largest width whose activations one program keeps in registers across all butterfly stages.
MAX_FUSED_WIDTH = 4096
# Largest width the fused permuted kernel takes: tl.gather along a row compiles in ~2 s up to
# 1024 wide, ~25 s at 2048 and ~150 s at 4096 (triton 3.9, sm_90), so wider layers are staged.
MAX_GATHER_WIDTH = 1024
THREADS_PER_WARP = 32


def _check_pow2(options: object, name: str, low: int, high: int) -> None:
    value = getattr(options, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high or value & (value - 1):
        raise ValueError(
            f"{type(options).__name__}: expected {name} a power of two in [{low}, {high}], got {value!r}"
        )


def _check_launch(options: object) -> None:
    _check_pow2(options, "num_warps", 1, 32)
    stages = getattr(options, "num_stages", 1)
    if isinstance(stages, bool) or not isinstance(stages, int) or not 1 <= stages <= 8:
        raise ValueError(f"{type(options).__name__}: expected num_stages in [1, 8], got {stages!r}")


@dataclass(frozen=True)
class CsrOptions:
    """Row kernel: one row x BLOCK_B batch rows per program, BLOCK_K nonzeros a step.
    Batch-1 kernel: BLOCK_ROWS rows (of similar length, after the swizzle) per program."""

    BLOCK_B: int
    BLOCK_K: int
    BLOCK_ROWS: int
    num_warps: int
    num_stages: int

    def __post_init__(self) -> None:
        _check_pow2(self, "BLOCK_B", 1, 256)
        _check_pow2(self, "BLOCK_K", 1, 1024)
        _check_pow2(self, "BLOCK_ROWS", 1, 1024)
        _check_launch(self)


@dataclass(frozen=True)
class BsrOptions:
    """BLOCK_M batch rows per program against one block row; SPLIT_K programs share a block row."""

    BLOCK_M: int
    SPLIT_K: int
    num_warps: int
    num_stages: int

    def __post_init__(self) -> None:
        _check_pow2(self, "BLOCK_M", 16, 256)
        _check_pow2(self, "SPLIT_K", 1, 64)
        _check_launch(self)


@dataclass(frozen=True)
class NmOptions:
    """A [BLOCK_B, BLOCK_O] output tile per program, BLOCK_K kept values per row a step."""

    BLOCK_B: int
    BLOCK_O: int
    BLOCK_K: int
    num_warps: int
    num_stages: int

    def __post_init__(self) -> None:
        _check_pow2(self, "BLOCK_B", 1, 256)
        _check_pow2(self, "BLOCK_O", 1, 1024)
        _check_pow2(self, "BLOCK_K", 1, 1024)
        _check_launch(self)


@dataclass(frozen=True)
class BitmaskOptions:
    """A [BLOCK_B, BLOCK_O] output tile per program, BLOCK_K input columns (a multiple of 8: whole
    mask bytes) a step."""

    BLOCK_B: int
    BLOCK_O: int
    BLOCK_K: int
    num_warps: int
    num_stages: int

    def __post_init__(self) -> None:
        _check_pow2(self, "BLOCK_B", 1, 256)
        _check_pow2(self, "BLOCK_O", 1, 1024)
        _check_pow2(self, "BLOCK_K", 8, 1024)
        _check_launch(self)


@dataclass(frozen=True)
class FusedOptions:
    """Butterfly / permuted, all stages in one kernel: BLOCK_M activation rows per program."""

    schedule: str
    BLOCK_M: int
    num_warps: int

    def __post_init__(self) -> None:
        if self.schedule != "fused":
            raise ValueError(f"FusedOptions: expected schedule 'fused', got {self.schedule!r}")
        _check_pow2(self, "BLOCK_M", 1, 256)
        _check_launch(self)


@dataclass(frozen=True)
class StagedOptions:
    """Butterfly / permuted, one launch per stage: a [BLOCK_M, BLOCK_P pairs] tile per program."""

    schedule: str
    BLOCK_M: int
    BLOCK_P: int
    num_warps: int

    def __post_init__(self) -> None:
        if self.schedule != "staged":
            raise ValueError(f"StagedOptions: expected schedule 'staged', got {self.schedule!r}")
        _check_pow2(self, "BLOCK_M", 1, 256)
        _check_pow2(self, "BLOCK_P", 1, 8192)
        _check_launch(self)


@dataclass(frozen=True)
class DenseOptions:
    """layout "out_in" calls F.linear on W; "in_out" multiplies by a contiguous W.T."""

    layout: str

    def __post_init__(self) -> None:
        if self.layout not in ("out_in", "in_out"):
            raise ValueError(f"DenseOptions: expected layout 'out_in' or 'in_out', got {self.layout!r}")


def parse_schedule(config: Config) -> FusedOptions | StagedOptions:
    """Butterfly and permuted configs: FusedOptions or StagedOptions by config["schedule"]."""
    schedule = config.get("schedule")
    if schedule == "fused":
        return parse_options(FusedOptions, config)
    if schedule == "staged":
        return parse_options(StagedOptions, config)
    raise ValueError(f"expected config['schedule'] 'fused' or 'staged', got {schedule!r}")


def _fits(elements: int, num_warps: int) -> bool:
    """A tile of `elements` over num_warps warps: at least one per thread, at most the register budget."""
    return 1 <= elements / (num_warps * THREADS_PER_WARP) <= MAX_ELEMENTS_PER_THREAD


def csr_configs(weight, device: torch.device) -> list[Config]:
    """Space of the CSR kernels; BLOCK_K stops at the longest row."""
    out_features = weight.shape[0]
    lengths = weight.row_offsets.diff()
    longest = int(lengths.max()) if lengths.numel() else 0
    mean = int(lengths.float().mean()) if lengths.numel() else 0
    k_cap = max(16, triton.next_power_of_2(max(longest, 1)))
    default = CsrOptions(
        BLOCK_B=32,
        BLOCK_K=min(k_cap, 64, max(16, triton.next_power_of_2(max(mean, 1)))),
        # a few hundred programs on the batch-1 path, so every SM gets several
        BLOCK_ROWS=max(4, min(32, triton.next_power_of_2(max(out_features // 512, 1)))),
        num_warps=4,
        num_stages=2,
    )
    axes = {
        "BLOCK_B": [16, 64],
        "BLOCK_K": [k for k in (16, 32, 64, 128) if k <= k_cap],
        "BLOCK_ROWS": [8, 32],
        "num_warps": [2, 4, 8],
    }
    return config_space(
        default,
        axes,
        lambda o: _fits(o.BLOCK_B * o.BLOCK_K, o.num_warps) and _fits(o.BLOCK_ROWS * o.BLOCK_K, o.num_warps),
    )


def bsr_configs(weight, device: torch.device) -> list[Config]:
    """Space of the BSR kernel; SPLIT_K stops at the longest block row."""
    rows, cols = weight.block_shape
    lengths = weight.block_row_offsets.diff()
    longest = int(lengths.max()) if lengths.numel() else 0
    default = BsrOptions(BLOCK_M=64 if rows * cols <= 64 * 64 else 32, SPLIT_K=1, num_warps=4, num_stages=3)
    axes = {
        "BLOCK_M": [16, 64, 128],
        "SPLIT_K": [s for s in (1, 4) if s <= max(longest, 1)],
        "num_warps": [4, 8],
        "num_stages": [2, 4],
    }
    return config_space(
        default,
        axes,
        lambda o: _fits(o.BLOCK_M * rows, o.num_warps) and _fits(o.BLOCK_M * cols, o.num_warps),
    )


def nm_configs(weight, device: torch.device) -> list[Config]:
    """Space of the N:M kernel; BLOCK_K stops at the kept values of a row."""
    k_cap = max(8, triton.next_power_of_2(max(weight.values.shape[1], 1)))
    default = NmOptions(BLOCK_B=16, BLOCK_O=32, BLOCK_K=min(16, k_cap), num_warps=4, num_stages=2)
    axes = {
        "BLOCK_B": [1, 8, 32],
        "BLOCK_O": [16, 64],
        "BLOCK_K": [k for k in (8, 32) if k <= k_cap],
        "num_warps": [2, 4, 8],
    }
    return config_space(default, axes, lambda o: _fits(o.BLOCK_B * o.BLOCK_O * o.BLOCK_K, o.num_warps))


def bitmask_configs(weight, device: torch.device) -> list[Config]:
    """Space of the bitmask kernel; BLOCK_K stops at the input width (rounded up to a power of two)."""
    k_cap = max(8, triton.next_power_of_2(weight.shape[1]))
    default = BitmaskOptions(BLOCK_B=16, BLOCK_O=32, BLOCK_K=min(32, k_cap), num_warps=4, num_stages=2)
    axes = {
        "BLOCK_B": [1, 8, 32],
        "BLOCK_O": [16, 64],
        "BLOCK_K": [k for k in (16, 64) if k <= k_cap],
        "num_warps": [2, 4, 8],
    }
    return config_space(default, axes, lambda o: _fits(o.BLOCK_B * o.BLOCK_O * o.BLOCK_K, o.num_warps))


def _scheduleconfig_space(width: int, fused_limit: int) -> list[Config]:
    """Fused configs (while the power-of-two `width` <= fused_limit), then staged ones."""
    configs: list[Config] = []
    if width <= fused_limit:
        default = FusedOptions(schedule="fused", BLOCK_M=1, num_warps=max(1, min(8, width // 256)))
        configs += config_space(
            default,
            {"BLOCK_M": [1, 2, 4, 8], "num_warps": [1, 2, 4, 8, 16]},
            lambda o: _fits(o.BLOCK_M * width, o.num_warps),
        )
    half = width // 2
    default = StagedOptions(schedule="staged", BLOCK_M=16, BLOCK_P=min(256, half), num_warps=4)
    configs += config_space(
        default,
        {"BLOCK_M": [1, 4, 16], "BLOCK_P": [p for p in (64, 256, 1024) if p <= max(half, 64)], "num_warps": [2, 4, 8]},
        lambda o: _fits(2 * o.BLOCK_M * o.BLOCK_P, o.num_warps),
    )
    return configs


def butterfly_configs(weight, device: torch.device) -> list[Config]:
    """Fused configs while n <= MAX_FUSED_WIDTH, then staged ones."""
    return _scheduleconfig_space(max(weight.n, 2), MAX_FUSED_WIDTH)


def permuted_configs(weight, device: torch.device) -> list[Config]:
    """Fused configs while n, padded to a power of two, is <= MAX_GATHER_WIDTH, then staged ones."""
    return _scheduleconfig_space(triton.next_power_of_2(weight.n), MAX_GATHER_WIDTH)


def dense_configs(weight, device: torch.device) -> list[Config]:
    """The two cuBLAS operand layouts."""
    return config_space(DenseOptions(layout="out_in"), {"layout": ["out_in", "in_out"]}, lambda o: True)
