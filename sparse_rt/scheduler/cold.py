"""Timing a layer as a model too large for the cache runs it: its weights come from memory.

A decoder's step runs each linear layer once at one row, and the layers between two calls
of the same one (hundreds of MB) push its weight out of the last-level cache: every call
streams the weight from DRAM. Timed alone and repeated, the same layer finds its weight in
the cache, and the fastest kernel there is the wrong pick: on a 2-core AMD EPYC (Zen 4, 32 MiB
L3) a 2816x1024 layer at 50% ran dense in 0.11 ms warm and 0.45-0.50 ms cold, its bitmask
form in 0.18-0.23 ms warm and 0.39-0.41 ms cold. So where the model's weights cannot all
stay in the last-level cache, the tuner reads an eviction buffer before every timed call at
few rows (`COLD_ROWS`; at more rows a call reuses each weight row across its input rows and
computes for longer than it waits).

The buffer is EVICTION_FACTOR times the cache: reading one only twice its size left part of
the weight in that L3 (0.22 ms cold for a 0.47 ms layer).
"""

from __future__ import annotations

from pathlib import Path

import torch

# Calls at up to this many rows are timed with the weight evicted, when the model is too large.
COLD_ROWS = 8
EVICTION_FACTOR = 4
# Assumed when the system does not say (a common server L3 slice).
DEFAULT_LAST_LEVEL_CACHE = 32 * 1024 * 1024
_SIZE_UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}  # as sysfs writes cache sizes


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache level sysfs lists for cpu0, else DEFAULT_LAST_LEVEL_CACHE."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        if text and text[-1] in _SIZE_UNITS and text[:-1].isdigit():
            sizes.append(int(text[:-1]) * _SIZE_UNITS[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=DEFAULT_LAST_LEVEL_CACHE)


def cold_rows_for(weight_bytes: int, cache_bytes: int | None = None) -> int:
    """COLD_ROWS when `weight_bytes` (the least bytes the model's linear weights can take: 4 per
    nonzero) exceed the last-level cache, else 0 (every layer timed warm)."""
    cache_bytes = last_level_cache_bytes() if cache_bytes is None else cache_bytes
    return COLD_ROWS if weight_bytes > cache_bytes else 0


class CacheEvictor:
    """Called before a timed call: reads a buffer EVICTION_FACTOR times the last-level cache,
    pushing the weights last used out of it. The buffer (128 MiB for a 32 MiB cache) is made at
    the first call, so a conversion that times nothing cold never allocates it, and is held
    while the evictor lives: one per conversion."""

    def __init__(self, cache_bytes: int | None = None):
        self.cache_bytes = last_level_cache_bytes() if cache_bytes is None else cache_bytes
        self.buffer: torch.Tensor | None = None

    def __call__(self) -> None:
        if self.buffer is None:
            self.buffer = torch.ones(EVICTION_FACTOR * self.cache_bytes // 4, dtype=torch.float32)
        self.buffer.sum()
