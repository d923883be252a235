"""C kernels for int8 linear layers (int8 CSR, int8 BSR with 1x4 blocks and int8 dense weights).

Arithmetic (the same on every instruction set, so results do not depend on the host; see
`sparse_rt.kernels.int8`): activations are quantized per token (row of x), asymmetric, to
u8 q with a zero point z per token; weights are int8 with a float32 scale per output
channel. Accumulation of q * w is exact in int32 and the epilogue computes
y = (acc - z[b] * row_sum[r]) * (x_scale[b] * w_scale[r]) + bias[r], GELU'd where fused. A
row of x holding NaN or Inf gets a NaN scale: that token's outputs are all NaN (documented
result). An all-zero row gets scale 0 and outputs equal to the bias.

Hosts without a VNNI dot product use AVX2's u8 x s8 `vpmaddubsw`, whose pairwise int16 sums
saturate for u8 above 128: each byte q is split into q >> 1 and q - (q >> 1) (both <= 128,
so 2 * 128 * 128 fits), two `vpmaddubsw` whose sums are added in int32.

Layouts (batched kernels, rows cut into tiles of I8_LANES rows: 64 where the host has
AVX-512, one 512-bit register of bytes, else 32; `lanes()` tells which):
  column tiles (CSR):  u8 [tiles, in, lanes]; tile t, column c holds its rows' bytes.
  quad tiles (dense, BSR): u8 [tiles, in4 / 4, 4 * lanes]; four consecutive columns of the
                       tile's rows, each row's 4 bytes together, in `_i8_quads`' order.
A group of 4 nonzeros of a CSR row gathers its 4 columns from the column tile and
interleaves them into quads in registers; dense weights and 1x4 blocks (BSR) find them
ready made in the quad tiles. A quad of activations times 4 weight bytes is one `vpdpbusd`
with AVX-512 VNNI or AVX-VNNI, else two `vpmaddubsw` + `vpmaddwd` (by ones) + add (the split
above); without AVX2 the same sums are plain C.
With AVX-512 the registers are 512 bits wide: every shuffle that builds quads serves 64
rows, not 32.

Batch 1 runs gather/dot-product kernels over the token's q (q - zero as int32 for CSR, u8 q
padded to 32 columns for dense and BSR, whose blocks gather their quads as int32).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from sparse_rt.kernels.cpu._launch import pointer
from sparse_rt.kernels.cpu._native import declare, load_library
from sparse_rt.kernels.cpu.gelu import GELU_SOURCE

SOURCE = GELU_SOURCE + r"""
#include <math.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define I8_WIDE 1
#define I8_LANES 64
#else
#define I8_LANES 32
#endif
int i8_lanes(void) { return I8_LANES; }
#define I8_LEVELS 255

/* ---------------------------------------------------------------- quantizing activations */

struct i8_scale_job { const float* x; int64_t in; float *scales, *inverses; int32_t* zeros; };

/* Row r, with lo = min(0, min x) and hi = max(0, max x): scale (hi - lo) / 255, its inverse
   255 / (hi - lo) and zero point rint(-lo * inverse) (0, 0 and 0 for an all-zero row; NaN,
   0 and 0 for a row with NaN or Inf). */
static void _i8_scale_task(void* context, int64_t r, int worker) {
    const struct i8_scale_job* job = (const struct i8_scale_job*)context;
    const float* x = job->x + r * job->in;
    float lo = 0.0f, hi = 0.0f;
    int finite = 1;
    int64_t k = 0;
#if defined(__AVX2__)
    __m256 low = _mm256_setzero_ps(), high = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f), inf = _mm256_set1_ps(INFINITY);
    for (; k + 8 <= job->in; k += 8) {
        __m256 v = _mm256_loadu_ps(x + k);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_andnot_ps(sign, v), inf, _CMP_NLT_UQ));
        low = _mm256_min_ps(low, v);
        high = _mm256_max_ps(high, v);
    }
    finite = _mm256_movemask_ps(bad) == 0;
    float lows[8], highs[8];
    _mm256_storeu_ps(lows, low);
    _mm256_storeu_ps(highs, high);
    for (int i = 0; i < 8; i++) {
        lo = lows[i] < lo ? lows[i] : lo;
        hi = highs[i] > hi ? highs[i] : hi;
    }
#endif
    for (; k < job->in; k++) {
        if (!(fabsf(x[k]) < INFINITY)) finite = 0;
        else {
            lo = x[k] < lo ? x[k] : lo;
            hi = x[k] > hi ? x[k] : hi;
        }
    }
    float span = hi - lo;
    float inverse = finite && span > 0.0f ? (float)I8_LEVELS / span : 0.0f;
    job->scales[r] = finite ? span / (float)I8_LEVELS : NAN;
    job->inverses[r] = inverse;
    job->zeros[r] = (int32_t)rintf(-lo * inverse);
}

/* x -> u8 q = clamp(rint(x * inverse) + zero, 0, 255); NaN (times the inverse 0 of its row) -> 0 */
static inline int32_t _i8_quantize(float x, float inverse, int32_t zero) {
    float v = rintf(x * inverse);
    if (!(v == v)) return 0;
    v += (float)zero;
    return v > (float)I8_LEVELS ? I8_LEVELS : v < 0.0f ? 0 : (int32_t)v;
}

/* x [rows, in] -> column tiles (quads = 0) or quad tiles (quads = 1); see the module text.
   Tasks: (tile, chunk of I8_CHUNK columns). */
#define I8_CHUNK 64
struct i8_tile_job {
    const float* x; const float* inverses; const int32_t* zeros; uint8_t* out;
    int64_t rows, in, in4, chunks; int quads;
};

/* Task `task`'s tile, its first row b0, its rows that exist (real) and its columns c_begin..c_end. */
struct i8_tile_span { int64_t tile, b0, real, c_begin, c_end; };
static inline struct i8_tile_span _i8_tile_span(const struct i8_tile_job* job, int64_t task) {
    struct i8_tile_span s;
    s.tile = task / job->chunks;
    s.b0 = s.tile * I8_LANES;
    s.real = job->rows - s.b0 < I8_LANES ? job->rows - s.b0 : I8_LANES;
    s.c_begin = task % job->chunks * I8_CHUNK;
    int64_t width = job->quads ? job->in4 : job->in;
    s.c_end = s.c_begin + I8_CHUNK < width ? s.c_begin + I8_CHUNK : width;
    return s;
}

