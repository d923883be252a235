"""C transforms of a Winograd F(4x4, 3x3) convolution over channels-last tensors.

A 3x3, stride-1 convolution computes each 4x4 output tile from the 6x6 input tile under
it as Y = A^T [(G g G^T) . (B^T d B)] A (Lavin and Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016). The 36 products (.) over the input channels are 36
matrix products: V [36, tiles, C] @ U [36, C, K] = M [36, tiles, K].

`winograd_input`: x [N, H, W, C] -> V [36, tiles, C], tiles = N * tiles_h * tiles_w in
(n, tile row, tile column) order; tile (th, tw) reads input rows th * 4 - pad_top + 0..5 and
columns tw * 4 - pad_left + 0..5, zeros outside x.

`winograd_output`: M [36, tiles, K] -> y [N, out_h, out_w, K] = A^T m A + bias (+ z, the
residual, [N, out_h, out_w, K]) then ReLU when asked; the tiles' rows and columns past
out_h, out_w are dropped.

Both run a task per row of tiles through `_pool.sr_parallel_for`, VL channels at a time.

`winograd_product`: M [36, tiles, K] = V [36, tiles, C] @ U, U packed per position into the
panels of the dense kernel's register tiles ([36, ceil(K / NR), C, NR], `_dense_native`), in
tasks of (position, block of up to 256 tiles, panels_per_task panels). At batch 1 the
products stream U from memory (9 MiB for 256 -> 256 channels) with the tiles' prefetches:
ResNet-50's 14x14x256 products take 0.43 ms hot and 0.72 ms cold, against 0.77 and 1.20 ms
in torch.bmm (512 channels at 7x7: 1.06 against 2.96 ms cold).
"""

from __future__ import annotations

import ctypes
import functools

from sparse_rt.kernels.cpu._dense_native import TILE_SOURCE
from sparse_rt.kernels.cpu._native import declare, load_library

