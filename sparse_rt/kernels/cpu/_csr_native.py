"""C kernels for CSR linear layers (and for N:M weights expanded to CSR).

Batch 1, two layouts:

- rows (`csr_gemv_<index>_u<unroll>`): each row is a gather dot product, `unroll`
  SIMD accumulators wide, the tail done with masked loads and gathers, then a
  horizontal sum.
- slices (`csr_slices_gemv_<index>_<loads>`, SELL-C-sigma with C = VL and sigma = all
  rows): the rows, sorted by length, go VL to a slice, and slice s stores its entries
  step by step, VL values (one per row; zero past a row's end) and their VL column
  indices, so every SIMD lane accumulates its own output row: no horizontal sum, no
  masked tail, and one vector of outputs (scattered to its rows) per slice. Sorting
  leaves almost no padding (0.1-1 % at 90 % random sparsity). `loads` says how x is
  read: "gather" (the SIMD gather) or "scalar" (VL scalar loads put together with
  inserts, the indices read 64 bits at a time): on AMD Zen 3 the AVX2 gather is the
  slower of the two (13 against 24 GB/s on one core for 384x384 at 10 %), on an AVX-512
  Xeon the faster.
  `csr_slices_chain` runs several such layers, each reading the previous one's output,
  in one call.

Batched (`csr_gemm_<index>`): x [rows, in] is first transposed into a scratch of
batch tiles, tile b0 a contiguous xT block [in, width] (width = `batch_vectors` SIMD
registers), so that every nonzero (r, c) is one broadcast of its value times the
contiguous row c of the tile, accumulated in registers for row r. Tile-major
scratch keeps the rows a nonzero run gathers width * 4 bytes apart: with one
[in, rows] transpose they were rows * 4 bytes apart, a multiple of 4 KiB at batch
1024, and all fell into one L1 set (3x slower at 1024 rows).

The batch-1 kernels and `csr_gemm` split the output rows into tasks whose boundaries
(`task_rows`, [tasks + 1]) balance nonzeros; the tasks run through `_pool.sr_parallel_for`.
`csr_gemm_blocks` splits the input rows instead: each task transposes its own tile of x
into its worker's scratch (in L1/L2 right after) and runs every output row against it.
Where rows are short and there are many input rows (1x1 convolutions: 64-512 inputs,
784-3136 pixels) it spares the separate transposition pass over all of x.
"""

from __future__ import annotations

import ctypes
import functools

from sparse_rt.kernels.cpu._native import declare, load_library
from sparse_rt.kernels.cpu.gelu import GELU_SOURCE