#if defined(__AVX2__)
/* qv: one register of I8_LANES bytes (a column of a tile, or quads of I8_LANES / 4 rows). */
#if defined(I8_WIDE)
typedef __m512i qv;
static inline qv qv_load(const uint8_t* p) { return _mm512_loadu_si512((const void*)p); }
static inline void qv_store(uint8_t* p, qv v) { _mm512_storeu_si512((void*)p, v); }
static inline qv qv_zero(void) { return _mm512_setzero_si512(); }
static inline qv qv_set1(const int8_t* quad) { return _mm512_set1_epi32(*(const int32_t*)quad); }
#define QV_UNPACK(how, a, b) _mm512_##how(a, b)
#else
typedef __m256i qv;
static inline qv qv_load(const uint8_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
static inline void qv_store(uint8_t* p, qv v) { _mm256_storeu_si256((__m256i*)p, v); }
static inline qv qv_zero(void) { return _mm256_setzero_si256(); }
static inline qv qv_set1(const int8_t* quad) { return _mm256_set1_epi32(*(const int32_t*)quad); }
#define QV_UNPACK(how, a, b) _mm256_##how(a, b)
#endif

/* Four columns a, b, c, d of I8_LANES rows -> the 4 registers of quads, each row's bytes
   a b c d: in every 16 rows 16L..16L+15 (one 128-bit lane L of the registers), q[v] holds
   rows 16L + 4v .. 16L + 4v + 3. */
static inline void _i8_quads(qv a, qv b, qv c, qv d, qv q[4]) {
    qv ab_lo = QV_UNPACK(unpacklo_epi8, a, b), ab_hi = QV_UNPACK(unpackhi_epi8, a, b);
    qv cd_lo = QV_UNPACK(unpacklo_epi8, c, d), cd_hi = QV_UNPACK(unpackhi_epi8, c, d);
    q[0] = QV_UNPACK(unpacklo_epi16, ab_lo, cd_lo);
    q[1] = QV_UNPACK(unpackhi_epi16, ab_lo, cd_lo);
    q[2] = QV_UNPACK(unpacklo_epi16, ab_hi, cd_hi);
    q[3] = QV_UNPACK(unpackhi_epi16, ab_hi, cd_hi);
}
#endif

#if defined(__AVX2__)
/* 16 floats -> 16 bytes clamp(rint(x * inverse) + zero, 0, 255): the saturating narrowing
   does the clamp (NaN converts to INT_MIN: 0). */
static inline __m128i _i8_quantize16(const float* x, float inverse, int32_t zero) {
#if defined(I8_WIDE)
    __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x), _mm512_set1_ps(inverse))),
                                 _mm512_set1_epi32(zero));
    return _mm512_cvtusepi32_epi8(_mm512_max_epi32(q, _mm512_setzero_si512()));
#else
    __m256 s = _mm256_set1_ps(inverse);
    __m256i z = _mm256_set1_epi32(zero);
    __m256i a = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), s)), z);
    __m256i b = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8), s)), z);
    __m256i w = _mm256_packs_epi32(a, b);  /* int16: a0-3 b0-3 | a4-7 b4-7 */
    __m128i bytes = _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    return _mm_shuffle_epi32(bytes, _MM_SHUFFLE(3, 1, 2, 0));  /* a0-3 b0-3 a4-7 b4-7 -> a0-7 b0-7 */
#endif
}

/* A block of 16 columns of a tile's rows, block[i][16L + j] = row 16L + i, column j (L: the
   128-bit lanes of a register) -> col[j], column j of the tile's I8_LANES rows. Four rounds of
   unpacks, each within the 128-bit lanes. */
static inline void _i8_transpose16(const uint8_t* block, qv col[16]) {
    qv r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = qv_load(block + i * I8_LANES);
    for (int i = 0; i < 8; i++) {  /* t[i]: rows 2i, 2i + 1 of columns 0..7; t[8 + i]: of 8..15 */
        t[i] = QV_UNPACK(unpacklo_epi8, r[2 * i], r[2 * i + 1]);
        t[8 + i] = QV_UNPACK(unpackhi_epi8, r[2 * i], r[2 * i + 1]);
    }
    for (int u = 0; u < 16; u += 8)  /* r[u + i]: rows 4i..4i + 3 of columns u..u + 3; r[u + 4 + i]: u + 4.. */
        for (int i = 0; i < 4; i++) {
            r[u + i] = QV_UNPACK(unpacklo_epi16, t[u + 2 * i], t[u + 2 * i + 1]);
            r[u + 4 + i] = QV_UNPACK(unpackhi_epi16, t[u + 2 * i], t[u + 2 * i + 1]);
        }
    for (int g = 0; g < 16; g += 4) {  /* t[g]: rows 0-7 of columns g, g + 1; t[g + 1]: rows 8-15; ... */
        t[g] = QV_UNPACK(unpacklo_epi32, r[g], r[g + 1]);
        t[g + 1] = QV_UNPACK(unpacklo_epi32, r[g + 2], r[g + 3]);
        t[g + 2] = QV_UNPACK(unpackhi_epi32, r[g], r[g + 1]);
        t[g + 3] = QV_UNPACK(unpackhi_epi32, r[g + 2], r[g + 3]);
    }
    for (int g = 0; g < 16; g += 4) {
        col[g] = QV_UNPACK(unpacklo_epi64, t[g], t[g + 1]);
        col[g + 1] = QV_UNPACK(unpackhi_epi64, t[g], t[g + 1]);
        col[g + 2] = QV_UNPACK(unpacklo_epi64, t[g + 2], t[g + 3]);
        col[g + 3] = QV_UNPACK(unpackhi_epi64, t[g + 2], t[g + 3]);
    }
}

/* Each row of the tile is quantized along its columns, 16 at a time, into blocks of 16
   columns laid out for _i8_transpose16; then every block becomes 16 column registers, stored
   as they are (column tiles) or interleaved by _i8_quads (quad tiles). Columns in..in4 of
   quad tiles hold the quantized 0.0; rows past `rows` hold 0. */