SOURCE = TILE_SOURCE + r"""
/* vf is a GCC vector type under every target of the prelude, so the transforms use its
   operators. ReLU as in the dense kernel: a NaN becomes 0. */
typedef float wf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t wi __attribute__((vector_size(VL * sizeof(float))));
static inline vf _winograd_relu(vf v) { wf x = (wf)v; return (vf)(wf)((wi)x & (x > 0.0f)); }

/* r = B^T d along one axis: d[0, ds, .., 5 ds] -> r[0, rs, .., 5 rs]. */
static inline void _winograd_b(const vf* d, int64_t ds, vf* r, int64_t rs) {
    vf d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds], d4 = d[4 * ds], d5 = d[5 * ds];
    vf d42 = d4 - d2, d31 = d3 - d1;
    r[0] = 4.0f * d0 - 5.0f * d2 + d4;
    r[rs] = (d3 + d4) - 4.0f * (d1 + d2);
    r[2 * rs] = 4.0f * (d1 - d2) + (d4 - d3);
    r[3 * rs] = d42 + 2.0f * d31;
    r[4 * rs] = d42 - 2.0f * d31;
    r[5 * rs] = 4.0f * d1 - 5.0f * d3 + d5;
}

/* o = A^T m along one axis: m[0, ms, .., 5 ms] -> o[0, os, .., 3 os]. */
static inline void _winograd_a(const vf* m, int64_t ms, vf* o, int64_t os) {
    vf m0 = m[0], m1 = m[ms], m2 = m[2 * ms], m3 = m[3 * ms], m4 = m[4 * ms], m5 = m[5 * ms];
    vf s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    o[0] = m0 + s12 + s34;
    o[os] = d12 + 2.0f * d34;
    o[2 * os] = s12 + 4.0f * s34;
    o[3 * os] = d12 + 8.0f * d34 + m5;
}

typedef struct {
    const float* x; float* v;
    int64_t h, w, c, tiles_h, tiles_w, tiles, pad_top, pad_left;
} input_job;

static void _winograd_input_task(void* context, int64_t task, int worker) {
    (void)worker;
    const input_job* job = (const input_job*)context;
    int64_t n = task / job->tiles_h, th = task % job->tiles_h, c = job->c;
    int64_t y0 = th * 4 - job->pad_top;
    for (int64_t tw = 0; tw < job->tiles_w; tw++) {
        int64_t tile = task * job->tiles_w + tw, x0 = tw * 4 - job->pad_left;
        for (int64_t c0 = 0; c0 < c; c0 += VL) {
            int lanes = c - c0 < VL ? (int)(c - c0) : VL;
            vf d[36], t[36];
            for (int i = 0; i < 6; i++) {
                int64_t yy = y0 + i;
                for (int j = 0; j < 6; j++) {
                    int64_t xx = x0 + j;
                    if (yy < 0 || yy >= job->h || xx < 0 || xx >= job->w) {
                        d[i * 6 + j] = vzero();
                        continue;
                    }
                    const float* p = job->x + ((n * job->h + yy) * job->w + xx) * c + c0;
                    d[i * 6 + j] = lanes == VL ? vload(p) : vload_n(p, lanes);
                }
            }
            for (int j = 0; j < 6; j++) _winograd_b(d + j, 6, t + j, 6);   /* columns: B^T d */
            for (int i = 0; i < 6; i++) _winograd_b(t + i * 6, 1, d + i * 6, 1);  /* rows: (B^T d) B */
            for (int k = 0; k < 36; k++) {
                float* q = job->v + (k * job->tiles + tile) * c + c0;
                if (lanes == VL) vstore(q, d[k]); else vstore_n(q, d[k], lanes);
            }
        }
    }
}

void winograd_input(int num_threads, const float* x, float* v, int64_t n, int64_t h, int64_t w, int64_t c,
                    int64_t tiles_h, int64_t tiles_w, int64_t pad_top, int64_t pad_left) {
    input_job job = {x, v, h, w, c, tiles_h, tiles_w, n * tiles_h * tiles_w, pad_top, pad_left};
    sr_parallel_for(num_threads, n * tiles_h, _winograd_input_task, &job);
}

typedef struct {
    const float* m; const float* bias; const float* z; float* y;
    int64_t out_h, out_w, k, tiles_h, tiles_w, tiles; int relu;
} output_job;

static void _winograd_output_task(void* context, int64_t task, int worker) {
    (void)worker;
    const output_job* job = (const output_job*)context;
    int64_t n = task / job->tiles_h, th = task % job->tiles_h, k = job->k;
    for (int64_t tw = 0; tw < job->tiles_w; tw++) {
        int64_t tile = task * job->tiles_w + tw;
        for (int64_t k0 = 0; k0 < k; k0 += VL) {
            int lanes = k - k0 < VL ? (int)(k - k0) : VL;
            vf m[36], t[24], o[16];
            for (int e = 0; e < 36; e++) {
                const float* p = job->m + (e * job->tiles + tile) * k + k0;
                m[e] = lanes == VL ? vload(p) : vload_n(p, lanes);
            }
            for (int j = 0; j < 6; j++) _winograd_a(m + j, 6, t + j, 6);   /* columns: A^T m, [4][6] */
            for (int i = 0; i < 4; i++) _winograd_a(t + i * 6, 1, o + i * 4, 1);  /* rows: [4][4] */
            vf b = job->bias == NULL ? vzero() : (lanes == VL ? vload(job->bias + k0) : vload_n(job->bias + k0, lanes));
            for (int i = 0; i < 4; i++) {
                int64_t oy = th * 4 + i;
                if (oy >= job->out_h) break;
                for (int j = 0; j < 4; j++) {
                    int64_t ox = tw * 4 + j;
                    if (ox >= job->out_w) break;
                    int64_t at = ((n * job->out_h + oy) * job->out_w + ox) * k + k0;
                    vf r = o[i * 4 + j] + b;
                    if (job->z != NULL) r += lanes == VL ? vload(job->z + at) : vload_n(job->z + at, lanes);
                    if (job->relu) r = _winograd_relu(r);
                    if (lanes == VL) vstore(job->y + at, r); else vstore_n(job->y + at, r, lanes);
                }
            }
        }
    }
}

void winograd_output(int num_threads, const float* m, const float* bias, const float* z, float* y, int64_t n,
                     int64_t out_h, int64_t out_w, int64_t k, int64_t tiles_h, int64_t tiles_w, int relu) {
    output_job job = {m, bias, z, y, out_h, out_w, k, tiles_h, tiles_w, n * tiles_h * tiles_w, relu};
    sr_parallel_for(num_threads, n * tiles_h, _winograd_output_task, &job);
}

#define WINOGRAD_ROW_BLOCK 256
static const float _winograd_zeros[NR] __attribute__((aligned(64))) = {0};

typedef struct {
    const float *v, *u; float* m;
    int64_t tiles, c, k, panels, panels_per_task, mr, row_blocks;
} product_job;

static void _winograd_product_task(void* context, int64_t task, int worker) {
    (void)worker;
    const product_job* job = (const product_job*)context;
    int64_t tiles = job->tiles, c = job->c, k = job->k;
    int64_t panel_tasks = (job->panels + job->panels_per_task - 1) / job->panels_per_task;
    int64_t position = task / (job->row_blocks * panel_tasks), rest = task % (job->row_blocks * panel_tasks);
    int64_t r_begin = rest / panel_tasks * WINOGRAD_ROW_BLOCK, t = rest % panel_tasks;
    int64_t r_end = r_begin + WINOGRAD_ROW_BLOCK < tiles ? r_begin + WINOGRAD_ROW_BLOCK : tiles;
    int64_t p_end = (t + 1) * job->panels_per_task < job->panels ? (t + 1) * job->panels_per_task : job->panels;
    const float* v = job->v + position * tiles * c;
    float* m = job->m + position * tiles * k;
    for (int64_t p = t * job->panels_per_task; p < p_end; p++) {
        const float* w = job->u + (position * job->panels + p) * c * NR;
        int ncols = k - p * NR < NR ? (int)(k - p * NR) : NR;
        for (int64_t r = r_begin; r < r_end; r += job->mr) {
            int rows = r_end - r < job->mr ? (int)(r_end - r) : (int)job->mr;
            _dense_tile(rows, c, w, v + r * c, c, m + r * k + p * NR, k, ncols, _winograd_zeros, NULL);
        }
    }
}

void winograd_product(int num_threads, const float* v, const float* u, float* m, int64_t tiles, int64_t c,
                      int64_t k, int64_t panels_per_task, int64_t mr) {
    int64_t panels = (k + NR - 1) / NR, row_blocks = (tiles + WINOGRAD_ROW_BLOCK - 1) / WINOGRAD_ROW_BLOCK;
    product_job job = {v, u, m, tiles, c, k, panels, panels_per_task, mr, row_blocks};
    sr_parallel_for(num_threads, 36 * row_blocks * ((panels + panels_per_task - 1) / panels_per_task),
                    _winograd_product_task, &job);
}
"""

_P = ctypes.c_void_p
_I = ctypes.c_int64


@functools.cache
def winograd_input():
    """`winograd_input`: (threads, x [N, H, W, C], v [36, tiles, C], N, H, W, C, tiles_h,
    tiles_w, pad_top, pad_left)."""
    return declare(load_library("winograd", SOURCE), "winograd_input",
                   [ctypes.c_int, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I])


@functools.cache
def winograd_product():
    """`winograd_product`: (threads, v [36, tiles, C], u panels [36, ceil(K / NR), C, NR],
    m [36, tiles, K], tiles, C, K, panels_per_task, rows per register tile (1..8))."""
    return declare(load_library("winograd", SOURCE), "winograd_product",
                   [ctypes.c_int, _P, _P, _P, _I, _I, _I, _I, _I])


@functools.cache
def winograd_output():
    """`winograd_output`: (threads, m [36, tiles, K], bias [K] or None, z [N, out_h, out_w, K]
    or None, y [N, out_h, out_w, K], N, out_h, out_w, K, tiles_h, tiles_w, relu)."""
    return declare(load_library("winograd", SOURCE), "winograd_output",
                   [ctypes.c_int, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, ctypes.c_int])
