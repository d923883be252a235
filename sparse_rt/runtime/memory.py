"""Keep the memory that tensors free inside the process, for the next run.

glibc's malloc hands blocks over its mmap threshold (128 KiB at start, raised up
to 32 MiB as large blocks are freed) straight back to the kernel, and trims the top
of its heap whenever more than twice that is free there. A model's intermediate
tensors are allocated and freed on every run, so each run can pay a page fault per
4 KiB of them: about 100,000 faults per run of a BERT-base-shaped encoder at 1024
rows, a third of its time. Raising both thresholds makes glibc recycle those blocks,
as onnxruntime's arena does; the process keeps its peak heap instead. Blocks over the
largest mmap threshold (32 MiB) would still be mapped afresh, so mapping is switched off
(M_MMAP_MAX 0) and they come from the heap too: MobileNetV2 at batch 8 has 38.5 MiB
activations, and paid 9,400-18,000 page faults a run, 62-68 against 42-49 ms.

Loading and binding a model free more than they keep (the protobuf, validation
temporaries): `trim_free_memory` hands that back to the system first, once a session
is built (78 MiB of a BERT-base-shaped encoder at 90% sparsity, whose constants take
140 MiB).
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
# glibc's largest mmap threshold on 64-bit hosts (larger blocks are mapped unless M_MMAP_MAX is 0)
LARGEST_MMAP_THRESHOLD = 32 << 20
NEVER_TRIM = 1 << 30


@functools.cache
def _glibc():
    """The C library when it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def trim_free_memory() -> bool:
    """Return the heap's free memory to the system (glibc's malloc_trim); False without glibc."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


@functools.cache
def retain_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds and stop it mapping blocks of their own, once
    per process; False without glibc."""
    libc = _glibc()
    if libc is None:
        return False
    return (bool(libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)) and bool(libc.mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD))
            and bool(libc.mallopt(M_MMAP_MAX, 0)))