static void _i8_tile_task(void* context, int64_t task, int worker) {
    const struct i8_tile_job* job = (const struct i8_tile_job*)context;
    struct i8_tile_span span = _i8_tile_span(job, task);
    int64_t tile = span.tile, b0 = span.b0, real = span.real, c_begin = span.c_begin, c_end = span.c_end;
    int blocks = (int)((c_end - c_begin + 15) / 16);
    uint8_t rows[I8_CHUNK / 16][16][I8_LANES] __attribute__((aligned(64)));
    for (int64_t l = 0; l < I8_LANES; l++) {
        const float* src = job->x + (b0 + l) * job->in;
        float inverse = l < real ? job->inverses[b0 + l] : 0.0f;
        int32_t zero = l < real ? job->zeros[b0 + l] : 0;
        for (int b = 0; b < blocks; b++) {
            int64_t c = c_begin + 16 * b;
            __m128i q;
            if (l >= real) q = _mm_setzero_si128();
            else if (c + 16 <= job->in) q = _i8_quantize16(src + c, inverse, zero);
            else {
                float padded[16];
                for (int64_t k = 0; k < 16; k++) padded[k] = c + k < job->in ? src[c + k] : 0.0f;
                q = _i8_quantize16(padded, inverse, zero);
            }
            _mm_store_si128((__m128i*)&rows[b][l % 16][l / 16 * 16], q);
        }
    }
    for (int b = 0; b < blocks; b++) {
        qv col[16];
        _i8_transpose16(&rows[b][0][0], col);
        int64_t c0 = c_begin + 16 * b, cols = c_end - c0 < 16 ? c_end - c0 : 16;
        if (!job->quads) {
            for (int64_t j = 0; j < cols; j++) qv_store(job->out + (tile * job->in + c0 + j) * I8_LANES, col[j]);
            continue;
        }
        for (int64_t j = 0; j < cols; j += 4) {  /* in4 is a multiple of 4, so are c0 and cols */
            uint8_t* dst = job->out + (tile * (job->in4 / 4) + (c0 + j) / 4) * 4 * I8_LANES;
            qv q[4];
            _i8_quads(col[j], col[j + 1], col[j + 2], col[j + 3], q);
            for (int v = 0; v < 4; v++) qv_store(dst + I8_LANES * v, q[v]);
        }
    }
}
#else
static void _i8_tile_task(void* context, int64_t task, int worker) {
    const struct i8_tile_job* job = (const struct i8_tile_job*)context;
    struct i8_tile_span span = _i8_tile_span(job, task);
    int64_t tile = span.tile, b0 = span.b0, real = span.real, c_begin = span.c_begin, c_end = span.c_end;
    for (int64_t l = 0; l < I8_LANES; l++) {
        const float* src = job->x + (b0 + l) * job->in;
        for (int64_t c = c_begin; c < c_end; c++) {
            uint8_t q = l < real ? (uint8_t)_i8_quantize(c < job->in ? src[c] : 0.0f, job->inverses[b0 + l],
                                                         job->zeros[b0 + l]) : 0;
            if (job->quads) job->out[(tile * (job->in4 / 4) + c / 4) * 4 * I8_LANES + 4 * l + c % 4] = q;
            else job->out[(tile * job->in + c) * I8_LANES + l] = q;
        }
    }
}
#endif

/* The batched kernels' quantized activations, in one allocation: the tokens' scales and zero
   points [tiles * I8_LANES] (0 past the last token) and their tiles (column tiles, or quad
   tiles of in4 columns). */
struct i8_tokens { float* scales; int32_t* zeros; uint8_t* tiles; void* memory; };

/* Tile t of tokens: its rows' scales, then every chunk of its columns. */
struct i8_token_job { struct i8_scale_job scale; struct i8_tile_job tile; };
static void _i8_token_tile_task(void* context, int64_t t, int worker) {
    struct i8_token_job* job = (struct i8_token_job*)context;
    int64_t end = (t + 1) * I8_LANES < job->tile.rows ? (t + 1) * I8_LANES : job->tile.rows;
    for (int64_t r = t * I8_LANES; r < end; r++) _i8_scale_task(&job->scale, r, worker);
    for (int64_t c = 0; c < job->tile.chunks; c++) _i8_tile_task(&job->tile, t * job->tile.chunks + c, worker);
}

/* x [rows, in] -> tokens; returns 0, or -1 (nothing allocated) when memory runs out. */
static int i8_quantize_tokens(int num_threads, int64_t rows, int64_t in, int64_t in4, int quads, const float* x,
                              struct i8_tokens* tokens) {
    int64_t tiles = (rows + I8_LANES - 1) / I8_LANES, width = quads ? in4 : in;
    size_t per_token = (size_t)tiles * I8_LANES * sizeof(float);  /* a multiple of 64 */
    char* memory = (char*)aligned_alloc(64, 3 * per_token + (size_t)(tiles * width * I8_LANES + 63) / 64 * 64);
    if (!memory) return -1;
    memset(memory, 0, 3 * per_token);
    float *scales = (float*)memory, *inverses = (float*)(memory + per_token);
    int32_t* zeros = (int32_t*)(memory + 2 * per_token);
    uint8_t* out = (uint8_t*)(memory + 3 * per_token);
    int64_t chunks = (width + I8_CHUNK - 1) / I8_CHUNK;
    struct i8_token_job job = {{x, in, scales, inverses, zeros}, {x, inverses, zeros, out, rows, in, in4, chunks, quads}};
    if (tiles % num_threads == 0 || tiles >= 4 * num_threads) {  /* whole tiles balance: one parallel loop */
        sr_parallel_for(num_threads, tiles, _i8_token_tile_task, &job);
    } else {
        sr_parallel_for(num_threads, rows, _i8_scale_task, &job.scale);
        sr_parallel_for(num_threads, tiles * chunks, _i8_tile_task, &job.tile);
    }
    tokens->scales = scales;
    tokens->zeros = zeros;
    tokens->tiles = out;
    tokens->memory = memory;
    return 0;
}

/* One token: its scale and zero point, and q - zero as int32 [in] (CSR) or u8 q [in32], 0
   past in (dense, BSR). */
void i8_quantize_row(int64_t in, int64_t in32, const float* x, float* scale, int32_t* zero, int32_t* q32,
                     uint8_t* q8) {
    float inverse;
    struct i8_scale_job job = {x, in, scale, &inverse, zero};
    _i8_scale_task(&job, 0, 0);
    for (int64_t k = 0; k < in; k++) {
        int32_t q = _i8_quantize(x[k], inverse, *zero);
        if (q32) q32[k] = q - *zero;
        if (q8) q8[k] = (uint8_t)q;
    }
    if (q8) for (int64_t k = in; k < in32; k++) q8[k] = 0;
}

/* ---------------------------------------------------------------- dot products of quads */