SOURCE = GELU_SOURCE + r"""
/* Accumulator sets per batch-tile width (NV registers): UK nonzeros in flight per step. */
#define CSR_UK1 4
#define CSR_UK2 2
#define CSR_UK3 2
#define CSR_UK4 1

/* Batched outputs are computed STORE_GROUP rows at a time into a [STORE_GROUP, tile] buffer
   (groups aligned to multiples of STORE_GROUP) and written by the prelude's store_row_tile
   as runs of consecutive outputs of y [rows, out]. */
struct csr_job {
    const int64_t* task_rows;
    const int64_t* row_offsets;
    const void* column_indices;
    const float *values, *bias, *x, *xt;
    float* y;
    int64_t rows, out, ldt, batch_vectors, in, gelu, y_tiles;
};

#define DEFINE_CSR_GEMV(IDX, ITYPE, UNROLL)                                                   \
static void _csr_gemv_task_##IDX##_u##UNROLL(void* context, int64_t t, int worker) {         \
    const struct csr_job* job = (const struct csr_job*)context;                              \
    const int64_t* row_offsets = job->row_offsets;                                           \
    const ITYPE* column_indices = (const ITYPE*)job->column_indices;                         \
    const float *values = job->values, *bias = job->bias, *x = job->x;                       \
    for (int64_t r = job->task_rows[t]; r < job->task_rows[t + 1]; r++) {                    \
        int64_t k = row_offsets[r], end = row_offsets[r + 1];                                \
        vf acc[UNROLL];                                                                      \
        for (int u = 0; u < UNROLL; u++) acc[u] = vzero();                                   \
        for (; k + UNROLL * VL <= end; k += UNROLL * VL) {                                   \
            _Pragma("GCC unroll 4")                                                          \
            for (int u = 0; u < UNROLL; u++)                                                 \
                acc[u] = vfma(vload(values + k + u * VL),                                    \
                              vgather(x, vi_load_##IDX(column_indices + k + u * VL)), acc[u]);  \
        }                                                                                    \
        for (; k + VL <= end; k += VL)                                                       \
            acc[0] = vfma(vload(values + k), vgather(x, vi_load_##IDX(column_indices + k)), acc[0]); \
        if (k < end) {                                                                       \
            int n = (int)(end - k);                                                          \
            acc[0] = vfma(vload_n(values + k, n),                                            \
                          vgather_n(x, vi_load_##IDX##_n(column_indices + k, n), n), acc[0]); \
        }                                                                                    \
        for (int u = 1; u < UNROLL; u++) acc[0] = vadd(acc[0], acc[u]);                       \
        job->y[r] = vsum(acc[0]) + (bias ? bias[r] : 0.0f);                                  \
    }                                                                                        \
}                                                                                            \
void csr_gemv_##IDX##_u##UNROLL(int num_threads, int64_t tasks, const int64_t* task_rows,    \
                                const int64_t* row_offsets, const ITYPE* column_indices,     \
                                const float* values, const float* bias, const float* x,      \
                                float* y) {                                                  \
    struct csr_job job = {task_rows, row_offsets, column_indices, values, bias, x, NULL, y,  \
                          1, 0, 0, 0, 0, 0, 0};                                                       \
    sr_parallel_for(num_threads, tasks, _csr_gemv_task_##IDX##_u##UNROLL, &job);             \
}

/* Rows r0..r1 against batch lanes b0 .. b0 + NV*VL of xT; UK nonzeros per step, each into its
   own accumulators (hides the FMA latency). */
#define DEFINE_CSR_ROWS(IDX, ITYPE, NV, UK)                                                   \
static inline void _csr_rows_##IDX##_##NV(const struct csr_job* job, const float* xt,          \
                                          int64_t r0, int64_t r1, int64_t b0, int lanes) {    \
    /* xt: the tile of input rows b0 .. b0 + NV * VL, [in, NV * VL] */                       \
    const int64_t* row_offsets = job->row_offsets;                                           \
    const ITYPE* column_indices = (const ITYPE*)job->column_indices;                         \
    const float *values = job->values, *bias = job->bias;                                    \
    const int64_t ldt = NV * VL;                                                             \
    float tile[STORE_GROUP * NV * VL];                                                       \
    int64_t group_start = r0;                                                                \
    for (int64_t r = r0; r < r1; r++) {                                                      \
        vf acc[UK][NV];                                                                      \
        _Pragma("GCC unroll 8")                                                              \
        for (int u = 0; u < UK; u++)                                                         \
            _Pragma("GCC unroll 4")                                                          \
            for (int j = 0; j < NV; j++) acc[u][j] = vzero();                                \
        int64_t k = row_offsets[r], end = row_offsets[r + 1];                                \
        for (; k + UK <= end; k += UK) {                                                     \
            _Pragma("GCC unroll 8")                                                          \
            for (int u = 0; u < UK; u++) {                                                   \
                vf v = vset1(values[k + u]);                                                 \
                const float* column = xt + (int64_t)column_indices[k + u] * ldt;             \
                _Pragma("GCC unroll 4")                                                      \
                for (int j = 0; j < NV; j++)                                                 \
                    acc[u][j] = vfma(v, vload(column + j * VL), acc[u][j]);                  \
            }                                                                                \
        }                                                                                    \
        for (; k < end; k++) {                                                               \
            vf v = vset1(values[k]);                                                         \
            const float* column = xt + (int64_t)column_indices[k] * ldt;                     \
            _Pragma("GCC unroll 4")                                                          \
            for (int j = 0; j < NV; j++) acc[0][j] = vfma(v, vload(column + j * VL), acc[0][j]); \
        }                                                                                    \
        int64_t g = r - group_start;                                                         \
        vf b = vset1(bias ? bias[r] : 0.0f);                                                 \
        _Pragma("GCC unroll 4")                                                              \
        for (int j = 0; j < NV; j++) {                                                       \
            _Pragma("GCC unroll 8")                                                          \
            for (int u = 1; u < UK; u++) acc[0][j] = vadd(acc[0][j], acc[u][j]);             \
            vf result = vadd(acc[0][j], b);                                                  \
            if (job->gelu) result = vgelu(result);                                           \
            if (job->y_tiles) vstore(job->y + b0 * job->out + r * NV * VL + j * VL, result); \
            else vstore(tile + g * NV * VL + j * VL, result);                                \
        }                                                                                    \
        if (!job->y_tiles && ((r + 1) % STORE_GROUP == 0 || r == r1 - 1)) {                  \
            store_row_tile(tile, NV * VL, g + 1, lanes, job->y, job->out, group_start, b0);  \
            group_start = r + 1;                                                             \
        }                                                                                    \
    }                                                                                        \
}

#define DEFINE_CSR_GEMM(IDX, ITYPE)                                                          \
DEFINE_CSR_ROWS(IDX, ITYPE, 1, CSR_UK1) DEFINE_CSR_ROWS(IDX, ITYPE, 2, CSR_UK2)            \
DEFINE_CSR_ROWS(IDX, ITYPE, 3, CSR_UK3) DEFINE_CSR_ROWS(IDX, ITYPE, 4, CSR_UK4)            \
static inline void _csr_tile_##IDX(const struct csr_job* job, const float* xt, int64_t nv,   \
                                   int64_t r0, int64_t r1, int64_t b0, int lanes) {          \
    switch (nv) {                                                                            \
    case 1: _csr_rows_##IDX##_1(job, xt, r0, r1, b0, lanes); break;                          \
    case 2: _csr_rows_##IDX##_2(job, xt, r0, r1, b0, lanes); break;                          \
    case 3: _csr_rows_##IDX##_3(job, xt, r0, r1, b0, lanes); break;                          \
    default: _csr_rows_##IDX##_4(job, xt, r0, r1, b0, lanes); break;                         \
    }                                                                                        \
}                                                                                            \
static void _csr_gemm_task_##IDX(void* context, int64_t t, int worker) {                     \
    const struct csr_job* job = (const struct csr_job*)context;                              \
    int64_t r0 = job->task_rows[t], r1 = job->task_rows[t + 1], ldt = job->ldt;              \
    for (int64_t b0 = 0; b0 < ldt; b0 += job->batch_vectors * VL) {                          \
        int64_t nv = (ldt - b0) / VL < job->batch_vectors ? (ldt - b0) / VL : job->batch_vectors; \
        int lanes = (int)(job->rows - b0 < nv * VL ? job->rows - b0 : nv * VL);              \
        _csr_tile_##IDX(job, job->xt + b0 * job->in, nv, r0, r1, b0, lanes);                 \
    }                                                                                        \
}                                                                                            \
/* Task t of the input-row split: input rows b0 = t * width .. b0 + width (transposed into   \
   the worker's own tile of xt, unless x is already batch tiles: xt NULL) against every      \
   output row. */                                                                            \
static void _csr_gemm_block_task_##IDX(void* context, int64_t t, int worker) {               \
    const struct csr_job* job = (const struct csr_job*)context;                              \
    int64_t width = job->batch_vectors * VL, b0 = t * width;                                 \
    int64_t nv = (job->ldt - b0) / VL < job->batch_vectors ? (job->ldt - b0) / VL : job->batch_vectors; \
    int lanes = (int)(job->rows - b0 < nv * VL ? job->rows - b0 : nv * VL);                  \
    const float* tile = job->x + b0 * job->in;                                               \
    if (job->xt) {                                                                           \
        float* own = (float*)job->xt + worker * job->in * width;                             \
        struct transpose_job part = {lanes, nv * VL, job->in, job->in, nv * VL, tile, own};  \
        _transpose_columns(&part, 0, job->in);                                               \
        tile = own;                                                                          \
    }                                                                                        \
    _csr_tile_##IDX(job, tile, nv, 0, job->out, b0, lanes);                                  \
}                                                                                            \
void csr_gemm_##IDX(int num_threads, int64_t tasks, const int64_t* task_rows,                \
                    const int64_t* row_offsets, const ITYPE* column_indices,                 \
                    const float* values, const float* bias, int64_t rows, int64_t in,        \
                    int64_t out, const float* x, float* y, float* xt, int64_t batch_vectors,   \
                    int64_t gelu, int64_t x_tiles, int64_t y_tiles) {                        \
    int64_t ldt = (rows + VL - 1) / VL * VL;                                                 \
    /* xT tile by tile: tile b0 is a contiguous [in, width] block at xt + b0 * in, so the     \
       columns a row gathers sit width * 4 bytes apart, not a multiple of 4 KiB. x_tiles: x   \
       is already that (a producer's y_tiles output) */                                      \
    if (x_tiles) xt = (float*)x;                                                             \
    else transpose_tiles(num_threads, rows, in, batch_vectors * VL, x, xt);                  \
    struct csr_job job = {task_rows, row_offsets, column_indices, values, bias, x, xt, y,    \
                          rows, out, ldt, batch_vectors, in, gelu, y_tiles};                 \
    sr_parallel_for(num_threads, tasks, _csr_gemm_task_##IDX, &job);                         \
}                                                                                            \
/* The same product split by input rows: tasks of batch_vectors * VL rows of x [rows, in],    \
   each transposed by its task into the worker's tile of scratch [threads * in * width] (or,   \
   x_tiles, read where it stands in x's batch tiles; scratch unused). */                     \
void csr_gemm_blocks_##IDX(int num_threads, const int64_t* row_offsets, const ITYPE* column_indices, \
                           const float* values, const float* bias, int64_t rows, int64_t in, \
                           int64_t out, const float* x, float* y, float* scratch,            \
                           int64_t batch_vectors, int64_t gelu, int64_t x_tiles, int64_t y_tiles) { \
    int64_t ldt = (rows + VL - 1) / VL * VL, width = batch_vectors * VL;                     \
    struct csr_job job = {NULL, row_offsets, column_indices, values, bias, x,                \
                          x_tiles ? NULL : scratch, y, rows, out, ldt, batch_vectors, in, gelu, y_tiles}; \
    sr_parallel_for(num_threads, (ldt + width - 1) / width, _csr_gemm_block_task_##IDX, &job); \
}

/* vlookup_<index>(x, p): the VL floats x[p[0]], ..., x[p[VL - 1]] by scalar loads. The int8 /
   int16 indices (never negative: they index x) are read 64 bits at a time and split with shifts,
   one load per 8 or 4 indices instead of one per index. */
#if defined(__AVX2__)
#if VL == 16
static inline vf _vjoin(const __m128* q) {
    __m256 lo = _mm256_set_m128(q[1], q[0]), hi = _mm256_set_m128(q[3], q[2]);
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)),
                                               _mm256_castps_pd(hi), 1));
}
#else
static inline vf _vjoin(const __m128* q) { return _mm256_set_m128(q[1], q[0]); }
#endif
static inline vf vlookup_i8(const float* x, const int8_t* p) {
    __m128 q[VL / 4];
    _Pragma("GCC unroll 2")
    for (int h = 0; h < VL / 8; h++) {
        uint64_t w;
        memcpy(&w, p + 8 * h, 8);
        q[2 * h] = _mm_setr_ps(x[(uint8_t)w], x[(uint8_t)(w >> 8)], x[(uint8_t)(w >> 16)], x[(uint8_t)(w >> 24)]);
        q[2 * h + 1] = _mm_setr_ps(x[(uint8_t)(w >> 32)], x[(uint8_t)(w >> 40)], x[(uint8_t)(w >> 48)], x[w >> 56]);
    }
    return _vjoin(q);
}
static inline vf vlookup_i16(const float* x, const int16_t* p) {
    __m128 q[VL / 4];
    _Pragma("GCC unroll 4")
    for (int h = 0; h < VL / 4; h++) {
        uint64_t w;
        memcpy(&w, p + 4 * h, 8);
        q[h] = _mm_setr_ps(x[(uint16_t)w], x[(uint16_t)(w >> 16)], x[(uint16_t)(w >> 32)], x[w >> 48]);
    }
    return _vjoin(q);
}
static inline vf vlookup_i32(const float* x, const int32_t* p) {
    __m128 q[VL / 4];
    _Pragma("GCC unroll 4")
    for (int h = 0; h < VL / 4; h++) q[h] = _mm_setr_ps(x[p[4 * h]], x[p[4 * h + 1]], x[p[4 * h + 2]], x[p[4 * h + 3]]);
    return _vjoin(q);
}
#else
#define DEFINE_VLOOKUP(IDX, ITYPE)                                                           \
static inline vf vlookup_##IDX(const float* x, const ITYPE* p) {                             \
    vf v;                                                                                    \
    for (int l = 0; l < VL; l++) v[l] = x[p[l]];                                             \
    return v;                                                                                \
}
DEFINE_VLOOKUP(i8, int8_t) DEFINE_VLOOKUP(i16, int16_t) DEFINE_VLOOKUP(i32, int32_t)
#endif

struct csr_slices_job {
    const int64_t *task_slices, *slice_offsets;
    const int32_t* slice_rows;
    const void* column_indices;
    const float *values, *slice_bias, *x;
    float* y;
    int64_t gelu;
};

/* Slice s: entries slice_offsets[s]:slice_offsets[s + 1] (whole steps of VL), lane l for row
   slice_rows[s * VL + l] (-1: no row), slice_bias [slices * VL] in the same order. Two
   accumulators, even and odd steps. */
#define DEFINE_CSR_SLICES(IDX, ITYPE, LOADS, LOAD_X)                                          \
static void _csr_slices_task_##IDX##_##LOADS(void* context, int64_t t, int worker) {         \
    const struct csr_slices_job* job = (const struct csr_slices_job*)context;                \
    const ITYPE* column_indices = (const ITYPE*)job->column_indices;                         \
    const float *values = job->values, *x = job->x;                                          \
    for (int64_t s = job->task_slices[t]; s < job->task_slices[t + 1]; s++) {                \
        int64_t k = job->slice_offsets[s], end = job->slice_offsets[s + 1];                  \
        vf acc0 = vload(job->slice_bias + s * VL), acc1 = vzero();                           \
        for (; k + 2 * VL <= end; k += 2 * VL) {                                             \
            acc0 = vfma(vload(values + k), LOAD_X(x, column_indices + k), acc0);             \
            acc1 = vfma(vload(values + k + VL), LOAD_X(x, column_indices + k + VL), acc1);   \
        }                                                                                    \
        if (k < end) acc0 = vfma(vload(values + k), LOAD_X(x, column_indices + k), acc0);    \
        vf result = vadd(acc0, acc1);                                                        \
        if (job->gelu) result = vgelu(result);                                               \
        float lanes[VL];                                                                     \
        vstore(lanes, result);                                                               \
        const int32_t* rows = job->slice_rows + s * VL;                                      \
        for (int l = 0; l < VL; l++)                                                         \
            if (rows[l] >= 0) job->y[rows[l]] = lanes[l];                                    \
    }                                                                                        \
}                                                                                            \
void csr_slices_gemv_##IDX##_##LOADS(int num_threads, int64_t tasks, const int64_t* task_slices, \
                                     const int64_t* slice_offsets, const int32_t* slice_rows, \
                                     const ITYPE* column_indices, const float* values,       \
                                     const float* slice_bias, const float* x, float* y,      \
                                     int64_t gelu) {                                         \
    struct csr_slices_job job = {task_slices, slice_offsets, slice_rows, column_indices, values, \
                                 slice_bias, x, y, gelu};                                     \
    sr_parallel_for(num_threads, tasks, _csr_slices_task_##IDX##_##LOADS, &job);             \
}

#define _LOAD_GATHER_i8(x, p) vgather(x, vi_load_i8(p))
#define _LOAD_GATHER_i16(x, p) vgather(x, vi_load_i16(p))
#define _LOAD_GATHER_i32(x, p) vgather(x, vi_load_i32(p))

#define DEFINE_CSR(IDX, ITYPE)                                                               \
DEFINE_CSR_GEMV(IDX, ITYPE, 1) DEFINE_CSR_GEMV(IDX, ITYPE, 2) DEFINE_CSR_GEMV(IDX, ITYPE, 4) \
DEFINE_CSR_SLICES(IDX, ITYPE, gather, _LOAD_GATHER_##IDX)                                    \
DEFINE_CSR_SLICES(IDX, ITYPE, scalar, vlookup_##IDX)                                         \
DEFINE_CSR_GEMM(IDX, ITYPE)

DEFINE_CSR(i8, int8_t)
DEFINE_CSR(i16, int16_t)
DEFINE_CSR(i32, int32_t)

/* Batch-1 layers of the slices layout run back to back, each reading the previous one's
   output: x [in_0] -> y [out_last], no Python between. layers: int64 [count, CSR_CHAIN_FIELDS]
   rows of (variant = 2 * index (0 i8, 1 i16, 2 i32) + loads (0 gather, 1 scalar), threads,
   tasks, task_slices, slice_offsets, slice_rows, column_indices, values, slice_bias, gelu),
   pointers as integers. The outputs between layers alternate between work and work + max_out. */
#define CSR_CHAIN_FIELDS 10
void csr_slices_chain(int64_t count, const int64_t* layers, const float* x, float* work, int64_t max_out,
                      float* y) {
    const float* input = x;
    for (int64_t i = 0; i < count; i++) {
        const int64_t* l = layers + CSR_CHAIN_FIELDS * i;
        float* output = i == count - 1 ? y : work + (i % 2) * max_out;
        const int64_t *task_slices = (const int64_t*)(intptr_t)l[3], *slice_offsets = (const int64_t*)(intptr_t)l[4];
        const int32_t* slice_rows = (const int32_t*)(intptr_t)l[5];
        const void* column_indices = (const void*)(intptr_t)l[6];
        const float *values = (const float*)(intptr_t)l[7], *slice_bias = (const float*)(intptr_t)l[8];
        switch (l[0]) {
#define CSR_CHAIN_CASE(VARIANT, IDX, ITYPE, LOADS)                                                   \
        case VARIANT:                                                                            \
            csr_slices_gemv_##IDX##_##LOADS((int)l[1], l[2], task_slices, slice_offsets, slice_rows, \
                                            (const ITYPE*)column_indices, values, slice_bias, input, \
                                            output, l[9]);                                      \
            break;
        CSR_CHAIN_CASE(0, i8, int8_t, gather) CSR_CHAIN_CASE(1, i8, int8_t, scalar)
        CSR_CHAIN_CASE(2, i16, int16_t, gather) CSR_CHAIN_CASE(3, i16, int16_t, scalar)
        CSR_CHAIN_CASE(4, i32, int32_t, gather) CSR_CHAIN_CASE(5, i32, int32_t, scalar)
        }
        input = output;
    }
}
"""

