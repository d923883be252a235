"""C kernels for bitmask linear layers (BitmaskFormat), batch 1 and batched.

Both walk a weight row VL columns (one mask chunk: a byte with AVX2 and the portable
code, 16 bits with AVX-512) at a time: `bm_expand(v, m)` puts the next popcount(m) packed
values of the row into the lanes whose bits m sets (zeros elsewhere), the chunk of x is
one contiguous load, one FMA, and the value pointer moves on by popcount(m). AVX-512
expands with vexpandps (maskz_expandloadu), or at batch 1 where the config says so with vpermps
on indices from the table below, one lookup a mask byte (`bm_expand_permute`: on an AMD Zen 4
core 14-18% faster than vexpandps on a weight in cache, the same on one streamed from memory);
AVX2 loads 8 values and moves them into place
with vpermps, its indices from a 256-entry table of 8 bytes a mask (`bm_expand_table`,
widened with vpmovsxbd) whose unused lanes are -1, so that one vblendvps on their sign bit
zeroes them; the portable code places them one by one. The loads of 8 values past a row's
last value are covered by the format's VALUE_PADDING.

On one AMD EPYC (Zen 3) core the AVX2 loop runs about one chunk of a row per ns, whatever
the density (7 instructions a chunk: mask byte, table, popcount, vpermps, pointer, blend,
FMA): it is bound by the expansion, not by the bytes. Tried and slower there: a table of
32-byte indices (no vpmovsxbd), mask words split by shifts, 2 to 8 rows in flight (2 and 4
equal), and a per-call table of x compressed for every mask.

- `bitmask_gemv`: x [in] -> y [out]; BM_ROWS output rows in flight per step (their x chunk
  shared), tasks of consecutive rows.
- `bitmask_gemm_panels`: x [rows, in] -> y [rows, out] through the dense kernel's register
  tiles, over blocks of the weight expanded in cache (below).
- `bitmask_gemm`: x [rows, in] -> y [rows, out]; each expanded weight chunk is multiplied
  into `batch_rows` (4 or 8) input rows' accumulators. A task's output rows go
  `row_block` at a time (a block of the weight small enough to stay in L2), and the block
  meets every group of input rows one column block at a time (a group's columns of x
  small enough to stay in L1), adding its partial sums into y.

The columns past the last whole chunk (in % VL of them) are read with masked loads of x;
their mask bits past in_features are zero.
"""

from __future__ import annotations

import ctypes
import functools

from sparse_rt.kernels.cpu._dense_native import TILE_SOURCE
from sparse_rt.kernels.cpu._native import declare, load_library


def _expand_table() -> str:
    """C initializer of the AVX2 table: entry m holds 8 bytes, byte l the packed position of lane l
    (popcount of m's bits below l) if bit l of m is set, else 0xFF (-1: sign bit set)."""
    entries = []
    for m in range(256):
        lanes, k = [], 0
        for lane in range(8):
            if m >> lane & 1:
                lanes.append(k)
                k += 1
            else:
                lanes.append(0xFF)
        entries.append(hex(int.from_bytes(bytes(lanes), "little")) + "ull")
    return ",\n".join(", ".join(entries[i : i + 8]) for i in range(0, 256, 8))


