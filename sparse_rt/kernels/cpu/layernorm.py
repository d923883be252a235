"""Residual add and layer normalization in one pass on the CPU, float32.

y = (s - mean(s)) / sqrt(var(s) + epsilon) * scale + bias with s = a + b, over the
last axis, row by row: a row of s is formed once into a scratch that stays in L1,
and its mean, variance and output are computed from there. In a BERT-base-shaped
encoder the separate torch Add and LayerNormalization read and write every
activation twice (about 240 us each per [1024, 768] pair of tensors here).
With a `total` output the row of s is formed there instead of the scratch, for
pre-norm blocks (GPT-2, ViT) whose residual stream reads s again.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from sparse_rt.kernels.cpu._launch import pointer, threads
from sparse_rt.kernels.cpu._native import declare, load_library

# Rows per task of the thread pool.
ROWS_PER_TASK = 16

# Forms a row of s = a + b for the residual norms (here and `rmsnorm`).
RESIDUAL_ROW_SOURCE = r"""
/* row[0 .. width) = a + b (a alone when b is NULL); the tail is stored as a full vector, so
   row needs room for width rounded up to VL floats. Returns the lanes' running sums of s
   (squares 0) or of s * s (squares 1); lanes past the tail add 0. */
static inline vf _residual_row(const float* a, const float* b, float* row, int64_t width, int squares) {
    int64_t full = width / VL * VL, i = 0;
    vf acc = vzero();
    for (; i < full; i += VL) {
        vf s = b ? vadd(vload(a + i), vload(b + i)) : vload(a + i);
        vstore(row + i, s);
        acc = squares ? vfma(s, s, acc) : vadd(acc, s);
    }
    if (i < width) {
        int n = (int)(width - i);
        vf s = b ? vadd(vload_n(a + i, n), vload_n(b + i, n)) : vload_n(a + i, n);
        vstore(row + i, s);
        acc = squares ? vfma(s, s, acc) : vadd(acc, s);
    }
    return acc;
}
"""

SOURCE = RESIDUAL_ROW_SOURCE + r"""
#include <math.h>

struct add_ln_job {
    const float *a, *b, *scale, *bias;
    float *y, *total;
    int64_t rows, width, rows_per_task;
    float epsilon;
};

static void _add_ln_task(void* context, int64_t t, int worker) {
    const struct add_ln_job* job = (const struct add_ln_job*)context;
    int64_t width = job->width, full = width / VL * VL;
    float* scratch = (float*)malloc((size_t)(full + VL) * sizeof(float));
    int64_t r1 = (t + 1) * job->rows_per_task < job->rows ? (t + 1) * job->rows_per_task : job->rows;
    for (int64_t r = t * job->rows_per_task; r < r1; r++) {
        const float *a = job->a + r * width, *b = job->b ? job->b + r * width : NULL;
        float* y = job->y + r * width;
        /* the tail's full-vector store needs VL floats of room: the scratch has them */
        float* row = job->total && width % VL == 0 ? job->total + r * width : scratch;
        vf total = _residual_row(a, b, row, width, 0);
        int64_t i;
        if (row == scratch && job->total) memcpy(job->total + r * width, scratch, (size_t)width * sizeof(float));
        float mean = vsum(total) / (float)width;
        vf negative_mean = vset1(-mean), squares = vzero();
        for (i = 0; i < full; i += VL) {
            vf d = vadd(vload(row + i), negative_mean);
            squares = vfma(d, d, squares);
        }
        float square_sum = vsum(squares);
        for (; i < width; i++) square_sum += (row[i] - mean) * (row[i] - mean);
        float rstd = 1.0f / sqrtf(square_sum / (float)width + job->epsilon);
        vf factor = vset1(rstd);
        for (i = 0; i < full; i += VL) {
            vf normal = vmul(vadd(vload(row + i), negative_mean), factor);
            vf out = vload(job->scale + i);
            out = vmul(normal, out);
            if (job->bias) out = vadd(out, vload(job->bias + i));
            vstore(y + i, out);
        }
        if (i < width) {
            int n = (int)(width - i);
            vf out = vmul(vmul(vadd(vload_n(row + i, n), negative_mean), factor), vload_n(job->scale + i, n));
            if (job->bias) out = vadd(out, vload_n(job->bias + i, n));
            vstore_n(y + i, out, n);
        }
    }
    free(scratch);
}

void add_layer_norm(int num_threads, int64_t rows, int64_t width, int64_t rows_per_task, const float* a,
                    const float* b, const float* scale, const float* bias, float epsilon, float* y, float* total) {
    struct add_ln_job job = {a, b, scale, bias, y, total, rows, width, rows_per_task, epsilon};
    sr_parallel_for(num_threads, (rows + rows_per_task - 1) / rows_per_task, _add_ln_task, &job);
}
"""


@functools.cache
def add_layer_norm_library():
    """The compiled `add_layer_norm(threads, rows, width, rows_per_task, a, b or NULL, scale,
    bias or NULL, epsilon, y, total or NULL)`."""
    library = load_library("layernorm", SOURCE)
    return declare(library, "add_layer_norm", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                               ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p])


def add_layer_norm(a: torch.Tensor, b: torch.Tensor | None, scale: torch.Tensor, bias: torch.Tensor | None,
                   epsilon: float, with_total: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm(a + b) over the last axis (b None: of a alone); with_total: (that, a + b).

    a, b: contiguous float32 cpu tensors of one shape [..., width]; scale, bias: contiguous
    float32 [width]. Returns new tensors of a's shape.
    """
    y = torch.empty_like(a)
    total = torch.empty_like(a) if with_total else None
    width = a.shape[-1] if a.dim() else 1
    rows = a.numel() // width if width else 0
    if rows:
        add_layer_norm_library()(threads(), rows, width, ROWS_PER_TASK, pointer(a), pointer(b), pointer(scale),
                                 pointer(bias), epsilon, pointer(y), pointer(total))
    return (y, total) if with_total else y