#if defined(__AVX2__)
/* 256 bits: the one-token (GEMV) kernels, and the tiles of hosts without AVX-512 */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
static inline __m256i _i8_dot4_256(__m256i acc, __m256i u8, __m256i s8) { return _mm256_dpbusd_epi32(acc, u8, s8); }
#elif defined(__AVXVNNI__)
static inline __m256i _i8_dot4_256(__m256i acc, __m256i u8, __m256i s8) { return _mm256_dpbusd_avx_epi32(acc, u8, s8); }
#else
/* u8 = (u8 >> 1) + (u8 - (u8 >> 1)), both <= 128: their pairwise int16 sums cannot saturate */
static inline __m256i _i8_dot4_256(__m256i acc, __m256i u8, __m256i s8) {
    __m256i half = _mm256_and_si256(_mm256_srli_epi16(u8, 1), _mm256_set1_epi8(0x7F));
    __m256i rest = _mm256_sub_epi8(u8, half);
    const __m256i ones = _mm256_set1_epi16(1);
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(half, s8), ones));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(rest, s8), ones));
}
#endif

/* the sum of the 8 int32 lanes */
static inline int32_t _i8_sum256(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

#if defined(I8_WIDE)
#if defined(__AVX512VNNI__)
static inline qv _i8_dot4(qv acc, qv u8, qv s8) { return _mm512_dpbusd_epi32(acc, u8, s8); }
#else
/* u8 split in two halves <= 128, as in _i8_dot4_256 */
static inline qv _i8_dot4(qv acc, qv u8, qv s8) {
    qv half = _mm512_and_si512(_mm512_srli_epi16(u8, 1), _mm512_set1_epi8(0x7F));
    qv rest = _mm512_sub_epi8(u8, half);
    const qv ones = _mm512_set1_epi16(1);
    acc = _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(half, s8), ones));
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(rest, s8), ones));
}
#endif

/* accumulators in quad order (see _i8_quads) -> 64 floats in row order:
   (acc - x_zero[l] * row_sum) * (x_scale[l] * w_scale) + bias. Rows 16L.. are the 128-bit
   lanes L of acc[0..3]: a 4x4 transposition of 128-bit lanes. */
static inline void _i8_finish(const qv acc[4], int32_t row_sum, float w_scale, const float* x_scales,
                              const int32_t* x_zeros, float bias, float* out) {
    __m512i t01 = _mm512_shuffle_i32x4(acc[0], acc[1], 0x44), t23 = _mm512_shuffle_i32x4(acc[2], acc[3], 0x44);
    __m512i u01 = _mm512_shuffle_i32x4(acc[0], acc[1], 0xEE), u23 = _mm512_shuffle_i32x4(acc[2], acc[3], 0xEE);
    __m512i rows[4] = {_mm512_shuffle_i32x4(t01, t23, 0x88), _mm512_shuffle_i32x4(t01, t23, 0xDD),
                       _mm512_shuffle_i32x4(u01, u23, 0x88), _mm512_shuffle_i32x4(u01, u23, 0xDD)};
    __m512i sum = _mm512_set1_epi32(row_sum);
    __m512 w = _mm512_set1_ps(w_scale), b = _mm512_set1_ps(bias);
    for (int j = 0; j < 4; j++) {
        __m512i c = _mm512_mullo_epi32(_mm512_loadu_si512((const void*)(x_zeros + 16 * j)), sum);
        __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(rows[j], c));
        _mm512_storeu_ps(out + 16 * j, _mm512_fmadd_ps(f, _mm512_mul_ps(_mm512_loadu_ps(x_scales + 16 * j), w), b));
    }
}
#else
static inline qv _i8_dot4(qv acc, qv u8, qv s8) { return _i8_dot4_256(acc, u8, s8); }

/* accumulators in quad order (see _i8_quads) -> 32 floats in row order:
   (acc - x_zero[l] * row_sum) * (x_scale[l] * w_scale) + bias */
static inline void _i8_finish(const __m256i acc[4], int32_t row_sum, float w_scale, const float* x_scales,
                              const int32_t* x_zeros, float bias, float* out) {
    __m256i rows[4] = {_mm256_permute2x128_si256(acc[0], acc[1], 0x20), _mm256_permute2x128_si256(acc[2], acc[3], 0x20),
                       _mm256_permute2x128_si256(acc[0], acc[1], 0x31), _mm256_permute2x128_si256(acc[2], acc[3], 0x31)};
    __m256i sum = _mm256_set1_epi32(row_sum);
    __m256 w = _mm256_set1_ps(w_scale), b = _mm256_set1_ps(bias);
    for (int j = 0; j < 4; j++) {
        __m256i c = _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i*)(x_zeros + 8 * j)), sum);
        __m256 f = _mm256_cvtepi32_ps(_mm256_sub_epi32(rows[j], c));
        _mm256_storeu_ps(out + 8 * j, _mm256_fmadd_ps(f, _mm256_mul_ps(_mm256_loadu_ps(x_scales + 8 * j), w), b));
    }
}
#endif
#endif

/* ---------------------------------------------------------------- writing output tiles */

/* Rows r0 .. r0 + group - 1 of a [group, I8_LANES] float tile -> y [rows, out] (GELU first).
   The kernels fill STORE_GROUP rows at a time, aligned to multiples of STORE_GROUP. */
static void _i8_store(float* tile, int64_t group, int lanes, int gelu, float* y, int64_t out, int64_t r0, int64_t b0) {
    if (gelu)
        for (int64_t i = 0; i < group * I8_LANES; i += VL) vstore(tile + i, vgelu(vload(tile + i)));
    store_row_tile(tile, I8_LANES, group, lanes, y, out, r0, b0);
}

/* ---------------------------------------------------------------- sparse int8 (CSR, BSR) */

/* A sparse int8 weight: offsets [out + 1] (of a row's CSR groups or BSR blocks), columns
   (uint16 or int32), values int8, row_sums [out] (of the values), w_scales [out]. x_scales
   and x_zeros: the tokens' scales and zero points. xt: the activation tiles, `in` bytes per
   row of a tile (BSR: 4 * quads), or one token's u8 q (BSR GEMV); q: one token's int32
   q - zero (CSR GEMV). */
struct i8_sparse_job {
    const int64_t *task_rows, *offsets;
    const void* columns;
    const int8_t* values;
    const int32_t* row_sums;
    const float *w_scales, *bias, *x_scales;
    const int32_t* x_zeros;
    const uint8_t* xt;
    const int32_t* q;
    float* y;
    int64_t rows, in, out;
    int gelu;
};