SOURCE = TILE_SOURCE + r"""
#define BM_ROWS 4
#if VL == 16 || (defined(__AVX2__) && defined(__FMA__))
static const uint64_t bm_expand_table[256] = {
""" + _expand_table() + r"""
};
#endif
#if VL == 16
typedef uint16_t bm_chunk;
static inline vf bm_expand(const float* v, unsigned m) { return _mm512_maskz_expandloadu_ps((__mmask16)m, v); }
/* The same by vpermps: lane indices from the table for each mask byte, the high byte's moved on
   by the popcount of the low one (bm_high_offset), lanes of clear bits zeroed by the mask. On
   an AMD EPYC (Zen 4) 1.3 against 1.7 ns a chunk from L2, where vexpandps is slow. */
static const uint8_t bm_high_offset[9][16] __attribute__((aligned(16))) = {
    {0}, {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1}, {0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2},
    {0, 0, 0, 0, 0, 0, 0, 0, 3, 3, 3, 3, 3, 3, 3, 3}, {0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4},
    {0, 0, 0, 0, 0, 0, 0, 0, 5, 5, 5, 5, 5, 5, 5, 5}, {0, 0, 0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 6, 6, 6},
    {0, 0, 0, 0, 0, 0, 0, 0, 7, 7, 7, 7, 7, 7, 7, 7}, {0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8}};
static inline vf bm_expand_permute(const float* v, unsigned m) {
    unsigned low = m & 255;
    __m128i lanes = _mm_insert_epi64(_mm_cvtsi64_si128((long long)bm_expand_table[low]),
                                     (long long)bm_expand_table[m >> 8], 1);
    lanes = _mm_add_epi8(lanes, _mm_load_si128((const __m128i*)bm_high_offset[__builtin_popcount(low)]));
    return _mm512_maskz_permutexvar_ps((__mmask16)m, _mm512_cvtepu8_epi32(lanes), _mm512_loadu_ps(v));
}
#elif defined(__AVX2__) && defined(__FMA__)
typedef uint8_t bm_chunk;
static inline vf bm_expand(const float* v, unsigned m) {
    /* lanes: the table row's 8 bytes sign-extended (-1 for unused lanes: sign bit set) */
    __m256i lanes = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)&bm_expand_table[m]));
    __m256 moved = _mm256_permutevar8x32_ps(_mm256_loadu_ps(v), lanes), w;
    /* one vblendvps (the compiler would otherwise compare and mask: two instructions) */
    __asm__("vblendvps %3, %2, %1, %0" : "=x"(w) : "x"(moved), "x"(_mm256_setzero_ps()), "x"(lanes));
    return w;
}
#else
typedef uint8_t bm_chunk;
static inline vf bm_expand(const float* v, unsigned m) {
    vf w = vzero();
    for (int l = 0, k = 0; l < VL; l++)
        if (m >> l & 1) w[l] = v[k++];
    return w;
}
#endif
#if VL != 16
static inline vf bm_expand_permute(const float* v, unsigned m) { return bm_expand(v, m); }
#endif

static inline unsigned bm_mask(const uint8_t* row, int64_t chunk) {
    bm_chunk m;
    memcpy(&m, row + chunk * sizeof(bm_chunk), sizeof m);
    return m;
}

struct bitmask_job {
    const int64_t* task_rows;
    const uint8_t* mask;
    const int64_t* row_offsets;
    const float *values, *bias, *x;
    float* y;
    int64_t rows, in, out, row_bytes, batch_rows, row_block, column_chunks, permute;
};

/* y[r .. r + R) for one input row: R rows share each x chunk. */
static inline __attribute__((always_inline)) void _bm_gemv_rows(const struct bitmask_job* job, int64_t r, int R,
                                                                int permute) {
    const float* x = job->x;
    const uint8_t* mask[BM_ROWS];
    const float* v[BM_ROWS];
    vf acc[BM_ROWS];
    for (int i = 0; i < R; i++) {
        mask[i] = job->mask + (r + i) * job->row_bytes;
        v[i] = job->values + job->row_offsets[r + i];
        acc[i] = vzero();
    }
    /* Prefetch the next R rows while these compute: each row's values as far on as these R rows'
       together (about where its counterpart in the next group is), and the next group's mask.
       With the weight streamed from memory (2 threads, Zen 4, 1536x1024 to 1024x2816 at 50-70%)
       12-27% faster than 256 bytes ahead in each row; twice as far gained nothing more. */
    int64_t span = job->row_offsets[r + R] - job->row_offsets[r], full = job->in / VL, c = 0;
    for (; c < full; c++) {
        vf xc = vload(x + c * VL);
        for (int i = 0; i < R; i++) {
            unsigned m = bm_mask(mask[i], c);
            acc[i] = vfma(permute ? bm_expand_permute(v[i], m) : bm_expand(v[i], m), xc, acc[i]);
            v[i] += __builtin_popcount(m);
            __builtin_prefetch(v[i] + span);
            __builtin_prefetch(mask[i] + R * job->row_bytes + c * sizeof(bm_chunk));
        }
    }
    int tail = (int)(job->in - full * VL);
    if (tail) {
        vf xc = vload_n(x + c * VL, tail);
        for (int i = 0; i < R; i++) acc[i] = vfma(bm_expand(v[i], bm_mask(mask[i], c)), xc, acc[i]);
    }
    for (int i = 0; i < R; i++) job->y[r + i] = vsum(acc[i]) + (job->bias ? job->bias[r + i] : 0.0f);
}

static void _bitmask_gemv_task(void* context, int64_t t, int worker) {
    const struct bitmask_job* job = (const struct bitmask_job*)context;
    int64_t r = job->task_rows[t], end = job->task_rows[t + 1];
    if (job->permute) {
        for (; r + BM_ROWS <= end; r += BM_ROWS) _bm_gemv_rows(job, r, BM_ROWS, 1);
        for (; r < end; r++) _bm_gemv_rows(job, r, 1, 1);
    } else {
        for (; r + BM_ROWS <= end; r += BM_ROWS) _bm_gemv_rows(job, r, BM_ROWS, 0);
        for (; r < end; r++) _bm_gemv_rows(job, r, 1, 0);
    }
}

/* y = x @ W.T + bias for one input row x [in], y [out]; rows split at task_rows [tasks + 1];
   permute: expand with vpermps instead of vexpandps (AVX-512; the same code elsewhere). */
void bitmask_gemv(int num_threads, int64_t tasks, const int64_t* task_rows, const uint8_t* mask, int64_t row_bytes,
                  const int64_t* row_offsets, const float* values, const float* bias, int64_t in, const float* x,
                  float* y, int64_t permute) {
    struct bitmask_job job = {task_rows, mask, row_offsets, values, bias, x, y, 1, in, 0, row_bytes, 0, 0, 0,
                              permute};
    sr_parallel_for(num_threads, tasks, _bitmask_gemv_task, &job);
}

/* dense rows task_rows[t] .. task_rows[t + 1] of [out, in]: the weight's rows, zeros where bits are clear. */
static void _bitmask_expand_task(void* context, int64_t t, int worker) {
    const struct bitmask_job* job = (const struct bitmask_job*)context;
    int64_t in = job->in, full = in / VL;
    int tail = (int)(in - full * VL);
    for (int64_t r = job->task_rows[t]; r < job->task_rows[t + 1]; r++) {
        const uint8_t* mask = job->mask + r * job->row_bytes;
        const float* v = job->values + job->row_offsets[r];
        float* row = job->y + r * in;
        int64_t c = 0;
        for (; c < full; c++) {
            unsigned m = bm_mask(mask, c);
            vstore(row + c * VL, bm_expand(v, m));
            v += __builtin_popcount(m);
        }
        if (tail) vstore_n(row + c * VL, bm_expand(v, bm_mask(mask, c)), tail);
    }
}

/* dense [out, in] = the weight expanded; rows split at task_rows [tasks + 1]. */
void bitmask_expand(int num_threads, int64_t tasks, const int64_t* task_rows, const uint8_t* mask, int64_t row_bytes,
                    const int64_t* row_offsets, const float* values, int64_t in, float* dense) {
    struct bitmask_job job = {task_rows, mask, row_offsets, values, NULL, NULL, dense, 0, in, 0, row_bytes, 0, 0, 0};
    sr_parallel_for(num_threads, tasks, _bitmask_expand_task, &job);
}

/* Columns [c0 * VL, c1 * VL) (to in_features if c1 is the last chunk) of output row o, its values
   from v on, against input rows b0 .. b0 + B: y[b, o] = sum (first: + bias) or += sum. Returns the
   value pointer after the columns. */
static inline __attribute__((always_inline)) const float* _bm_gemm_part(const struct bitmask_job* job, int64_t o,
                                                                        const float* v, int64_t c0, int64_t c1,
                                                                        int64_t b0, int B, int first) {
    const uint8_t* mask = job->mask + o * job->row_bytes;
    int64_t in = job->in, full = in / VL;
    const float* x = job->x + b0 * in;
    vf acc[8];
    for (int i = 0; i < B; i++) acc[i] = vzero();
    int64_t c = c0, end = c1 < full ? c1 : full;
    for (; c < end; c++) {
        unsigned m = bm_mask(mask, c);
        vf w = bm_expand(v, m);
        v += __builtin_popcount(m);
        for (int i = 0; i < B; i++) acc[i] = vfma(w, vload(x + i * in + c * VL), acc[i]);
    }
    int tail = (int)(in - full * VL);
    if (c1 > full && tail) {
        unsigned m = bm_mask(mask, c);
        vf w = bm_expand(v, m);
        v += __builtin_popcount(m);
        for (int i = 0; i < B; i++) acc[i] = vfma(w, vload_n(x + i * in + c * VL, tail), acc[i]);
    }
    float* y = job->y + b0 * job->out + o;
    if (first) {
        float b = job->bias ? job->bias[o] : 0.0f;
        for (int i = 0; i < B; i++) y[i * job->out] = vsum(acc[i]) + b;
    } else {
        for (int i = 0; i < B; i++) y[i * job->out] += vsum(acc[i]);
    }
    return v;
}

/* Output rows o0 .. o1 (at most BM_GEMM_BLOCK) against every input row, columns a block of
   `column_chunks` chunks at a time, so that the input rows' block of x stays in L1 while the
   rows of W pass it; position[o - o0]: where row o's values of the current column block begin. */
#define BM_GEMM_BLOCK 256
static void _bm_gemm_block(const struct bitmask_job* job, int64_t o0, int64_t o1) {
    const float* position[BM_GEMM_BLOCK];
    const float* next[BM_GEMM_BLOCK];
    int64_t chunks = (job->in + VL - 1) / VL, rows = job->rows, wide = job->batch_rows;
    for (int64_t o = o0; o < o1; o++) position[o - o0] = job->values + job->row_offsets[o];
    for (int64_t c0 = 0; c0 < chunks; c0 += job->column_chunks) {
        int64_t c1 = c0 + job->column_chunks < chunks ? c0 + job->column_chunks : chunks;
        int first = c0 == 0;
        for (int64_t b0 = 0; b0 < rows; ) {
            int64_t left = rows - b0;
            int B = left >= wide ? (int)wide : left >= 4 ? 4 : left >= 2 ? 2 : 1;
            for (int64_t o = o0; o < o1; o++) {
                const float* v = position[o - o0];
                switch (B) {
                case 8: v = _bm_gemm_part(job, o, v, c0, c1, b0, 8, first); break;
                case 4: v = _bm_gemm_part(job, o, v, c0, c1, b0, 4, first); break;
                case 2: v = _bm_gemm_part(job, o, v, c0, c1, b0, 2, first); break;
                default: v = _bm_gemm_part(job, o, v, c0, c1, b0, 1, first); break;
                }
                next[o - o0] = v;
            }
            b0 += B;
        }
        for (int64_t o = o0; o < o1; o++) position[o - o0] = next[o - o0];
    }
}

static void _bitmask_gemm_task(void* context, int64_t t, int worker) {
    const struct bitmask_job* job = (const struct bitmask_job*)context;
    int64_t end = job->task_rows[t + 1];
    for (int64_t o0 = job->task_rows[t]; o0 < end; o0 += job->row_block)
        _bm_gemm_block(job, o0, o0 + job->row_block < end ? o0 + job->row_block : end);
}

/* y [rows, out] = x [rows, in] @ W.T + bias; output rows split at task_rows [tasks + 1], each
   task's rows taken row_block (<= BM_GEMM_BLOCK) at a time; batch_rows (4 or 8) input rows per
   pass, column_chunks chunks of VL columns per column block. */
void bitmask_gemm(int num_threads, int64_t tasks, const int64_t* task_rows, const uint8_t* mask, int64_t row_bytes,
                  const int64_t* row_offsets, const float* values, const float* bias, int64_t rows, int64_t in,
                  int64_t out, const float* x, float* y, int64_t batch_rows, int64_t row_block,
                  int64_t column_chunks) {
    struct bitmask_job job = {task_rows, mask, row_offsets, values, bias, x, y, rows, in, out, row_bytes,
                              batch_rows, row_block, column_chunks};
    sr_parallel_for(num_threads, tasks, _bitmask_gemm_task, &job);
}

/* Batched, by panels: NR (2 VL) output rows at a time, BM_PANEL_K columns at a time. The
   panel's rows are expanded once per column block into the worker's block [kc, NR] (the dense
   kernel's panel layout: each VL-column chunk of VL rows is expanded and stored transposed),
   then the dense kernel's register tiles multiply the block into
   every input row, mr rows a tile, adding to the partial sums of the blocks before. */
#define BM_PANEL_K 256
#define BM_PANEL_SCRATCH (BM_PANEL_K * NR)

struct bitmask_panel_job {
    const struct bitmask_job* base;
    const float* panel_bias;
    float* scratch;
    int64_t mr;
};

/* block[k * NR + j] = rows[j][k] for j, k < VL: one VL x VL square of expanded rows transposed
   into the panel layout (AVX-512: four rounds of 16 shuffles in registers). */
static inline void _bm_store_transposed(vf* rows, float* restrict block) {
#if VL == 16
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {  /* lane L: columns 4L, 4L + 1 (lo) or 4L + 2, 4L + 3 (hi) of two rows */
        t[i] = _mm512_unpacklo_ps(rows[i], rows[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(rows[i], rows[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  /* rows[4b + c], lane L: column 4L + c of rows 4b .. 4b + 3 */
        rows[i] = (__m512)_mm512_unpacklo_pd((__m512d)t[i], (__m512d)t[i + 2]);
        rows[i + 1] = (__m512)_mm512_unpackhi_pd((__m512d)t[i], (__m512d)t[i + 2]);
        rows[i + 2] = (__m512)_mm512_unpacklo_pd((__m512d)t[i + 1], (__m512d)t[i + 3]);
        rows[i + 3] = (__m512)_mm512_unpackhi_pd((__m512d)t[i + 1], (__m512d)t[i + 3]);
    }
    for (int c = 0; c < 4; c++) {  /* lanes 0, 2 (0x88) or 1, 3 (0xdd) of two registers */
        t[c] = _mm512_shuffle_f32x4(rows[c], rows[c + 4], 0x88);
        t[c + 4] = _mm512_shuffle_f32x4(rows[c], rows[c + 4], 0xdd);
        t[c + 8] = _mm512_shuffle_f32x4(rows[c + 8], rows[c + 12], 0x88);
        t[c + 12] = _mm512_shuffle_f32x4(rows[c + 8], rows[c + 12], 0xdd);
    }
    for (int c = 0; c < 4; c++) {  /* whole columns c, 8 + c, 4 + c, 12 + c */
        _mm512_storeu_ps(block + c * NR, _mm512_shuffle_f32x4(t[c], t[c + 8], 0x88));
        _mm512_storeu_ps(block + (8 + c) * NR, _mm512_shuffle_f32x4(t[c], t[c + 8], 0xdd));
        _mm512_storeu_ps(block + (4 + c) * NR, _mm512_shuffle_f32x4(t[c + 4], t[c + 12], 0x88));
        _mm512_storeu_ps(block + (12 + c) * NR, _mm512_shuffle_f32x4(t[c + 4], t[c + 12], 0xdd));
    }
#else
    float square[VL * VL];
    for (int j = 0; j < VL; j++) vstore(square + j * VL, rows[j]);
    for (int k = 0; k < VL; k++)
        for (int j = 0; j < VL; j++) block[k * NR + j] = square[j * VL + k];
#endif
}

static void _bitmask_panel_task(void* context, int64_t p, int worker) {
    const struct bitmask_panel_job* panel = (const struct bitmask_panel_job*)context;
    const struct bitmask_job* job = panel->base;
    float* block = panel->scratch + worker * BM_PANEL_SCRATCH;
    int64_t in = job->in, out = job->out, o0 = p * NR, chunks = (in + VL - 1) / VL;
    int width = out - o0 < NR ? (int)(out - o0) : NR;
    const uint8_t* mask[NR];
    const float* v[NR];
    for (int j = 0; j < width; j++) {
        mask[j] = job->mask + (o0 + j) * job->row_bytes;
        v[j] = job->values + job->row_offsets[o0 + j];
    }
    for (int64_t c0 = 0; c0 < chunks; c0 += BM_PANEL_K / VL) {
        int64_t c1 = c0 + BM_PANEL_K / VL < chunks ? c0 + BM_PANEL_K / VL : chunks;
        int64_t k0 = c0 * VL, kc = (c1 * VL < in ? c1 * VL : in) - k0;
        for (int64_t c = c0; c < c1; c++) {
            for (int g = 0; g < NR; g += VL) {
                vf rows[VL];
                for (int j = 0; j < VL; j++) {
                    rows[j] = vzero();
                    if (g + j < width) {
                        unsigned m = bm_mask(mask[g + j], c);
                        rows[j] = bm_expand(v[g + j], m);
                        v[g + j] += __builtin_popcount(m);
                    }
                }
                _bm_store_transposed(rows, block + (c - c0) * VL * NR + g);
            }
        }
        for (int64_t r = 0; r < job->rows; r += panel->mr) {
            int m = job->rows - r < panel->mr ? (int)(job->rows - r) : (int)panel->mr;
            _dense_tile(m, kc, block, job->x + r * in + k0, in, job->y + r * out + o0, out, width,
                        k0 == 0 ? panel->panel_bias + o0 : NULL, NULL);
        }
    }
}

/* y [rows, out] = x [rows, in] @ W.T + bias by panels (above): panel_bias [ceil(out / NR) * NR]
   (zeros past out, and where the layer has none); scratch [threads * BM_PANEL_SCRATCH], 64-byte
   aligned; mr input rows per register tile (1..8). */
void bitmask_gemm_panels(int num_threads, const uint8_t* mask, int64_t row_bytes, const int64_t* row_offsets,
                         const float* values, const float* panel_bias, int64_t rows, int64_t in, int64_t out,
                         const float* x, float* y, float* scratch, int64_t mr) {
    struct bitmask_job job = {NULL, mask, row_offsets, values, NULL, x, y, rows, in, out, row_bytes, 0, 0, 0};
    struct bitmask_panel_job panel = {&job, panel_bias, scratch, mr};
    sr_parallel_for(num_threads, (out + NR - 1) / NR, _bitmask_panel_task, &panel);
}

/* Floats of scratch one worker of bitmask_gemm_panels takes. */
int64_t bitmask_panel_scratch(void) { return BM_PANEL_SCRATCH; }
"""

