"""C kernel of Im2Col (`sparse_rt.ops.im2col`) over a channels-last float32 input.

x [N, H, W, C] -> y [N, out_h, out_w, kh * kw * C]: row (n, oh, ow) holds, tap by tap in
(kernel row, kernel column) order, the C channels of x[n, oh * sh - top + i * dh,
ow * sw - left + j * dw], zeros where that falls outside x. A tap row whose kw taps are
adjacent and inside x (dilation 1) is copied in one piece. A task per output row (n, oh)
runs through `_pool.sr_parallel_for`.
"""

from __future__ import annotations

import ctypes
import functools

from sparse_rt.kernels.cpu._native import declare, load_library

SOURCE = r"""
typedef struct {
    const float* x; float* y;
    int64_t h, w, c, out_h, out_w, kh, kw, sh, sw, dh, dw, top, left;
} im2col_job;

static void _im2col_task(void* context, int64_t task, int worker) {
    (void)worker;
    const im2col_job* job = (const im2col_job*)context;
    int64_t n = task / job->out_h, oh = task % job->out_h, c = job->c, kw = job->kw;
    float* out = job->y + task * job->out_w * job->kh * kw * c;
    for (int64_t ow = 0; ow < job->out_w; ow++) {
        int64_t first = ow * job->sw - job->left, last = first + (kw - 1) * job->dw;
        for (int64_t i = 0; i < job->kh; i++, out += kw * c) {
            int64_t r = oh * job->sh - job->top + i * job->dh;
            if (r < 0 || r >= job->h) {
                memset(out, 0, (size_t)(kw * c) * sizeof(float));
                continue;
            }
            const float* row = job->x + (n * job->h + r) * job->w * c;
            if (job->dw == 1 && first >= 0 && last < job->w) {
                memcpy(out, row + first * c, (size_t)(kw * c) * sizeof(float));
                continue;
            }
            for (int64_t j = 0; j < kw; j++) {
                int64_t col = first + j * job->dw;
                if (col < 0 || col >= job->w) memset(out + j * c, 0, (size_t)c * sizeof(float));
                else memcpy(out + j * c, row + col * c, (size_t)c * sizeof(float));
            }
        }
    }
}

void im2col_nhwc(int num_threads, const float* x, float* y, int64_t n, int64_t h, int64_t w, int64_t c,
                 int64_t out_h, int64_t out_w, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh, int64_t dw,
                 int64_t top, int64_t left) {
    im2col_job job = {x, y, h, w, c, out_h, out_w, kh, kw, sh, sw, dh, dw, top, left};
    sr_parallel_for(num_threads, n * out_h, _im2col_task, &job);
}
"""

_I = ctypes.c_int64


@functools.cache
def im2col_nhwc():
    """`im2col_nhwc`: (threads, x [N, H, W, C], y [N, out_h, out_w, kh * kw * C], N, H, W, C,
    out_h, out_w, kh, kw, sh, sw, dh, dw, pad_top, pad_left)."""
    return declare(load_library("im2col", SOURCE), "im2col_nhwc",
                   [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p] + [_I] * 14)