/* The batched task `_i8_<NAME>_gemm_task_<IDX>`: every tile of I8_LANES rows against the
   task's output rows (task_rows NULL: tile t against every output row), ROW(ITYPE) computing
   row r's tile into the group buffer. */
#define DEFINE_I8_SPARSE_GEMM_TASK(NAME, ROW, IDX, ITYPE)                                       \
static void _i8_##NAME##_gemm_task_##IDX(void* context, int64_t t, int worker) {                \
    const struct i8_sparse_job* job = (const struct i8_sparse_job*)context;                     \
    const ITYPE* columns = (const ITYPE*)job->columns;                                          \
    int by_tiles = job->task_rows == NULL;                                                      \
    int64_t r_begin = by_tiles ? 0 : job->task_rows[t], r_end = by_tiles ? job->out : job->task_rows[t + 1]; \
    int64_t b_begin = by_tiles ? t * I8_LANES : 0, b_end = by_tiles ? b_begin + I8_LANES : job->rows; \
    float tile[STORE_GROUP * I8_LANES] __attribute__((aligned(64)));                            \
    for (int64_t b0 = b_begin; b0 < b_end; b0 += I8_LANES) {                                    \
        const uint8_t* xt = job->xt + b0 * job->in;  /* this tile */                            \
        int lanes = (int)(job->rows - b0 < I8_LANES ? job->rows - b0 : I8_LANES);               \
        int64_t group_start = r_begin;                                                          \
        for (int64_t r = r_begin; r < r_end; r++) {                                             \
            int64_t g = r - group_start;                                                        \
            float bias = job->bias ? job->bias[r] : 0.0f;                                       \
            ROW(ITYPE)                                                                          \
            if ((r + 1) % STORE_GROUP == 0 || r == r_end - 1) {                                 \
                _i8_store(tile, g + 1, lanes, job->gelu, job->y, job->out, group_start, b0);    \
                group_start = r + 1;                                                            \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
}

/* ---------------------------------------------------------------- int8 CSR */

/* Rows padded to groups of 4 nonzeros (padding: weight 0, a valid column); offsets count
   groups, columns and values [groups * 4]. */
#define DEFINE_I8_CSR(IDX, ITYPE)                                                               \
DEFINE_I8_SPARSE_GEMM_TASK(csr, I8_CSR_ROW, IDX, ITYPE)                                         \
static void _i8_csr_gemv_task_##IDX(void* context, int64_t t, int worker) {                     \
    const struct i8_sparse_job* job = (const struct i8_sparse_job*)context;                     \
    const ITYPE* columns = (const ITYPE*)job->columns;                                          \
    const int32_t* q = job->q;                                                                  \
    for (int64_t r = job->task_rows[t]; r < job->task_rows[t + 1]; r++) {                       \
        int64_t k = job->offsets[r] * 4, end = job->offsets[r + 1] * 4;                         \
        int32_t acc = 0;                                                                        \
        I8_CSR_GEMV(ITYPE)                                                                      \
        for (; k < end; k++) acc += (int32_t)job->values[k] * q[columns[k]];                    \
        job->y[r] = (float)acc * (job->x_scales[0] * job->w_scales[r]) + (job->bias ? job->bias[r] : 0.0f); \
    }                                                                                           \
}

#if defined(__AVX2__)
#define I8_CSR_ROW(ITYPE)                                                                       \
    qv acc[4] = {qv_zero(), qv_zero(), qv_zero(), qv_zero()};                                   \
    for (int64_t k = job->offsets[r] * 4; k < job->offsets[r + 1] * 4; k += 4) {                \
        qv w = qv_set1(job->values + k);                                                        \
        qv quads[4];                                                                            \
        _i8_quads(qv_load(xt + (int64_t)columns[k] * I8_LANES),                                 \
                  qv_load(xt + (int64_t)columns[k + 1] * I8_LANES),                             \
                  qv_load(xt + (int64_t)columns[k + 2] * I8_LANES),                             \
                  qv_load(xt + (int64_t)columns[k + 3] * I8_LANES),                             \
                  quads);                                                                       \
        for (int v = 0; v < 4; v++) acc[v] = _i8_dot4(acc[v], quads[v], w);                    \
    }                                                                                           \
    _i8_finish(acc, job->row_sums[r], job->w_scales[r], job->x_scales + b0, job->x_zeros + b0, bias, tile + g * I8_LANES);
#define I8_CSR_GEMV(ITYPE)                                                                      \
    __m256i acc8 = _mm256_setzero_si256();                                                      \
    for (; k + 8 <= end; k += 8) {                                                              \
        __m256i idx = I8_LOAD_INDEX_##ITYPE(columns + k);                                       \
        __m256i w = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(job->values + k)));   \
        acc8 = _mm256_add_epi32(acc8, _mm256_mullo_epi32(_mm256_i32gather_epi32(q, idx, 4), w)); \
    }                                                                                           \
    acc = _i8_sum256(acc8);
#define I8_LOAD_INDEX_uint16_t(p) _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)(p)))
#define I8_LOAD_INDEX_int32_t(p) _mm256_loadu_si256((const __m256i*)(p))
#else
#define I8_CSR_ROW(ITYPE)                                                                       \
    int32_t acc[I8_LANES] = {0};                                                                \
    for (int64_t k = job->offsets[r] * 4; k < job->offsets[r + 1] * 4; k++) {                   \
        const uint8_t* column = xt + (int64_t)columns[k] * I8_LANES;                            \
        int32_t w = job->values[k];                                                             \
        for (int l = 0; l < I8_LANES; l++) acc[l] += w * (int32_t)column[l];                    \
    }                                                                                           \
    for (int l = 0; l < I8_LANES; l++)                                                          \
        tile[g * I8_LANES + l] = (float)(acc[l] - job->x_zeros[b0 + l] * job->row_sums[r])      \
            * (job->x_scales[b0 + l] * job->w_scales[r]) + bias;
#define I8_CSR_GEMV(ITYPE)
#endif

DEFINE_I8_CSR(u16, uint16_t)
DEFINE_I8_CSR(i32, int32_t)

