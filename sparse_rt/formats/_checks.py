"""Validation shared by the weight formats.

Every check raises ValueError (TypeError for a value that is not a tensor or an
int at all) whose message starts with "<format> format:", names the field, and
says what was expected and what was found.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from numbers import Integral

import torch


def check_keys(fmt: str, what: str, found: Collection[str], expected: Collection[str]) -> None:
    """`found` (the keys of `what`, e.g. "arrays") must be exactly `expected`."""
    if set(found) != set(expected):
        raise ValueError(f"{fmt} format: expected {what} {sorted(expected)}, got {sorted(found)}")


def check_int(fmt: str, name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """An integer (Python, numpy or 0-d integer tensor) in [minimum, maximum]; returned as int."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{fmt} format: expected {name} to be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{fmt} format: expected {name} {bounds}, got {value}")
    return value


def check_pair(fmt: str, name: str, value: object) -> tuple[int, int]:
    """Two positive ints (a shape or block shape); returned as a tuple."""
    if not isinstance(value, (Sequence, torch.Size)) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"{fmt} format: expected {name} to be a pair of ints, got {value!r}")
    return (check_int(fmt, f"{name}[0]", value[0], 1), check_int(fmt, f"{name}[1]", value[1], 1))


def check_tensor(
    fmt: str,
    name: str,
    tensor: object,
    shape: Sequence[int | None],
    dtypes: Collection[torch.dtype] | None = None,
) -> torch.Tensor:
    """A CPU tensor of `shape` (None: any size along that dim), of one of `dtypes`
    (None: any floating dtype)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{fmt} format: expected {name} to be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type != "cpu":
        raise ValueError(f"{fmt} format: expected {name} on the cpu, got {tensor.device}")
    if dtypes is None and not tensor.is_floating_point():
        raise ValueError(f"{fmt} format: expected {name} of a floating dtype, got {tensor.dtype}")
    if dtypes is not None and tensor.dtype not in dtypes:
        expected = " or ".join(str(d) for d in dtypes)
        raise ValueError(f"{fmt} format: expected {name} of dtype {expected}, got {tensor.dtype}")
    fits = tensor.dim() == len(shape) and all(e is None or e == f for e, f in zip(shape, tensor.shape))
    if not fits:
        if len(shape) == 1 and tensor.dim() == 1:
            raise ValueError(f"{fmt} format: expected {name} of length {shape[0]}, got {tensor.shape[0]}")
        expected = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
        raise ValueError(f"{fmt} format: expected {name} of shape {expected}, got {list(tensor.shape)}")
    return tensor


def check_offsets(fmt: str, name: str, offsets: torch.Tensor, total: int, total_name: str) -> None:
    """Offsets into a run of `total` entries: start at 0, end at `total`, never decrease."""
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0:
        raise ValueError(f"{fmt} format: expected {name}[0] == 0, got {first}")
    if last != total:
        raise ValueError(
            f"{fmt} format: expected {name}[-1] == {total} (the length of {total_name}), got {last}"
        )
    drops = (offsets[1:] < offsets[:-1]).nonzero()
    if drops.numel():
        k = int(drops[0])
        raise ValueError(
            f"{fmt} format: expected non-decreasing {name}, got {name}[{k}]={int(offsets[k])} "
            f"> {name}[{k + 1}]={int(offsets[k + 1])}"
        )


def check_index_range(fmt: str, name: str, indices: torch.Tensor, upper: int) -> None:
    """Every entry of `indices` lies in [0, upper)."""
    if indices.numel() == 0 or (int(indices.min()) >= 0 and int(indices.max()) < upper):
        return
    flat = indices.flatten().long()  # comparing in the narrow dtype would wrap `upper`
    k = int(((flat < 0) | (flat >= upper)).nonzero()[0])
    raise ValueError(f"{fmt} format: expected {name} in [0, {upper}), got {int(flat[k])} at flat position {k}")


def check_ascending_segments(
    fmt: str, name: str, indices: torch.Tensor, offsets: torch.Tensor, segment: str
) -> None:
    """`indices` strictly ascend within each segment indices[offsets[i]:offsets[i+1]]."""
    count = indices.numel()
    if count < 2:
        return
    starts = torch.zeros(count, dtype=torch.bool)
    starts[offsets[:-1][offsets[:-1] < count].long()] = True
    bad = ((indices[1:] <= indices[:-1]) & ~starts[1:]).nonzero()
    if bad.numel():
        k = int(bad[0]) + 1
        which = int(torch.searchsorted(offsets, torch.tensor(k, dtype=offsets.dtype), right=True)) - 1
        raise ValueError(
            f"{fmt} format: expected {name} strictly ascending within each {segment}, "
            f"got {int(indices[k])} after {int(indices[k - 1])} in {segment} {which}"
        )
