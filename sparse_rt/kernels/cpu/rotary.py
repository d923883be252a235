"""Rotary position embedding on the CPU, float32, in one pass.

y = x * cos + rotate_half(x) * sin over the last axis of x [batch, heads, positions,
head_dim], rotate_half(x) = concat(-x[..., half:], x[..., :half]) (Llama's
apply_rotary_pos_emb). x may be a strided view (the exporter's head transpose of a
projection) with unit stride on head_dim; cos and sin broadcast to x (zero strides
where they do). y is a new contiguous tensor. Exported, this is seven nodes per tensor
(two Slice, Neg, Concat, two Mul, Add).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from sparse_rt.kernels.cpu._launch import pointer, threads
from sparse_rt.kernels.cpu._native import declare, load_library

# Rows (one head at one position) per task of the thread pool.
ROWS_PER_TASK = 32

SOURCE = r"""
struct rotary_job {
    const float *x, *cos, *sin;
    float* y;
    int64_t heads, positions, half, rows, rows_per_task;
    const int64_t *stride_x, *stride_c, *stride_s;  /* [batch, heads, positions] each */
};

static void _rotary_task(void* context, int64_t t, int worker) {
    const struct rotary_job* job = (const struct rotary_job*)context;
    int64_t half = job->half, full = half / VL * VL;
    int64_t r1 = (t + 1) * job->rows_per_task < job->rows ? (t + 1) * job->rows_per_task : job->rows;
    for (int64_t r = t * job->rows_per_task; r < r1; r++) {
        int64_t b = r / (job->heads * job->positions), h = r / job->positions % job->heads, l = r % job->positions;
        const float* x = job->x + b * job->stride_x[0] + h * job->stride_x[1] + l * job->stride_x[2];
        const float* c = job->cos + b * job->stride_c[0] + h * job->stride_c[1] + l * job->stride_c[2];
        const float* s = job->sin + b * job->stride_s[0] + h * job->stride_s[1] + l * job->stride_s[2];
        float* y = job->y + r * 2 * half;
        int64_t i = 0;
        for (; i < full; i += VL) {
            vf x1 = vload(x + i), x2 = vload(x + half + i);
            /* y1 = x1 cos1 - x2 sin1, y2 = x2 cos2 + x1 sin2 */
            vstore(y + i, vfma(x1, vload(c + i), vmul(vset1(-1.0f), vmul(x2, vload(s + i)))));
            vstore(y + half + i, vfma(x2, vload(c + half + i), vmul(x1, vload(s + half + i))));
        }
        for (; i < half; i++) {
            float x1 = x[i], x2 = x[half + i];
            y[i] = x1 * c[i] - x2 * s[i];
            y[half + i] = x2 * c[half + i] + x1 * s[half + i];
        }
    }
}

/* sizes: batch, heads, positions, half; strides: x's, cos's, sin's [batch, heads, positions] */
void rotary(int num_threads, const int64_t* sizes, const int64_t* strides, int64_t rows_per_task, const float* x,
            const float* cos, const float* sin, float* y) {
    int64_t rows = sizes[0] * sizes[1] * sizes[2];
    struct rotary_job job = {x, cos, sin, y, sizes[1], sizes[2], sizes[3], rows, rows_per_task,
                             strides, strides + 3, strides + 6};
    sr_parallel_for(num_threads, (rows + rows_per_task - 1) / rows_per_task, _rotary_task, &job);
}
"""


@functools.cache
def rotary_library():
    """The compiled `rotary(threads, sizes [batch, heads, positions, half], strides [9: x's, cos's,
    sin's over batch, heads, positions], rows_per_task, x, cos, sin, y)`."""
    library = load_library("rotary", SOURCE)
    arrays = ctypes.POINTER(ctypes.c_int64)
    return declare(library, "rotary", [ctypes.c_int, arrays, arrays, ctypes.c_int64, ctypes.c_void_p,
                                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p])


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin: x float32 cpu [batch, heads, positions, head_dim] (even
    head_dim, unit stride on it), cos and sin float32 cpu broadcasting to x. Returns a new
    contiguous tensor of x's shape; ValueError when cos or sin would widen x."""
    cos, sin = _broadcast(cos, x.shape, "cos"), _broadcast(sin, x.shape, "sin")
    y = torch.empty(x.shape, dtype=x.dtype)
    batch, heads, positions, width = x.shape
    if y.numel():
        strides = (ctypes.c_int64 * 9)(*x.stride()[:3], *cos.stride()[:3], *sin.stride()[:3])
        rotary_library()(threads(), (ctypes.c_int64 * 4)(batch, heads, positions, width // 2), strides,
                         ROWS_PER_TASK, pointer(x), pointer(cos), pointer(sin), pointer(y))
    return y


def rotary_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The reference (and the path for other ranks, dtypes and devices), as exported."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _broadcast(table: torch.Tensor, shape: torch.Size, what: str) -> torch.Tensor:
    """`table` expanded to x's `shape` (zero strides where it repeats) with unit stride on the
    last axis; ValueError when it does not broadcast to exactly that shape."""
    try:
        expanded = table.expand(shape)
    except RuntimeError:
        raise ValueError(f"rotary: {what}: expected a shape broadcasting to x's {list(shape)}, "
                         f"got {list(table.shape)}") from None
    return expanded if expanded.stride(-1) == 1 else expanded.contiguous()
