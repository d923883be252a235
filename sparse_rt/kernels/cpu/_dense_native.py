"""C kernel for dense linear layers over a panel-packed weight.

The weight [out, in] is packed into panels of NR = 2 * VL output features,
`packed[p, k, j] = W[p * NR + j, k]` (zero rows past `out`), so a panel streams
contiguously through a register tile of MR input rows x NR outputs.
"""

from __future__ import annotations

import ctypes
import functools

from sparse_rt.kernels.cpu._native import declare, load_library
from sparse_rt.kernels.cpu.gelu import GELU_SOURCE

# The register tiles over one packed panel, shared with kernels that pack panels as they go.
TILE_SOURCE = GELU_SOURCE + r"""
#define NR (2 * VL)
/* The epilogue of a finished output tile, in registers: + z (a residual, rows of ldz floats;
   NULL: none), then act: 0 none, ACT_GELU (erf form), ACT_RELU (a NaN becomes 0) or ACT_CLIP
   to [lo, hi]. Codes as in dense.py's ACTIVATION_CODES. A tile gets NULL for no epilogue (the
   partial sums of a reduction block). */
#define ACT_GELU 1
#define ACT_RELU 2
#define ACT_CLIP 3
typedef struct { int act; float lo, hi; const float* z; int64_t ldz; } tile_epilogue;
static inline vf vrelu(vf v) { gf x = (gf)v; return (vf)(gf)((gi)x & (x > 0.0f)); }
/* v's n lanes through the epilogue, z: the residual's matching lanes or NULL */
static inline vf vepilogue(vf v, const tile_epilogue* ep, const float* z, int n) {
    if (z) v = vadd(v, n == VL ? vload(z) : vload_n(z, n));
    switch (ep->act) {
    case ACT_GELU: return vgelu(v);
    case ACT_RELU: return vrelu(v);
    case ACT_CLIP: return vmin(vmax(v, vset1(ep->lo)), vset1(ep->hi));
    default: return v;
    }
}
/* Panel rows requested ahead of use: a layer's weight mostly comes from DRAM (a model's
   weights do not stay in cache), and prefetching 16 rows (2 KiB with AVX-512) ahead cut a
   stack of eight 768x3072 / 3072x768 layers from 1.77 / 2.62 / 6.94 ms to 1.59 / 1.76 /
   4.77 ms at batch 1 / 8 / 32 (4 rows ahead: 1.63 / 2.02 / 5.78; 32 and 64: no better). */
#define PREFETCH_STEPS 16

/* y[r, 0:ncols] (+)= x[r, 0:kc] @ w[0:kc, 0:NR] for r < MR; starts from bias when given,
   else from the partial sums already in y; ep: the epilogue of the result (the last k block),
   its z at the tile's first row. WIDE 2 computes both vectors of the panel; WIDE 1 only the
   first, for a panel's last ncols <= VL outputs (a 16-output conv, a 10-class head), which
   would otherwise spend half its FMAs on padding. */
#define DEFINE_DENSE_TILE(NAME, MR, WIDE)                                                  \
static inline void NAME(int64_t kc, const float* restrict w,                               \
                        const float* restrict x, int64_t ldx,                              \
                        float* restrict y, int64_t ldy, int ncols,                         \
                        const float* restrict bias, const tile_epilogue* ep) {             \
    vf acc0[MR], acc1[MR];                                                                 \
    int n0 = ncols < VL ? ncols : VL, n1 = ncols - n0;                                     \
    _Pragma("GCC unroll 16")                                                               \
    for (int r = 0; r < MR; r++) {                                                         \
        if (bias) { acc0[r] = vload(bias); acc1[r] = WIDE == 2 ? vload(bias + VL) : vzero(); } \
        else {                                                                             \
            acc0[r] = vload_n(y + r * ldy, n0);                                            \
            acc1[r] = WIDE == 2 ? vload_n(y + r * ldy + VL, n1) : vzero();                 \
        }                                                                                  \
    }                                                                                      \
    for (int64_t k = 0; k < kc; k++) {                                                     \
        __builtin_prefetch(w + (k + PREFETCH_STEPS) * NR);                                 \
        if (WIDE == 2) __builtin_prefetch(w + (k + PREFETCH_STEPS) * NR + VL);             \
        vf w0 = vload(w + k * NR), w1 = WIDE == 2 ? vload(w + k * NR + VL) : vzero();      \
        _Pragma("GCC unroll 16")                                                           \
        for (int r = 0; r < MR; r++) {                                                     \
            vf xb = vset1(x[r * ldx + k]);                                                 \
            acc0[r] = vfma(xb, w0, acc0[r]);                                               \
            if (WIDE == 2) acc1[r] = vfma(xb, w1, acc1[r]);                                \
        }                                                                                  \
    }                                                                                      \
    _Pragma("GCC unroll 16")                                                               \
    for (int r = 0; r < MR; r++) {                                                         \
        if (ep) {                                                                          \
            const float* z = ep->z ? ep->z + r * ep->ldz : NULL;                           \
            acc0[r] = vepilogue(acc0[r], ep, z, n0);                                       \
            if (WIDE == 2) acc1[r] = vepilogue(acc1[r], ep, z ? z + VL : NULL, n1);        \
        }                                                                                  \
        if (ncols == NR) { vstore(y + r * ldy, acc0[r]); vstore(y + r * ldy + VL, acc1[r]); } \
        else {                                                                             \
            vstore_n(y + r * ldy, acc0[r], n0);                                            \
            if (WIDE == 2) vstore_n(y + r * ldy + VL, acc1[r], n1);                        \
        }                                                                                  \
    }                                                                                      \
}

#define DEFINE_DENSE_TILES(MR) DEFINE_DENSE_TILE(_dense_tile_##MR, MR, 2) DEFINE_DENSE_TILE(_dense_half_##MR, MR, 1)
DEFINE_DENSE_TILES(2) DEFINE_DENSE_TILES(3) DEFINE_DENSE_TILES(4)
DEFINE_DENSE_TILES(5) DEFINE_DENSE_TILES(6) DEFINE_DENSE_TILES(7) DEFINE_DENSE_TILES(8)

/* The one-row tile: four k-steps in flight, each into its own accumulators (a single pair
   would wait on the FMA latency every step). */
static inline void _dense_row(int64_t kc, const float* restrict w, const float* restrict x,
                              float* restrict y, int ncols, const float* restrict bias,
                              const tile_epilogue* ep) {
    vf acc[4][2];
    int n0 = ncols < VL ? ncols : VL, n1 = ncols - n0;
    for (int u = 0; u < 4; u++) { acc[u][0] = vzero(); acc[u][1] = vzero(); }
    if (bias) { acc[0][0] = vload(bias); acc[0][1] = vload(bias + VL); }
    else { acc[0][0] = vload_n(y, n0); acc[0][1] = vload_n(y + VL, n1); }
    int64_t k = 0;
    for (; k + 4 <= kc; k += 4) {
        _Pragma("GCC unroll 4")
        for (int u = 0; u < 4; u++) {
            __builtin_prefetch(w + (k + u + PREFETCH_STEPS) * NR);
            __builtin_prefetch(w + (k + u + PREFETCH_STEPS) * NR + VL);
            vf xb = vset1(x[k + u]);
            acc[u][0] = vfma(xb, vload(w + (k + u) * NR), acc[u][0]);
            acc[u][1] = vfma(xb, vload(w + (k + u) * NR + VL), acc[u][1]);
        }
    }
    for (; k < kc; k++) {
        vf xb = vset1(x[k]);
        acc[0][0] = vfma(xb, vload(w + k * NR), acc[0][0]);
        acc[0][1] = vfma(xb, vload(w + k * NR + VL), acc[0][1]);
    }
    vf y0 = vadd(vadd(acc[0][0], acc[1][0]), vadd(acc[2][0], acc[3][0]));
    vf y1 = vadd(vadd(acc[0][1], acc[1][1]), vadd(acc[2][1], acc[3][1]));
    if (ep) { y0 = vepilogue(y0, ep, ep->z, n0); y1 = vepilogue(y1, ep, ep->z ? ep->z + VL : NULL, n1); }
    if (ncols == NR) { vstore(y, y0); vstore(y + VL, y1); }
    else { vstore_n(y, y0, n0); vstore_n(y + VL, y1, n1); }
}

/* One row against up to 4 panels side by side (panel q at w + q * panel_stride): 4 weight
   streams at once keep more memory requests in flight than one panel after another. */
static inline void _dense_row_panels(int np, int64_t kc, const float* restrict w, int64_t panel_stride,
                                     const float* restrict x, float* restrict y, int64_t cols,
                                     const float* restrict bias, const tile_epilogue* ep) {
    vf acc[4][2];
    for (int q = 0; q < 4; q++) {
        int n0 = 0, n1 = 0;
        if (q < np) { int64_t c = cols - q * NR; int nc = c < NR ? (int)c : NR; n0 = nc < VL ? nc : VL; n1 = nc - n0; }
        if (bias) { acc[q][0] = vload(bias + q * NR); acc[q][1] = vload(bias + q * NR + VL); }
        else { acc[q][0] = vload_n(y + q * NR, n0); acc[q][1] = vload_n(y + q * NR + VL, n1); }
    }
    if (np == 4) {
        for (int64_t k = 0; k < kc; k++) {
            vf xb = vset1(x[k]);
            _Pragma("GCC unroll 4")
            for (int q = 0; q < 4; q++) {
                const float* wq = w + q * panel_stride + k * NR;
                __builtin_prefetch(wq + PREFETCH_STEPS * NR);
                __builtin_prefetch(wq + PREFETCH_STEPS * NR + VL);
                acc[q][0] = vfma(xb, vload(wq), acc[q][0]);
                acc[q][1] = vfma(xb, vload(wq + VL), acc[q][1]);
            }
        }
    } else {
        for (int64_t k = 0; k < kc; k++) {
            vf xb = vset1(x[k]);
            for (int q = 0; q < np; q++) {
                const float* wq = w + q * panel_stride + k * NR;
                __builtin_prefetch(wq + PREFETCH_STEPS * NR);
                __builtin_prefetch(wq + PREFETCH_STEPS * NR + VL);
                acc[q][0] = vfma(xb, vload(wq), acc[q][0]);
                acc[q][1] = vfma(xb, vload(wq + VL), acc[q][1]);
            }
        }
    }
    for (int q = 0; q < np; q++) {
        int64_t c = cols - q * NR;
        int nc = c < NR ? (int)c : NR, n0 = nc < VL ? nc : VL, n1 = nc - n0;
        if (ep) {
            const float* z = ep->z ? ep->z + q * NR : NULL;
            acc[q][0] = vepilogue(acc[q][0], ep, z, n0);
            acc[q][1] = vepilogue(acc[q][1], ep, z ? z + VL : NULL, n1);
        }
        if (nc == NR) { vstore(y + q * NR, acc[q][0]); vstore(y + q * NR + VL, acc[q][1]); }
        else { vstore_n(y + q * NR, acc[q][0], n0); vstore_n(y + q * NR + VL, acc[q][1], n1); }
    }
}

/* Calls PREFIX##mr (mr 2..8) with _dense_tile's arguments. */
#define DENSE_TILE_CALL(PREFIX)                                                            \
    switch (mr) {                                                                          \
    case 2: PREFIX##2(kc, w, x, ldx, y, ldy, ncols, bias, ep); return;                     \
    case 3: PREFIX##3(kc, w, x, ldx, y, ldy, ncols, bias, ep); return;                     \
    case 4: PREFIX##4(kc, w, x, ldx, y, ldy, ncols, bias, ep); return;                     \
    case 5: PREFIX##5(kc, w, x, ldx, y, ldy, ncols, bias, ep); return;                     \
    case 6: PREFIX##6(kc, w, x, ldx, y, ldy, ncols, bias, ep); return;                     \
    case 7: PREFIX##7(kc, w, x, ldx, y, ldy, ncols, bias, ep); return;                     \
    default: PREFIX##8(kc, w, x, ldx, y, ldy, ncols, bias, ep); return;                    \
    }

static inline void _dense_tile(int mr, int64_t kc, const float* w, const float* x, int64_t ldx,
                               float* y, int64_t ldy, int ncols, const float* bias, const tile_epilogue* ep) {
    if (mr <= 1) { _dense_row(kc, w, x, y, ncols, bias, ep); return; }
    if (ncols <= VL) DENSE_TILE_CALL(_dense_half_)
    DENSE_TILE_CALL(_dense_tile_)
}

/* panels [padded / NR, rows, NR] for the tiles from src [cols, rows], its rows ld apart and their
   elements adjacent: panels[p, k, j] = src[p * NR + j, k] (zeros past cols) */
static void _pack_panels_transposed(const float* src, int64_t ld, int64_t rows, int64_t cols, int64_t padded,
                                    float* panels) {
    memset(panels, 0, (size_t)(padded * rows) * sizeof(float));
    for (int64_t c = 0; c < cols; c++) {
        float* dst = panels + (c / NR * rows) * NR + c % NR;
        const float* line = src + c * ld;
        for (int64_t k = 0; k < rows; k++) dst[k * NR] = line[k];
    }
}
"""

