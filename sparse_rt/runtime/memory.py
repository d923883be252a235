"""Keep the memory that tensors free inside the process, for the next run.

glibc's malloc hands blocks over its mmap threshold (128 KiB at start, raised up
to 32 MiB as large blocks are freed) straight back to the kernel, and trims the top
of its heap whenever more than twice that is free there. A model's intermediate
tensors are allocated and freed on every run, so each run can pay a page fault per
4 KiB of them: about 100,000 faults per run of a BERT-base-shaped encoder at 1024
rows, a third of its time. Raising both thresholds makes glibc recycle those blocks,
as onnxruntime's arena does; the process keeps its peak heap instead.
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit hosts; larger blocks are still mapped per allocation
LARGEST_MMAP_THRESHOLD = 32 << 20
NEVER_TRIM = 1 << 30


@functools.cache
def retain_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds, once per process; False without glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)) and bool(mallopt(M_MMAP_THRESHOLD, LARGEST_MMAP_THRESHOLD))
