"""C kernels for BSR linear layers over block-row panels.

The blocks of block row R (kept blocks k0..k1, nb = k1 - k0) are repacked into a
row-major panel [r, nb * c] starting at k0 * r * c: panel[i, kk * c + j] =
blocks[k0 + kk, i, j]. Every output row of the block row is then one dense run
of nb * c weights against the matching x entries.

Batch 1 (`bsr_gemv`): per block row, the x segments of its kept block columns
are copied into a contiguous buffer xg [nb * c], then up to four output rows at a
time take a SIMD dot product with it (one xg load feeds four rows).

Batched (`bsr_gemm`): x is transposed into xT [in padded to c, rows padded to VL];
every panel entry (i, kk * c + j) is a broadcast times the batch tile of xT row
bci[kk] * c + j, accumulated for up to four output rows at once.

Block rows are split into tasks (`task_block_rows`, [tasks + 1]) balancing stored
weights; the tasks run through `_pool.sr_parallel_for`.
"""

from __future__ import annotations

import ctypes
import functools

from sparse_rt.kernels.cpu._native import declare, load_library

SOURCE = r"""
/* Gathers the x segments of block columns bci[0..nb) (c wide, zero past `in`) into xg.
   Columns of width 1 go through SIMD gathers, widths 4 and 8 through fixed-size copies. */
#define DEFINE_GATHER_SEGMENTS(IDX, ITYPE)                                                    \
static inline void _gather_segments_##IDX(const ITYPE* bci, int64_t nb, int64_t c,           \
                                          const float* x, int64_t in, float* xg) {           \
    int64_t kk = 0;                                                                          \
    if (c == 1) {                                                                            \
        for (; kk + VL <= nb; kk += VL) vstore(xg + kk, vgather(x, vi_load_##IDX(bci + kk)));  \
        if (kk < nb) vstore_n(xg + kk, vgather_n(x, vi_load_##IDX##_n(bci + kk, (int)(nb - kk)), \
                                                 (int)(nb - kk)), (int)(nb - kk));            \
        return;                                                                              \
    }                                                                                        \
    for (; kk < nb; kk++) {                                                                  \
        int64_t col = (int64_t)bci[kk] * c;                                                  \
        float* dst = xg + kk * c;                                                            \
        if (col + c > in) {                                                                  \
            for (int64_t j = 0; j < c; j++) dst[j] = col + j < in ? x[col + j] : 0.0f;       \
        } else if (c == 4) {                                                                 \
            memcpy(dst, x + col, 4 * sizeof(float));                                         \
        } else if (c == 8) {                                                                 \
            memcpy(dst, x + col, 8 * sizeof(float));                                         \
        } else {                                                                             \
            int64_t j = 0;                                                                   \
            for (; j + VL <= c; j += VL) vstore(dst + j, vload(x + col + j));                \
            for (; j < c; j++) dst[j] = x[col + j];                                          \
        }                                                                                    \
    }                                                                                        \
}

/* dots[i] = panel[i * ld : i * ld + len] . xg for i < RB. */
#define DEFINE_PANEL_DOT(RB)                                                                 \
static inline void _panel_dot_##RB(const float* panel, int64_t ld, const float* xg,          \
                                   int64_t len, float* dots) {                               \
    vf acc[RB][2];                                                                           \
    _Pragma("GCC unroll 4")                                                                  \
    for (int i = 0; i < RB; i++) { acc[i][0] = vzero(); acc[i][1] = vzero(); }                \
    int64_t t = 0;                                                                           \
    for (; t + 2 * VL <= len; t += 2 * VL) {                                                 \
        vf x0 = vload(xg + t), x1 = vload(xg + t + VL);                                      \
        _Pragma("GCC unroll 4")                                                              \
        for (int i = 0; i < RB; i++) {                                                       \
            acc[i][0] = vfma(vload(panel + i * ld + t), x0, acc[i][0]);                      \
            acc[i][1] = vfma(vload(panel + i * ld + t + VL), x1, acc[i][1]);                 \
        }                                                                                    \
    }                                                                                        \
    for (; t < len; t += VL) {                                                               \
        int n = len - t < VL ? (int)(len - t) : VL;                                          \
        vf x0 = vload_n(xg + t, n);                                                          \
        _Pragma("GCC unroll 4")                                                              \
        for (int i = 0; i < RB; i++) acc[i][0] = vfma(vload_n(panel + i * ld + t, n), x0, acc[i][0]); \
    }                                                                                        \
    _Pragma("GCC unroll 4")                                                                  \
    for (int i = 0; i < RB; i++) dots[i] = vsum(vadd(acc[i][0], acc[i][1]));                 \
}

DEFINE_PANEL_DOT(1) DEFINE_PANEL_DOT(2) DEFINE_PANEL_DOT(4)

struct bsr_job {
    const int64_t* task_block_rows;
    const int64_t* block_row_offsets;
    const void* block_column_indices;
    const float *panels, *bias, *x, *xt;
    float *y, *scratch;
    int64_t r, c, in, out, scratch_stride, rows, ldt, batch_vectors;
};

#define DEFINE_BSR_GEMV(IDX, ITYPE)                                                          \
DEFINE_GATHER_SEGMENTS(IDX, ITYPE)                                                           \
static void _bsr_gemv_task_##IDX(void* context, int64_t t, int worker) {                     \
    const struct bsr_job* job = (const struct bsr_job*)context;                              \
    int64_t r = job->r, c = job->c;                                                          \
    float* xg = job->scratch + worker * job->scratch_stride;                                 \
    for (int64_t br = job->task_block_rows[t]; br < job->task_block_rows[t + 1]; br++) {     \
        int64_t k0 = job->block_row_offsets[br], nb = job->block_row_offsets[br + 1] - k0;   \
        int64_t len = nb * c;                                                                \
        const float* panel = job->panels + k0 * r * c;                                       \
        _gather_segments_##IDX((const ITYPE*)job->block_column_indices + k0, nb, c, job->x,  \
                               job->in, xg);                                                 \
        float dots[4];                                                                       \
        for (int64_t i = 0; i < r; ) {                                                       \
            int rb = r - i >= 4 ? 4 : (r - i >= 2 ? 2 : 1);                                  \
            if (rb == 4) _panel_dot_4(panel + i * len, len, xg, len, dots);                  \
            else if (rb == 2) _panel_dot_2(panel + i * len, len, xg, len, dots);             \
            else _panel_dot_1(panel + i * len, len, xg, len, dots);                          \
            for (int q = 0; q < rb; q++) {                                                   \
                int64_t row = br * r + i + q;                                                \
                if (row < job->out) job->y[row] = dots[q] + (job->bias ? job->bias[row] : 0.0f); \
            }                                                                                \
            i += rb;                                                                         \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
void bsr_gemv_##IDX(int num_threads, int64_t tasks, const int64_t* task_block_rows,         \
                    const int64_t* block_row_offsets, const ITYPE* block_column_indices,    \
                    const float* panels, const float* bias, int64_t r, int64_t c,           \
                    int64_t in, int64_t out, int64_t longest, const float* x, float* y) {    \
    int64_t stride = (longest * c + VL) / VL * VL;                                           \
    int workers = num_threads > 1 ? num_threads : 1;                                         \
    float* scratch = (float*)malloc((size_t)(stride * workers) * sizeof(float));             \
    struct bsr_job job = {task_block_rows, block_row_offsets, block_column_indices, panels,  \
                          bias, x, NULL, y, scratch, r, c, in, out, stride, 1, 0, 0};        \
    sr_parallel_for(workers, tasks, _bsr_gemv_task_##IDX, &job);                             \
    free(scratch);                                                                           \
}

/* Batched: output rows are buffered as a [STORE_GROUP, tile] block (tile row: the output row
   modulo STORE_GROUP) and written to y [rows, out] by the prelude's store_row_tile. */
/* acc[i][*] = panel rows i < RB (row stride len) times xT tiles, NV registers wide. */
#define DEFINE_BSR_ROWS(IDX, ITYPE, RB, NV)                                                  \
static inline void _bsr_rows_##IDX##_##RB##_##NV(const float* panel, int64_t len,            \
        const ITYPE* bci, int64_t nb, int64_t c, const float* xt, int64_t ldt, int64_t b0,   \
        vf out_acc[RB][NV]) {                                                                \
    vf acc[RB][NV];                                                                          \
    _Pragma("GCC unroll 4")                                                                  \
    for (int i = 0; i < RB; i++)                                                             \
        _Pragma("GCC unroll 4")                                                              \
        for (int v = 0; v < NV; v++) acc[i][v] = vzero();                                    \
    for (int64_t kk = 0; kk < nb; kk++) {                                                    \
        const float* xcol = xt + (int64_t)bci[kk] * c * ldt + b0;                            \
        const float* w = panel + kk * c;                                                     \
        for (int64_t j = 0; j < c; j++) {                                                    \
            vf xv[NV];                                                                       \
            _Pragma("GCC unroll 4")                                                          \
            for (int v = 0; v < NV; v++) xv[v] = vload(xcol + j * ldt + v * VL);             \
            _Pragma("GCC unroll 4")                                                          \
            for (int i = 0; i < RB; i++) {                                                   \
                vf wv = vset1(w[i * len + j]);                                               \
                _Pragma("GCC unroll 4")                                                      \
                for (int v = 0; v < NV; v++) acc[i][v] = vfma(wv, xv[v], acc[i][v]);         \
            }                                                                                \
        }                                                                                    \
    }                                                                                        \
    _Pragma("GCC unroll 4")                                                                  \
    for (int i = 0; i < RB; i++)                                                             \
        _Pragma("GCC unroll 4")                                                              \
        for (int v = 0; v < NV; v++) out_acc[i][v] = acc[i][v];                              \
}

/* One block row against batch lanes b0 .. b0 + NV * VL: rows go to the task's tile buffer. */
#define DEFINE_BSR_BLOCK_ROW(IDX, ITYPE, NV)                                                 \
DEFINE_BSR_ROWS(IDX, ITYPE, 1, NV) DEFINE_BSR_ROWS(IDX, ITYPE, 2, NV)                        \
DEFINE_BSR_ROWS(IDX, ITYPE, 4, NV)                                                           \
static inline void _bsr_block_row_##IDX##_##NV(int64_t br, int64_t row0, int64_t row_end,    \
        const int64_t* block_row_offsets, const ITYPE* block_column_indices,                 \
        const float* panels, const float* bias, int64_t r, int64_t c, const float* xt,       \
        int64_t ldt, int64_t b0, int lanes, float* tile, float* y, int64_t out) {            \
    int64_t k0 = block_row_offsets[br], nb = block_row_offsets[br + 1] - k0, len = nb * c;   \
    const float* panel = panels + k0 * r * c;                                                \
    const ITYPE* bci = block_column_indices + k0;                                            \
    for (int64_t i = 0; i < r; ) {                                                           \
        int rb = r - i >= 4 ? 4 : (r - i >= 2 ? 2 : 1);                                      \
        vf acc[4][NV];                                                                       \
        if (rb == 4) _bsr_rows_##IDX##_4_##NV(panel + i * len, len, bci, nb, c, xt, ldt, b0, acc); \
        else if (rb == 2) _bsr_rows_##IDX##_2_##NV(panel + i * len, len, bci, nb, c, xt, ldt, b0, acc); \
        else _bsr_rows_##IDX##_1_##NV(panel + i * len, len, bci, nb, c, xt, ldt, b0, acc);   \
        for (int q = 0; q < rb; q++) {                                                       \
            int64_t row = br * r + i + q;                                                    \
            if (row >= row_end) break;                                                       \
            int64_t g = row % STORE_GROUP;                                                   \
            vf b = vset1(bias ? bias[row] : 0.0f);                                           \
            for (int v = 0; v < NV; v++) vstore(tile + g * NV * VL + v * VL, vadd(acc[q][v], b)); \
            if (g == STORE_GROUP - 1 || row == row_end - 1) {                                \
                int64_t first = row - g < row0 ? row0 - (row - g) : 0;  /* the task's first group */ \
                store_row_tile(tile + first * NV * VL, NV * VL, g + 1 - first, lanes, y, out, row - g + first, b0); \
            }                                                                                \
        }                                                                                    \
        i += rb;                                                                             \
    }                                                                                        \
}

#define DEFINE_BSR_GEMM(IDX, ITYPE)                                                          \
DEFINE_BSR_BLOCK_ROW(IDX, ITYPE, 1) DEFINE_BSR_BLOCK_ROW(IDX, ITYPE, 2)                      \
DEFINE_BSR_BLOCK_ROW(IDX, ITYPE, 4)                                                          \
static void _bsr_gemm_task_##IDX(void* context, int64_t t, int worker) {                     \
    const struct bsr_job* job = (const struct bsr_job*)context;                              \
    int64_t r = job->r, ldt = job->ldt;                                                      \
    const ITYPE* bci = (const ITYPE*)job->block_column_indices;                              \
    float tile[STORE_GROUP * 4 * VL];                                                        \
    /* task_block_rows NULL: task t is tile t of the batch against every block row */       \
    int by_tiles = job->task_block_rows == NULL;                                             \
    int64_t width = job->batch_vectors * VL;                                                 \
    int64_t br_begin = by_tiles ? 0 : job->task_block_rows[t];                               \
    int64_t br_end = by_tiles ? (job->out + r - 1) / r : job->task_block_rows[t + 1];        \
    int64_t b_begin = by_tiles ? t * width : 0, b_end = by_tiles ? b_begin + width : ldt;    \
    int64_t row0 = br_begin * r, row_end = br_end * r < job->out ? br_end * r : job->out;    \
    for (int64_t b0 = b_begin; b0 < b_end; b0 += width) {                                    \
        int64_t nv = (ldt - b0) / VL < job->batch_vectors ? (ldt - b0) / VL : job->batch_vectors; \
        int lanes = (int)(job->rows - b0 < nv * VL ? job->rows - b0 : nv * VL);              \
        for (int64_t br = br_begin; br < br_end; br++) {                                     \
            if (nv == 1) _bsr_block_row_##IDX##_1(br, row0, row_end, job->block_row_offsets, bci, \
                job->panels, job->bias, r, job->c, job->xt, ldt, b0, lanes, tile, job->y, job->out); \
            else if (nv == 2) _bsr_block_row_##IDX##_2(br, row0, row_end, job->block_row_offsets, bci, \
                job->panels, job->bias, r, job->c, job->xt, ldt, b0, lanes, tile, job->y, job->out); \
            else _bsr_block_row_##IDX##_4(br, row0, row_end, job->block_row_offsets, bci,    \
                job->panels, job->bias, r, job->c, job->xt, ldt, b0, lanes, tile, job->y, job->out); \
        }                                                                                    \
    }                                                                                        \
}                                                                                            \
void bsr_gemm_##IDX(int num_threads, int64_t tasks, const int64_t* task_block_rows,         \
                    const int64_t* block_row_offsets, const ITYPE* block_column_indices,    \
                    const float* panels, const float* bias, int64_t r, int64_t c,           \
                    int64_t rows, int64_t in, int64_t in_padded, int64_t out,               \
                    const float* x, float* y, float* xt, int64_t batch_vectors) {            \
    int64_t ldt = (rows + VL - 1) / VL * VL;                                                 \
    transpose_padded(num_threads, rows, ldt, in, x, in, xt, ldt);                            \
    memset(xt + in * ldt, 0, (size_t)((in_padded - in) * ldt) * sizeof(float));              \
    struct bsr_job job = {task_block_rows, block_row_offsets, block_column_indices, panels,  \
                          bias, x, xt, y, NULL, r, c, in, out, 0, rows, ldt, batch_vectors}; \
    sr_parallel_for(num_threads, tasks, _bsr_gemm_task_##IDX, &job);                         \
}

DEFINE_BSR_GEMV(i8, int8_t) DEFINE_BSR_GEMV(i16, int16_t) DEFINE_BSR_GEMV(i32, int32_t)
DEFINE_BSR_GEMM(i8, int8_t) DEFINE_BSR_GEMM(i16, int16_t) DEFINE_BSR_GEMM(i32, int32_t)
"""

_P = ctypes.c_void_p
_I = ctypes.c_int64


@functools.cache
def bsr_gemv(index: str):
    """`bsr_gemv_<index>`: (threads, tasks, task_block_rows, block_row_offsets,
    block_column_indices, panels, bias or None, r, c, in, out, most blocks in a block row, x, y)."""
    library = load_library("bsr", SOURCE)
    return declare(
        library, f"bsr_gemv_{index}", [ctypes.c_int, _I, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _P, _P]
    )


@functools.cache
def bsr_gemm(index: str):
    """`bsr_gemm_<index>`: (threads, tasks, task_block_rows, block_row_offsets,
    block_column_indices, panels, bias or None, r, c, rows, in, in_padded, out, x, y,
    xt scratch [in_padded * ceil(rows / VL) * VL], batch_vectors); task_block_rows None: a
    task per batch_vectors * VL rows of x, against every block row."""
    library = load_library("bsr", SOURCE)
    return declare(
        library, f"bsr_gemm_{index}", [ctypes.c_int, _I, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _P, _P, _P, _I]
    )