#define DEFINE_I8_CSR_ENTRY(IDX, ITYPE)                                                         \
int i8_csr_gemm_##IDX(int num_threads, int64_t tasks, const int64_t* task_rows,                 \
                      const int64_t* group_offsets, const ITYPE* columns, const int8_t* values, \
                      const int32_t* row_sums, const float* w_scales, const float* bias,        \
                      int64_t rows, int64_t in, int64_t out, const float* x, float* y, int gelu) { \
    struct i8_tokens tokens;                                                                    \
    if (i8_quantize_tokens(num_threads, rows, in, 0, 0, x, &tokens)) return -1;                 \
    struct i8_sparse_job job = {task_rows, group_offsets, columns, values, row_sums, w_scales,  \
                             bias, tokens.scales, tokens.zeros, tokens.tiles, NULL, y, rows, in, out, gelu}; \
    sr_parallel_for(num_threads, tasks, _i8_csr_gemm_task_##IDX, &job);                         \
    free(tokens.memory);                                                                        \
    return 0;                                                                                   \
}                                                                                               \
void i8_csr_gemv_##IDX(int num_threads, int64_t tasks, const int64_t* task_rows,                \
                       const int64_t* group_offsets, const ITYPE* columns, const int8_t* values, \
                       const float* w_scales, const float* bias, int64_t in, int64_t out,       \
                       const float* x_scale, const int32_t* q, float* y) {                      \
    struct i8_sparse_job job = {task_rows, group_offsets, columns, values, NULL, w_scales, bias, \
                             x_scale, NULL, NULL, q, y, 1, in, out, 0};                         \
    sr_parallel_for(num_threads, tasks, _i8_csr_gemv_task_##IDX, &job);                         \
}
DEFINE_I8_CSR_ENTRY(u16, uint16_t)
DEFINE_I8_CSR_ENTRY(i32, int32_t)

/* ---------------------------------------------------------------- int8 dense */

/* weight int8 [out, in32] (zeros past in), row_sums [out], w_scales [out]; x_scales and
   x_zeros: the tokens' scales and zero points; tasks of I8_DENSE_ROWS output rows. */
#define I8_DENSE_ROWS 4
struct i8_dense_job {
    const int8_t* weight;
    const int32_t* row_sums;
    const float *w_scales, *bias, *x_scales;
    const int32_t* x_zeros;
    const uint8_t* x;
    float* y;
    int64_t rows, in4, in32, out, rows_per_task;
    int gelu;
};

static void _i8_dense_gemm_task(void* context, int64_t t, int worker) {
    const struct i8_dense_job* job = (const struct i8_dense_job*)context;
    int64_t r_begin = t * job->rows_per_task;
    int64_t r_end = r_begin + job->rows_per_task < job->out ? r_begin + job->rows_per_task : job->out;
    int64_t quads = job->in4 / 4;
    float tile[STORE_GROUP * I8_LANES] __attribute__((aligned(64)));
    for (int64_t b0 = 0; b0 < job->rows; b0 += I8_LANES) {
        const uint8_t* xq = job->x + b0 / I8_LANES * quads * 4 * I8_LANES;  /* [quads, 4 * I8_LANES] */
        int lanes = (int)(job->rows - b0 < I8_LANES ? job->rows - b0 : I8_LANES);
        int64_t filled = 0, group_start = r_begin;
        for (int64_t r0 = r_begin; r0 < r_end; r0 += I8_DENSE_ROWS) {
            int64_t n = r_end - r0 < I8_DENSE_ROWS ? r_end - r0 : I8_DENSE_ROWS;
#if defined(__AVX2__)
            qv acc[I8_DENSE_ROWS][4];
            for (int i = 0; i < I8_DENSE_ROWS; i++)
                for (int v = 0; v < 4; v++) acc[i][v] = qv_zero();
            const int8_t* w0 = job->weight + r0 * job->in32;
            if (n == I8_DENSE_ROWS) {
                /* 4 rows x half the lanes at a time: 8 accumulators, 2 activation and 4 weight registers */
                for (int h = 0; h < 4; h += 2)
                    for (int64_t k = 0; k < quads; k++) {
                        qv a = qv_load(xq + (k * 4 + h) * I8_LANES), b = qv_load(xq + (k * 4 + h + 1) * I8_LANES);
                        for (int i = 0; i < I8_DENSE_ROWS; i++) {
                            qv w = qv_set1(w0 + i * job->in32 + 4 * k);
                            acc[i][h] = _i8_dot4(acc[i][h], a, w);
                            acc[i][h + 1] = _i8_dot4(acc[i][h + 1], b, w);
                        }
                    }
            } else {
                for (int i = 0; i < n; i++)
                    for (int64_t k = 0; k < quads; k++) {
                        qv w = qv_set1(w0 + i * job->in32 + 4 * k);
                        for (int v = 0; v < 4; v++) acc[i][v] = _i8_dot4(acc[i][v], qv_load(xq + (k * 4 + v) * I8_LANES), w);
                    }
            }
#endif
            for (int64_t i = 0; i < n; i++) {
                int64_t r = r0 + i;
                float bias = job->bias ? job->bias[r] : 0.0f;
#if defined(__AVX2__)
                _i8_finish(acc[i], job->row_sums[r], job->w_scales[r], job->x_scales + b0, job->x_zeros + b0, bias,
                           tile + filled * I8_LANES);
#else
                const int8_t* w = job->weight + r * job->in32;
                for (int l = 0; l < I8_LANES; l++) {
                    int32_t s = 0;
                    for (int64_t k = 0; k < job->in4; k++) s += (int32_t)w[k] * xq[k / 4 * 4 * I8_LANES + 4 * l + k % 4];
                    tile[filled * I8_LANES + l] = (float)(s - job->x_zeros[b0 + l] * job->row_sums[r])
                        * (job->x_scales[b0 + l] * job->w_scales[r]) + bias;
                }
#endif
                filled++;
                if ((r + 1) % STORE_GROUP == 0 || r == r_end - 1) {
                    _i8_store(tile, filled, lanes, job->gelu, job->y, job->out, group_start, b0);
                    group_start += filled;
                    filled = 0;
                }
            }
        }
    }
}

int i8_dense_gemm(int num_threads, int64_t rows_per_task, const int8_t* weight, const int32_t* row_sums,
                  const float* w_scales, const float* bias, int64_t rows, int64_t in, int64_t in4, int64_t in32,
                  int64_t out, const float* x, float* y, int gelu) {
    struct i8_tokens tokens;
    if (i8_quantize_tokens(num_threads, rows, in, in4, 1, x, &tokens)) return -1;
    struct i8_dense_job job = {weight, row_sums, w_scales, bias, tokens.scales, tokens.zeros, tokens.tiles, y, rows,
                               in4, in32, out, rows_per_task, gelu};
    sr_parallel_for(num_threads, (out + rows_per_task - 1) / rows_per_task, _i8_dense_gemm_task, &job);
    free(tokens.memory);
    return 0;
}

/* One token: x u8 q [in32]. */
static void _i8_dense_gemv_task(void* context, int64_t t, int worker) {
    const struct i8_dense_job* job = (const struct i8_dense_job*)context;
    int64_t r_begin = t * job->rows_per_task;
    int64_t r_end = r_begin + job->rows_per_task < job->out ? r_begin + job->rows_per_task : job->out;
    for (int64_t r = r_begin; r < r_end; r++) {
        const int8_t* w = job->weight + r * job->in32;
        int32_t acc = 0;
        int64_t k = 0;
#if defined(__AVX2__)
        __m256i a = _mm256_setzero_si256();
        for (; k < job->in32; k += 32)
            a = _i8_dot4_256(a, _mm256_loadu_si256((const __m256i*)(job->x + k)), _mm256_loadu_si256((const __m256i*)(w + k)));
        acc = _i8_sum256(a);
#endif
        for (; k < job->in32; k++) acc += (int32_t)w[k] * job->x[k];
        job->y[r] = (float)(acc - job->x_zeros[0] * job->row_sums[r]) * (job->x_scales[0] * job->w_scales[r])
                    + (job->bias ? job->bias[r] : 0.0f);
    }
}

void i8_dense_gemv(int num_threads, int64_t rows_per_task, const int8_t* weight, const int32_t* row_sums,
                   const float* w_scales, const float* bias, int64_t in32, int64_t out, const float* x_scale,
                   const int32_t* x_zero, const uint8_t* x, float* y) {
    struct i8_dense_job job = {weight, row_sums, w_scales, bias, x_scale, x_zero, x, y, 1, 0, in32, out,
                               rows_per_task, 0};
    sr_parallel_for(num_threads, (out + rows_per_task - 1) / rows_per_task, _i8_dense_gemv_task, &job);
}

/* ---------------------------------------------------------------- int8 BSR, 1x4 blocks */

/* Offsets count blocks, columns [blocks] hold the block's first input / 4, values int8
   [blocks * 4]. Batched: the dense kernel's quad tiles (in = 4 * quads bytes a row); one
   token: u8 q [in32]. */
#define DEFINE_I8_BSR(IDX, ITYPE)                                                               \
DEFINE_I8_SPARSE_GEMM_TASK(bsr, I8_BSR_ROW, IDX, ITYPE)                                         \
static void _i8_bsr_gemv_task_##IDX(void* context, int64_t t, int worker) {                     \
    const struct i8_sparse_job* job = (const struct i8_sparse_job*)context;                     \
    const ITYPE* columns = (const ITYPE*)job->columns;                                          \
    const uint8_t* x = job->xt;                                                                 \
    for (int64_t r = job->task_rows[t]; r < job->task_rows[t + 1]; r++) {                       \
        int64_t k = job->offsets[r], end = job->offsets[r + 1];                                 \
        int32_t acc = 0;                                                                        \
        I8_BSR_GEMV(ITYPE)                                                                      \
        for (; k < end; k++) {                                                                  \
            const uint8_t* a = x + 4 * (int64_t)columns[k];                                     \
            const int8_t* w = job->values + 4 * k;                                              \
            acc += w[0] * a[0] + w[1] * a[1] + w[2] * a[2] + w[3] * a[3];                       \
        }                                                                                       \
        job->y[r] = (float)(acc - job->x_zeros[0] * job->row_sums[r])                         \
                    * (job->x_scales[0] * job->w_scales[r])                                     \
                    + (job->bias ? job->bias[r] : 0.0f);                                        \
    }                                                                                           \
}                                                                                               \
int i8_bsr_gemm_##IDX(int num_threads, int64_t tasks, const int64_t* task_rows,                 \
                      const int64_t* block_offsets, const ITYPE* block_columns,                 \
                      const int8_t* values, const int32_t* row_sums, const float* w_scales,     \
                      const float* bias, int64_t rows, int64_t in, int64_t quads, int64_t out,  \
                      const float* x, float* y, int gelu) {                                     \
    struct i8_tokens tokens;                                                                    \
    if (i8_quantize_tokens(num_threads, rows, in, 4 * quads, 1, x, &tokens)) return -1;         \
    struct i8_sparse_job job = {task_rows, block_offsets, block_columns, values, row_sums,      \
                                w_scales, bias, tokens.scales, tokens.zeros, tokens.tiles, NULL, y, rows, \
                                4 * quads, out, gelu};                                          \
    sr_parallel_for(num_threads, tasks, _i8_bsr_gemm_task_##IDX, &job);                         \
    free(tokens.memory);                                                                        \
    return 0;                                                                                   \
}                                                                                               \
void i8_bsr_gemv_##IDX(int num_threads, int64_t tasks, const int64_t* task_rows,                \
                       const int64_t* block_offsets, const ITYPE* block_columns,                \
                       const int8_t* values, const int32_t* row_sums, const float* w_scales,    \
                       const float* bias, int64_t out, const float* x_scale, const int32_t* x_zero, \
                       const uint8_t* x, float* y) {                                            \
    struct i8_sparse_job job = {task_rows, block_offsets, block_columns, values, row_sums,      \
                                w_scales, bias, x_scale, x_zero, x, NULL, y, 1, 0, out, 0};     \
    sr_parallel_for(num_threads, tasks, _i8_bsr_gemv_task_##IDX, &job);                         \
}

#if defined(__AVX2__)
/* A block times the quad of its four inputs, as it stands in the quad tile: no shuffles. */
#define I8_BSR_ROW(ITYPE)                                                                       \
    qv acc[4] = {qv_zero(), qv_zero(), qv_zero(), qv_zero()};                                   \
    for (int64_t k = job->offsets[r]; k < job->offsets[r + 1]; k++) {                           \
        qv w = qv_set1(job->values + 4 * k);                                                    \
        const uint8_t* a = xt + (int64_t)columns[k] * 4 * I8_LANES;                             \
        for (int v = 0; v < 4; v++) acc[v] = _i8_dot4(acc[v], qv_load(a + v * I8_LANES), w);   \
    }                                                                                           \
    _i8_finish(acc, job->row_sums[r], job->w_scales[r], job->x_scales + b0, job->x_zeros + b0, bias, tile + g * I8_LANES);
/* eight blocks at a time: their input quads gathered as int32, one 4-wide dot product each */
#define I8_BSR_GEMV(ITYPE)                                                                      \
    __m256i acc8 = _mm256_setzero_si256();                                                      \
    for (; k + 8 <= end; k += 8) {                                                              \
        __m256i quads = _mm256_i32gather_epi32((const int*)x, I8_LOAD_INDEX_##ITYPE(columns + k), 4); \
        acc8 = _i8_dot4_256(acc8, quads, _mm256_loadu_si256((const __m256i*)(job->values + 4 * k))); \
    }                                                                                           \
    acc = _i8_sum256(acc8);
#else
#define I8_BSR_ROW(ITYPE)                                                                       \
    int32_t acc[I8_LANES] = {0};                                                                \
    for (int64_t k = job->offsets[r]; k < job->offsets[r + 1]; k++) {                           \
        const uint8_t* a = xt + (int64_t)columns[k] * 4 * I8_LANES;                             \
        const int8_t* w = job->values + 4 * k;                                                  \
        for (int l = 0; l < I8_LANES; l++)                                                      \
            acc[l] += w[0] * a[4 * l] + w[1] * a[4 * l + 1] + w[2] * a[4 * l + 2] + w[3] * a[4 * l + 3]; \
    }                                                                                           \
    for (int l = 0; l < I8_LANES; l++)                                                          \
        tile[g * I8_LANES + l] = (float)(acc[l] - job->x_zeros[b0 + l] * job->row_sums[r])      \
            * (job->x_scales[b0 + l] * job->w_scales[r]) + bias;
#define I8_BSR_GEMV(ITYPE)
#endif

DEFINE_I8_BSR(u16, uint16_t)
DEFINE_I8_BSR(i32, int32_t)
"""

_P = ctypes.c_void_p
_I = ctypes.c_int64
_INT = ctypes.c_int


@functools.cache
def _library():
    return load_library("int8", SOURCE)


@functools.cache
def lanes() -> int:
    """Rows per activation tile of the batched kernels: 64 on AVX-512 hosts, else 32."""
    lanes_of = declare(_library(), "i8_lanes", [])
    lanes_of.restype = ctypes.c_int
    return int(lanes_of())


def check_status(status: int, name: str) -> None:
    """A batched entry's status: -1 when its quantized activation tiles could not be allocated."""
    if status:
        raise MemoryError(f"{name}: no memory for the quantized activation tiles")


def quantized_token(row: torch.Tensor, in32: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token float32 [1, in] -> (scale float32 [1], zero point int32 [1], u8 q [in32], 0 past in)."""
    scale = torch.empty(1, dtype=torch.float32)
    zero = torch.empty(1, dtype=torch.int32)
    q8 = torch.empty(in32, dtype=torch.uint8)
    quantize_row()(row.shape[1], in32, pointer(row), pointer(scale), pointer(zero), None, pointer(q8))
    return scale, zero, q8


def centred_token(row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token float32 [1, in] -> (scale float32 [1], q - zero int32 [in])."""
    scale = torch.empty(1, dtype=torch.float32)
    zero = torch.empty(1, dtype=torch.int32)
    q = torch.empty(row.shape[1], dtype=torch.int32)
    quantize_row()(row.shape[1], 0, pointer(row), pointer(scale), pointer(zero), pointer(q), None)
    return scale, q


@functools.cache
def quantize_row():
    """`i8_quantize_row`: (in, in32, x [in], scale [1], zero point int32 [1], q - zero int32 [in]
    or None, q8 u8 [in32] or None)."""
    return declare(_library(), "i8_quantize_row", [_I, _I, _P, _P, _P, _P, _P])


@functools.cache
def csr_gemm(index: str):
    """`i8_csr_gemm_<index>`: (threads, tasks, task_rows, group_offsets, columns, values,
    row_sums, w_scales, bias or None, rows, in, out, x float32 [rows, in], y, gelu) -> status;
    quantizes x into column tiles first."""
    return _batched(f"i8_csr_gemm_{index}", [_INT, _I, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _P, _P, _INT])


@functools.cache
def csr_gemv(index: str):
    """`i8_csr_gemv_<index>`: (threads, tasks, task_rows, group_offsets, columns, values,
    w_scales, bias or None, in, out, x_scale [1], q - zero int32 [in], y)."""
    return declare(_library(), f"i8_csr_gemv_{index}", [_INT, _I, _P, _P, _P, _P, _P, _P, _I, _I, _P, _P, _P])


@functools.cache
def bsr_gemm(index: str):
    """`i8_bsr_gemm_<index>`: (threads, tasks, task_rows, block_offsets, block_columns, values,
    row_sums, w_scales, bias or None, rows, in, quads, out, x float32 [rows, in], y, gelu) ->
    status; quantizes x into quad tiles first."""
    return _batched(f"i8_bsr_gemm_{index}", [_INT, _I, _P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _P, _P, _INT])


@functools.cache
def bsr_gemv(index: str):
    """`i8_bsr_gemv_<index>`: (threads, tasks, task_rows, block_offsets, block_columns, values,
    row_sums, w_scales, bias or None, out, x_scale [1], x_zero [1], x u8 [in32], y)."""
    return declare(_library(), f"i8_bsr_gemv_{index}", [_INT, _I, _P, _P, _P, _P, _P, _P, _P, _I, _P, _P, _P, _P])


@functools.cache
def dense_gemm():
    """`i8_dense_gemm`: (threads, rows_per_task, weight [out, in32], row_sums, w_scales,
    bias or None, rows, in, in4, in32, out, x float32 [rows, in], y, gelu) -> status;
    quantizes x into quad tiles first."""
    return _batched("i8_dense_gemm", [_INT, _I, _P, _P, _P, _P, _I, _I, _I, _I, _I, _P, _P, _INT])


def _batched(name: str, argtypes: list):
    """A batched entry, which returns its status (see `check_status`)."""
    function = declare(_library(), name, argtypes)
    function.restype = ctypes.c_int
    return function


@functools.cache
def dense_gemv():
    """`i8_dense_gemv`: (threads, rows_per_task, weight, row_sums, w_scales, bias or None,
    in32, out, x_scale [1], x_zero [1], x u8 [in32], y)."""
    return declare(_library(), "i8_dense_gemv", [_INT, _I, _P, _P, _P, _P, _I, _I, _P, _P, _P, _P])