_P = ctypes.c_void_p
_I = ctypes.c_int64


@functools.cache
def bitmask_gemv():
    """`bitmask_gemv`: (threads, tasks, task_rows int64 [tasks + 1], mask uint8 [out, row_bytes], row_bytes,
    row_offsets int64 [out + 1], values (padded), bias or None, in, x [in], y [out], permute 0 or 1)."""
    library = load_library("bitmask", SOURCE)
    return declare(library, "bitmask_gemv", [ctypes.c_int, _I, _P, _P, _I, _P, _P, _P, _I, _P, _P, _I])


@functools.cache
def bitmask_expand():
    """`bitmask_expand`: (threads, tasks, task_rows, mask, row_bytes, row_offsets, values, in, dense [out, in])."""
    library = load_library("bitmask", SOURCE)
    return declare(library, "bitmask_expand", [ctypes.c_int, _I, _P, _P, _I, _P, _P, _I, _P])


@functools.cache
def bitmask_gemm():
    """`bitmask_gemm`: (threads, tasks, task_rows, mask, row_bytes, row_offsets, values, bias or None,
    rows, in, out, x [rows, in], y [rows, out], batch_rows 4 or 8, row_block in [1, 256], column_chunks >= 1:
    columns per block / vector_width())."""
    library = load_library("bitmask", SOURCE)
    return declare(library, "bitmask_gemm", [ctypes.c_int, _I, _P, _P, _I, _P, _P, _P, _I, _I, _I, _P, _P, _I, _I, _I])


@functools.cache
def bitmask_gemm_panels():
    """`bitmask_gemm_panels`: (threads, mask, row_bytes, row_offsets, values, panel_bias [panels * NR], rows, in,
    out, x [rows, in], y [rows, out], scratch [threads * bitmask_panel_scratch()] 64-byte aligned, mr 1..8)."""
    library = load_library("bitmask", SOURCE)
    return declare(library, "bitmask_gemm_panels", [ctypes.c_int, _P, _I, _P, _P, _P, _I, _I, _I, _P, _P, _P, _I])


@functools.cache
def bitmask_panel_scratch() -> int:
    """Floats of scratch per worker of `bitmask_gemm_panels`."""
    function = load_library("bitmask", SOURCE).bitmask_panel_scratch
    function.argtypes, function.restype = [], ctypes.c_int64
    return int(function())
