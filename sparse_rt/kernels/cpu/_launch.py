"""What every CPU launcher shares: input checks, the bias, thread count, balanced task splits.

The C kernels take raw pointers: every tensor handed to them is a contiguous
float32 (or integer) CPU tensor that the bound layer keeps alive.
"""

from __future__ import annotations

import threading

import torch


def rows_of(x: torch.Tensor, in_features: int, what: str) -> torch.Tensor:
    """x: float32 [..., in_features] on the cpu -> a contiguous [rows, in_features] view or copy.

    TypeError for anything but a float32 tensor, ValueError for a wrong shape or device.
    """
    if (
        type(x) is torch.Tensor
        and x.dtype == torch.float32
        and x.dim() == 2
        and x.shape[1] == in_features
        and x.device.type == "cpu"
        and x.is_contiguous()
    ):
        return x
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: input 'x': expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise TypeError(
            f"{what}: input 'x': expected float32 [..., {in_features}], got {str(x.dtype).removeprefix('torch.')} "
            f"{list(x.shape)} (the CPU kernels compute in float32)"
        )
    if x.device.type != "cpu" or x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(
            f"{what}: input 'x': expected float32 [..., {in_features}] on cpu, got {list(x.shape)} on {x.device}"
        )
    return x.reshape(-1, in_features).contiguous()


def shaped_like(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y [rows, out] reshaped to x's leading dims: [..., out]."""
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], y.shape[1])


def bias_of(bias: torch.Tensor | None, out_features: int, what: str) -> torch.Tensor | None:
    """The bias as a contiguous float32 [out_features] tensor (None stays None)."""
    if bias is None:
        return None
    if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
        raise TypeError(f"{what}: bias: expected a floating torch.Tensor [{out_features}], got {bias!r}")
    if bias.shape != (out_features,):
        raise ValueError(f"{what}: bias: expected shape [{out_features}], got {list(bias.shape)}")
    return bias.detach().to(device="cpu", dtype=torch.float32).contiguous()


def check_cpu(device: torch.device | str, what: str) -> None:
    """The CPU kernels bind only for the cpu device."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"{what}: expected device cpu, got {device}")


def check_activation(activation: str | None, what: str, fused: tuple[str, ...] = ("gelu",)) -> None:
    """The fused activations a CPU kernel applies to its outputs: None or one of `fused`
    ("gelu": erf form)."""
    if activation is not None and activation not in fused:
        raise ValueError(f"{what}: activation: expected None or one of {list(fused)}, got {activation!r}")


def channels_last_operands(x: torch.Tensor, channels: int, bias: torch.Tensor | None, z: torch.Tensor | None,
                           what: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A conv kernel's operands over channels-last memory: x float32 [N, channels, H, W] on the
    cpu (ValueError naming `what` otherwise) as contiguous [N, H, W, C] rows (a view of
    channels-last x), the bias as contiguous float32, the residual z [N, K, H', W'] as
    contiguous float32 [N, H', W', K] (None stays None)."""
    if x.dim() != 4 or x.shape[1] != channels or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"{what}: expected x float32 [N, {channels}, H, W] on cpu, "
                         f"got {str(x.dtype).removeprefix('torch.')} {list(x.shape)} on {x.device}")
    rows = x.permute(0, 2, 3, 1).contiguous()
    if bias is not None:
        bias = bias.to(torch.float32).contiguous()
    if z is not None:
        z = z.to(torch.float32).permute(0, 2, 3, 1).contiguous()
    return rows, bias, z


def pointer(tensor: torch.Tensor | None) -> int | None:
    """The data pointer ctypes passes for a tensor (None for a missing bias)."""
    return None if tensor is None else tensor.data_ptr()


_scratch = threading.local()


def thread_scratch(name: str, floats: int) -> torch.Tensor:
    """float32 [floats] of this thread's, kept between calls and layers under `name` (64-byte
    aligned, as torch allocates): a fresh weight-sized block per call would page-fault its way
    in (0.5 ms for 11.5 MB here)."""
    buffer = getattr(_scratch, name, None)
    if buffer is None or buffer.numel() < floats:
        buffer = torch.empty(floats, dtype=torch.float32)
        setattr(_scratch, name, buffer)
    return buffer[:floats]


def threads() -> int:
    """Threads the kernels may use: the runtime's torch.set_num_threads setting."""
    return torch.get_num_threads()


def splits_by_inputs(batch: int, width: int, num_threads: int) -> bool:
    """Whether a batched sparse kernel takes tasks of `width` input rows (each against every
    output row) rather than of output rows: when the tiles come to a multiple of the threads
    or at least two each. CSR (`csr_gemm_blocks`), two threads, 10 % density:
    128x512 at 784 rows 0.14 against 0.34 ms split by outputs, 64x256 at 3136 rows 0.19
    against 0.59, 768x3072 at 128 rows 0.61 against 0.79; with one tile per two threads, 0.23
    against 0.14 (2048x512, 49 rows, 64-row tiles)."""
    tiles = -(-batch // width)
    return tiles % num_threads == 0 or tiles >= 2 * num_threads


def tile_tasks(split: torch.Tensor, batch: int, width: int, num_threads: int) -> tuple[int, int | None]:
    """(tasks, task boundaries pointer) of a batched sparse kernel that takes either: the
    output-row split `split` [tasks + 1], or (`splits_by_inputs`) one task per tile of
    `width` input rows and a NULL pointer."""
    if splits_by_inputs(batch, width, num_threads):
        return -(-batch // width), None
    return split.shape[0] - 1, pointer(split)


def balanced_split(costs: torch.Tensor, parts: int) -> torch.Tensor:
    """int64 [k + 1] boundaries cutting len(costs) items into k <= parts consecutive runs of
    about equal total cost (every run non-empty; k = 0 when there are no items)."""
    items = costs.shape[0]
    if items == 0:
        return torch.zeros(1, dtype=torch.int64)
    parts = max(1, min(parts, items))
    totals = torch.cat([torch.zeros(1, dtype=torch.float64), costs.to(torch.float64).cumsum(0)])
    targets = torch.linspace(0.0, float(totals[-1]), parts + 1, dtype=torch.float64)
    cuts = torch.searchsorted(totals, targets).clamp(0, items)
    cuts[0], cuts[-1] = 0, items
    return torch.unique_consecutive(cuts).to(torch.int64).contiguous()


class TaskSplit:
    """Task boundaries over items with `costs`, `tasks_per_thread` tasks for every thread,
    computed once per thread count (the runtime may change it after binding)."""

    def __init__(self, costs: torch.Tensor, tasks_per_thread: int) -> None:
        self._costs = costs
        self._tasks_per_thread = tasks_per_thread
        self._splits: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    def __call__(self, num_threads: int) -> torch.Tensor:
        split = self._splits.get(num_threads)
        if split is None:
            with self._lock:  # one split per count: a kernel may hold a pointer to it
                split = self._splits.get(num_threads)
                if split is None:
                    split = balanced_split(self._costs, self._tasks_per_thread * num_threads)
                    self._splits[num_threads] = split
        return split