CHAIN_INDEX_CODES = {"i8": 0, "i16": 1, "i32": 2}
CHAIN_LOADS_CODES = {"gather": 0, "scalar": 1}

_P = ctypes.c_void_p
_I = ctypes.c_int64


@functools.cache
def csr_gemv(index: str, unroll: int):
    """`csr_gemv_<index>_u<unroll>`: (threads, tasks, task_rows, row_offsets, column_indices,
    values, bias or None, x, y)."""
    library = load_library("csr", SOURCE)
    return declare(library, f"csr_gemv_{index}_u{unroll}", [ctypes.c_int, _I, _P, _P, _P, _P, _P, _P, _P])


@functools.cache
def csr_slices_gemv(index: str, loads: str):
    """`csr_slices_gemv_<index>_<loads>` (loads "gather" or "scalar"): (threads, tasks,
    task_slices [tasks + 1], slice_offsets [slices + 1], slice_rows int32 [slices * VL],
    column_indices, values, slice_bias float32 [slices * VL], x [in], y [out], gelu)."""
    library = load_library("csr", SOURCE)
    return declare(library, f"csr_slices_gemv_{index}_{loads}", [ctypes.c_int, _I, _P, _P, _P, _P, _P, _P, _P, _P, _I])


@functools.cache
def csr_slices_chain():
    """`csr_slices_chain`: (count, layers int64 [count, 10], x [in_0], work float32
    [2 * max_out], max_out, y [out_last]); a layers row is (2 * CHAIN_INDEX_CODES[index] +
    CHAIN_LOADS_CODES[loads], threads, tasks, task_slices, slice_offsets, slice_rows,
    column_indices, values, slice_bias, gelu)."""
    library = load_library("csr", SOURCE)
    return declare(library, "csr_slices_chain", [_I, _P, _P, _P, _I, _P])