SOURCE = TILE_SOURCE + r"""
struct dense_job {
    int64_t rows, in, out, panels, panels_per_task, mr, kc;
    const float *packed, *bias, *x;
    float* y;
    tile_epilogue ep;  /* z at y's first row */
};

/* Rows per task: a task runs its panels over one block of x's rows, which stays in L2
   (256 rows of 768 inputs: 768 KiB) while the panels go by. 3072 x 768 at 4096 rows:
   67.5 ms, against 80 ms with every task over all rows (torch's GEMM: 58.6 ms). */
#define ROW_BLOCK 256

static void _dense_task(void* context, int64_t task, int worker) {
    const struct dense_job* job = (const struct dense_job*)context;
    int64_t in = job->in, out = job->out, kc = job->kc;
    int64_t panel_tasks = (job->panels + job->panels_per_task - 1) / job->panels_per_task;
    int64_t t = task % panel_tasks, r_begin = task / panel_tasks * ROW_BLOCK;
    int64_t r_end = r_begin + ROW_BLOCK < job->rows ? r_begin + ROW_BLOCK : job->rows;
    int64_t p_end = (t + 1) * job->panels_per_task < job->panels ? (t + 1) * job->panels_per_task : job->panels;
    tile_epilogue ep = job->ep;  /* z moved to each tile's first row */
    const tile_epilogue* final = ep.act || ep.z ? &ep : NULL;  /* after the last reduction block */
    for (int64_t k0 = 0; k0 < in; k0 += kc) {
        int64_t kcur = in - k0 < kc ? in - k0 : kc;
        int last = k0 + kcur == in;
        if (job->rows == 1) {
            for (int64_t p = t * job->panels_per_task; p < p_end; p += 4) {
                int np = p_end - p < 4 ? (int)(p_end - p) : 4;
                ep.z = job->ep.z ? job->ep.z + p * NR : NULL;
                _dense_row_panels(np, kcur, job->packed + (p * in + k0) * NR, in * NR, job->x + k0,
                                  job->y + p * NR, out - p * NR, k0 == 0 ? job->bias + p * NR : NULL,
                                  last ? final : NULL);
            }
            continue;
        }
        for (int64_t p = t * job->panels_per_task; p < p_end; p++) {
            const float* w = job->packed + (p * in + k0) * NR;
            int ncols = out - p * NR < NR ? (int)(out - p * NR) : NR;
            for (int64_t r = r_begin; r < r_end; r += job->mr) {
                int m = r_end - r < job->mr ? (int)(r_end - r) : (int)job->mr;
                ep.z = job->ep.z ? job->ep.z + r * out + p * NR : NULL;
                _dense_tile(m, kcur, w, job->x + r * in + k0, in, job->y + r * out + p * NR, out, ncols,
                            k0 == 0 ? job->bias + p * NR : NULL, last ? final : NULL);
            }
        }
    }
}

/* y [rows, out] = act(x [rows, in] @ W.T + bias (+ z [rows, out])).
   packed: [ceil(out / NR), in, NR]; bias: [ceil(out / NR) * NR] (zeros when the layer has none);
   z: the residual, or NULL. in >= 1. Work is split into tasks of `panels_per_task` panels and
   ROW_BLOCK rows; inside a task the reduction runs in blocks of `kc` inputs (0: all) and the rows
   in tiles of `mr` (1..8). act: the epilogue (0 none, ACT_GELU, ACT_RELU, ACT_CLIP to [lo, hi]). */
void dense_linear(int num_threads, int64_t rows, int64_t in, int64_t out,
                  const float* packed, const float* bias, const float* x, const float* z, float* y,
                  int64_t panels_per_task, int64_t mr, int64_t kc, int64_t act, float lo, float hi) {
    int64_t panels = (out + NR - 1) / NR;
    struct dense_job job = {rows, in, out, panels, panels_per_task, mr, kc <= 0 || kc > in ? in : kc,
                            packed, bias, x, y, {(int)act, lo, hi, z, out}};
    int64_t row_blocks = (rows + ROW_BLOCK - 1) / ROW_BLOCK;
    sr_parallel_for(num_threads, (panels + panels_per_task - 1) / panels_per_task * row_blocks, _dense_task, &job);
}

/* Layers run back to back, each reading the previous one's output: x [rows, in_0] ->
   y [rows, out_last]. layers: int64 [count, 8] rows of (in, out, panels_per_task, mr, kc,
   act, packed pointer, bias pointer), with in_{i+1} = out_i. The outputs between layers
   alternate between work and work + rows * max_out, max_out the largest of out_0..out_{count-2}. */
void dense_chain(int num_threads, int64_t rows, int64_t count, const int64_t* layers,
                 const float* x, float* work, int64_t max_out, float* y) {
    const float* input = x;
    for (int64_t i = 0; i < count; i++) {
        const int64_t* l = layers + 8 * i;
        float* output = i == count - 1 ? y : work + (i % 2) * rows * max_out;
        dense_linear(num_threads, rows, l[0], l[1], (const float*)(intptr_t)l[6], (const float*)(intptr_t)l[7],
                     input, NULL, output, l[2], l[3], l[4], l[5], 0.0f, 0.0f);
        input = output;
    }
}
"""

_P = ctypes.c_void_p
_I = ctypes.c_int64


@functools.cache
def _library():
    return load_library("dense", SOURCE)


@functools.cache
def dense_library():
    """The compiled `dense_linear` function."""
    return declare(_library(), "dense_linear",
                   [ctypes.c_int, _I, _I, _I, _P, _P, _P, _P, _P, _I, _I, _I, _I, ctypes.c_float, ctypes.c_float])


@functools.cache
def dense_chain_library():
    """The compiled `dense_chain` function."""
    return declare(_library(), "dense_chain", [ctypes.c_int, _I, _I, _P, _P, _P, _I, _P])
