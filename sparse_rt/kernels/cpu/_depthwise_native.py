"""C kernel of a depthwise 2-D convolution (one filter per channel) over channels-last tensors.

x [N, H, W, C], w [kh, kw, C] -> y [N, out_h, out_w, C]: y[n, oh, ow, c] = activation(bias[c]
+ sum over taps (i, j) inside x of x[n, oh * sh - top + i * dh, ow * sw - left + j * dw, c]
* w[i, j, c] (+ z[n, oh, ow, c])), VL channels at a time; taps outside x are the zero
padding, so uneven pads cost nothing. activation: 0 none, 1 ReLU, 2 clip to [lo, hi]. A task
per output row (n, oh) runs through `_pool.sr_parallel_for`.
"""

from __future__ import annotations

import ctypes
import functools

from sparse_rt.kernels.cpu._native import declare, load_library

SOURCE = r"""
typedef struct {
    const float* x; const float* w; const float* bias; const float* z; float* y;
    int64_t h, w_in, c, out_h, out_w, kh, kw, sh, sw, dh, dw, top, left;
    int activation; float lo, hi;
} depthwise_job;

/* The epilogue: + z, the activation, the store. */
static inline void _depthwise_store(const depthwise_job* job, vf acc, int64_t at, int lanes) {
    if (job->z != NULL) acc = vadd(acc, lanes == VL ? vload(job->z + at) : vload_n(job->z + at, lanes));
    if (job->activation == 1) acc = vmax(acc, vzero());
    else if (job->activation == 2) acc = vmin(vmax(acc, vset1(job->lo)), vset1(job->hi));
    if (lanes == VL) vstore(job->y + at, acc); else vstore_n(job->y + at, acc, lanes);
}

/* One output row (n, oh) for channels [c0, c0 + lanes), any kernel: every tap checked against
   x's bounds. */
static void _depthwise_row_any(const depthwise_job* job, const float* image, int64_t oh, int64_t row_at,
                               int64_t c0, int lanes) {
    const int64_t kh = job->kh, kw = job->kw, c = job->c;
    vf b = job->bias == NULL ? vzero() : (lanes == VL ? vload(job->bias + c0) : vload_n(job->bias + c0, lanes));
    for (int64_t ow = 0; ow < job->out_w; ow++) {
        vf acc = b;
        for (int64_t i = 0; i < kh; i++) {
            int64_t ih = oh * job->sh - job->top + i * job->dh;
            if (ih < 0 || ih >= job->h) continue;
            for (int64_t j = 0; j < kw; j++) {
                int64_t iw = ow * job->sw - job->left + j * job->dw;
                if (iw < 0 || iw >= job->w_in) continue;
                const float* p = image + (ih * job->w_in + iw) * c + c0;
                const float* q = job->w + (i * kw + j) * c + c0;
                acc = lanes == VL ? vfma(vload(p), vload(q), acc) : vfma(vload_n(p, lanes), vload_n(q, lanes), acc);
            }
        }
        _depthwise_store(job, acc, row_at + ow * c + c0, lanes);
    }
}

/* One output row of a 3x3 kernel, VL channels: the nine taps in registers, the three input rows
   as pointers (NULL outside x), the columns inside x without checks. */
static void _depthwise_row_3x3(const depthwise_job* job, const float* image, int64_t oh, int64_t row_at,
                               int64_t c0) {
    const int64_t c = job->c, w_in = job->w_in, sw = job->sw, dw = job->dw, left = job->left, out_w = job->out_w;
    vf t[9];
    for (int k = 0; k < 9; k++) t[k] = vload(job->w + k * c + c0);
    vf b = job->bias == NULL ? vzero() : vload(job->bias + c0);
    const float* rows[3];
    for (int i = 0; i < 3; i++) {
        int64_t ih = oh * job->sh - job->top + i * job->dh;
        rows[i] = ih < 0 || ih >= job->h ? NULL : image + ih * w_in * c + c0;
    }
    for (int64_t ow = 0; ow < out_w; ow++) {
        int64_t iw0 = ow * sw - left;
        vf acc = b;
        if (iw0 >= 0 && iw0 + 2 * dw < w_in) {
            for (int i = 0; i < 3; i++) {
                if (rows[i] == NULL) continue;
                const float* p = rows[i] + iw0 * c;
                acc = vfma(vload(p), t[i * 3], acc);
                acc = vfma(vload(p + dw * c), t[i * 3 + 1], acc);
                acc = vfma(vload(p + 2 * dw * c), t[i * 3 + 2], acc);
            }
        } else {
            for (int i = 0; i < 3; i++) {
                if (rows[i] == NULL) continue;
                for (int j = 0; j < 3; j++) {
                    int64_t iw = iw0 + j * dw;
                    if (iw >= 0 && iw < w_in) acc = vfma(vload(rows[i] + iw * c), t[i * 3 + j], acc);
                }
            }
        }
        _depthwise_store(job, acc, row_at + ow * c + c0, VL);
    }
}

static void _depthwise_task(void* context, int64_t task, int worker) {
    (void)worker;
    const depthwise_job* job = (const depthwise_job*)context;
    int64_t n = task / job->out_h, oh = task % job->out_h, c = job->c;
    const float* image = job->x + n * job->h * job->w_in * c;
    int three = job->kh == 3 && job->kw == 3;
    for (int64_t c0 = 0; c0 < c; c0 += VL) {
        int lanes = c - c0 < VL ? (int)(c - c0) : VL;
        if (three && lanes == VL) _depthwise_row_3x3(job, image, oh, task * job->out_w * c, c0);
        else _depthwise_row_any(job, image, oh, task * job->out_w * c, c0, lanes);
    }
}

void depthwise_conv(int num_threads, const float* x, const float* w, const float* bias, const float* z, float* y,
                    int64_t n, int64_t h, int64_t w_in, int64_t c, int64_t out_h, int64_t out_w, int64_t kh, int64_t kw,
                    int64_t sh, int64_t sw, int64_t dh, int64_t dw, int64_t top, int64_t left, int activation,
                    float lo, float hi) {
    depthwise_job job = {x, w, bias, z, y, h, w_in, c, out_h, out_w, kh, kw, sh, sw, dh, dw, top, left,
                         activation, lo, hi};
    sr_parallel_for(num_threads, n * out_h, _depthwise_task, &job);
}
"""

_P = ctypes.c_void_p
_I = ctypes.c_int64


@functools.cache
def depthwise_conv():
    """`depthwise_conv`: (threads, x [N, H, W, C], w [kh, kw, C], bias [C] or None, z [N, out_h,
    out_w, C] or None, y [N, out_h, out_w, C], N, H, W, C, out_h, out_w, kh, kw, sh, sw, dh, dw,
    pad_top, pad_left, activation (0 none, 1 ReLU, 2 clip), lo, hi)."""
    return declare(load_library("depthwise", SOURCE), "depthwise_conv",
                   [ctypes.c_int, _P, _P, _P, _P, _P] + [_I] * 14 + [ctypes.c_int, ctypes.c_float, ctypes.c_float])