@functools.cache
def csr_gemm_blocks(index: str):
    """`csr_gemm_blocks_<index>`: (threads, row_offsets, column_indices, values, bias or None,
    rows, in, out, x, y, scratch [threads * in * width] or None, batch_vectors, gelu, x_tiles,
    y_tiles): `csr_gemm`'s product, x and y as there, in tasks of width = batch_vectors * VL
    input rows."""
    library = load_library("csr", SOURCE)
    return declare(library, f"csr_gemm_blocks_{index}",
                   [ctypes.c_int, _P, _P, _P, _P, _I, _I, _I, _P, _P, _P, _I, _I, _I, _I])


@functools.cache
def csr_gemm(index: str):
    """`csr_gemm_<index>`: (threads, tasks, task_rows, row_offsets, column_indices, values,
    bias or None, rows, in, out, x, y, xt scratch [in * ceil(rows / VL) * VL], batch_vectors,
    gelu: y = GELU(x @ W.T + b), x_tiles: x is already the batch tiles (xt unused), y_tiles: y
    [out * ceil(rows / VL) * VL] is written as the next layer's batch tiles (same batch_vectors)).

    Tile layout: for b0 = 0, width, 2 width... (width = batch_vectors * VL, the last tile up to
    the padded row count) a block [features, tile width] at b0 * features; rows past `rows`
    hold zeros (transposed input) or don't-care values (y_tiles output)."""
    library = load_library("csr", SOURCE)
    return declare(
        library, f"csr_gemm_{index}", [ctypes.c_int, _I, _P, _P, _P, _P, _P, _I, _I, _I, _P, _P, _P, _I, _I, _I, _I]
    )
