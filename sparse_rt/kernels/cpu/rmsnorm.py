"""Residual add and RMS normalization in one pass on the CPU, float32.

y = s / sqrt(mean(s^2) + epsilon) * weight with s = a + b (or s = a), over the last
axis, row by row (Llama's RMSNorm). The row of s is formed once, into `total` when the
residual stream reads it again, else into a scratch that stays in L1. Exported, the
same computation is nine nodes (Cast, Pow, ReduceMean, Add, Sqrt, Div, Mul, Cast, Mul)
plus the residual Add, each a pass over the row and a dispatch.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from sparse_rt.kernels.cpu._launch import pointer, threads
from sparse_rt.kernels.cpu._native import declare, load_library
from sparse_rt.kernels.cpu.layernorm import RESIDUAL_ROW_SOURCE

# Rows per task of the thread pool.
ROWS_PER_TASK = 16

SOURCE = RESIDUAL_ROW_SOURCE + r"""
#include <math.h>

struct add_rms_job {
    const float *a, *b, *weight;
    float *y, *total;
    int64_t rows, width, rows_per_task;
    float epsilon;
};

static void _add_rms_task(void* context, int64_t t, int worker) {
    const struct add_rms_job* job = (const struct add_rms_job*)context;
    int64_t width = job->width, full = width / VL * VL;
    float* scratch = (float*)malloc((size_t)(full + VL) * sizeof(float));
    int64_t r1 = (t + 1) * job->rows_per_task < job->rows ? (t + 1) * job->rows_per_task : job->rows;
    for (int64_t r = t * job->rows_per_task; r < r1; r++) {
        const float *a = job->a + r * width, *b = job->b ? job->b + r * width : NULL;
        float* y = job->y + r * width;
        /* the tail's full-vector store needs VL floats of room: the scratch has them */
        float* row = job->total && width % VL == 0 ? job->total + r * width : scratch;
        vf squares = _residual_row(a, b, row, width, 1);
        int64_t i;
        if (row == scratch && job->total) memcpy(job->total + r * width, scratch, (size_t)width * sizeof(float));
        vf factor = vset1(1.0f / sqrtf(vsum(squares) / (float)width + job->epsilon));
        for (i = 0; i < full; i += VL) vstore(y + i, vmul(vmul(vload(row + i), factor), vload(job->weight + i)));
        if (i < width) {
            int n = (int)(width - i);
            vstore_n(y + i, vmul(vmul(vload_n(row + i, n), factor), vload_n(job->weight + i, n)), n);
        }
    }
    free(scratch);
}

void add_rms_norm(int num_threads, int64_t rows, int64_t width, int64_t rows_per_task, const float* a,
                  const float* b, const float* weight, float epsilon, float* y, float* total) {
    struct add_rms_job job = {a, b, weight, y, total, rows, width, rows_per_task, epsilon};
    sr_parallel_for(num_threads, (rows + rows_per_task - 1) / rows_per_task, _add_rms_task, &job);
}
"""


@functools.cache
def add_rms_norm_library():
    """The compiled `add_rms_norm(threads, rows, width, rows_per_task, a, b or NULL, weight,
    epsilon, y, total or NULL)`."""
    library = load_library("rmsnorm", SOURCE)
    return declare(library, "add_rms_norm", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                                             ctypes.c_void_p, ctypes.c_void_p])


def add_rms_norm(a: torch.Tensor, b: torch.Tensor | None, weight: torch.Tensor, epsilon: float,
                 with_total: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm(a + b) * weight over the last axis (b None: of a alone); with_total: (that, a + b).

    a, b: contiguous float32 cpu tensors of one shape [..., width]; weight: contiguous
    float32 [width]. Returns new tensors of a's shape.
    """
    y = torch.empty_like(a)
    total = torch.empty_like(a) if with_total else None
    width = a.shape[-1] if a.dim() else 1
    rows = a.numel() // width if width else 0
    if rows:
        add_rms_norm_library()(threads(), rows, width, ROWS_PER_TASK, pointer(a), pointer(b), pointer(weight),
                               epsilon, pointer(y), pointer(total))
    return (y, total) if with_total else y


def add_rms_norm_torch(a: torch.Tensor, b: torch.Tensor | None, weight: torch.Tensor, epsilon: float,
                       with_total: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The reference (and the path for other dtypes, devices and broadcasting inputs): the
    exported computation, s * (1 / sqrt(mean(s^2) + epsilon)) * weight."""
    total = a if b is None else a + b
    y = weight * (total * torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + epsilon))
    return (y, total) if with_total else y
