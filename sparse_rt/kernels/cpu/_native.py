"""Build and load the C kernels behind the CPU backend.

Each kernel family keeps its C source in a private `_<format>_native.py` module.
`load_library(name, source)` prepends the vector prelude below, compiles the result
once per machine with the system C compiler (`$CC`, default `cc`) and loads it with
ctypes. Builds are cached under `$SPARSE_RT_CACHE_DIR/native` (default
`~/.cache/sparse_rt/native`), keyed by the source, the flags, the compiler and the
host CPU's feature flags, so a cache shared between machines never hands one host
code built for another. They target the host CPU (-march=native);
`$SPARSE_RT_CPU_ARCH` names another -march target (the tests build the AVX2 and the
portable code paths that way on an AVX-512 host).

The kernels split their work into tasks run by `sr_parallel_for` (`_pool`, loaded once,
RTLD_GLOBAL, before any kernel library) on torch's OpenMP thread pool. `num_threads`
is passed on every call from `torch.get_num_threads()`, so a kernel never runs on more
threads than the runtime asked for, and never starts threads of its own.

The prelude abstracts one SIMD register of `VL` floats (`vf`) and of `VL` int32
indices (`vi`): AVX-512 (VL = 16) where the host has AVX512F/BW/VL, AVX2 + FMA
(VL = 8) otherwise, and GCC vector extensions (VL = 8) on any other target.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch  # noqa: F401  (loads torch's libgomp.so.1 before the pool library needs one)

from sparse_rt.kernels.cpu import _pool

CFLAGS = ("-O3", "-fPIC", "-shared", "-std=gnu11", "-fno-math-errno")

PRELUDE = r"""
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void (*sr_task_fn)(void* context, int64_t task, int worker);
/* fn(context, task, worker) for task < tasks on up to num_threads threads (see _pool.py) */
void sr_parallel_for(int num_threads, int64_t tasks, sr_task_fn fn, void* context);

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define VL 16
typedef __m512 vf;
typedef __m512i vi;
#define LANE_MASK(n) ((__mmask16)((1u << (n)) - 1u))
static inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vload_n(const float* p, int n) { return _mm512_maskz_loadu_ps(LANE_MASK(n), p); }
static inline void vstore_n(float* p, vf v, int n) { _mm512_mask_storeu_ps(p, LANE_MASK(n), v); }
static inline vf vzero(void) { return _mm512_setzero_ps(); }
static inline vf vset1(float a) { return _mm512_set1_ps(a); }
static inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline float vsum(vf a) { return _mm512_reduce_add_ps(a); }
static inline vf vswap_pairs(vf a) { return _mm512_permute_ps(a, 0xB1); }
static inline vi vi_set1(int32_t a) { return _mm512_set1_epi32(a); }
static inline vi vi_add(vi a, vi b) { return _mm512_add_epi32(a, b); }
static inline vi vi_load_i8(const int8_t* p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)); }
static inline vi vi_load_i16(const int16_t* p) { return _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i*)p)); }
static inline vi vi_load_i32(const int32_t* p) { return _mm512_loadu_si512(p); }
static inline vi vi_load_i8_n(const int8_t* p, int n) { return _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(LANE_MASK(n), p)); }
static inline vi vi_load_i16_n(const int16_t* p, int n) { return _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(LANE_MASK(n), p)); }
static inline vi vi_load_i32_n(const int32_t* p, int n) { return _mm512_maskz_loadu_epi32(LANE_MASK(n), p); }
static inline vf vgather(const float* base, vi idx) { return _mm512_i32gather_ps(idx, base, 4); }
static inline vf vgather_n(const float* base, vi idx, int n) {
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), LANE_MASK(n), idx, base, 4);
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VL 8
typedef __m256 vf;
typedef __m256i vi;
static inline __m256i lane_mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vload_n(const float* p, int n) { return _mm256_maskload_ps(p, lane_mask(n)); }
static inline void vstore_n(float* p, vf v, int n) { _mm256_maskstore_ps(p, lane_mask(n), v); }
static inline vf vzero(void) { return _mm256_setzero_ps(); }
static inline vf vset1(float a) { return _mm256_set1_ps(a); }
static inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline float vsum(vf a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline vf vswap_pairs(vf a) { return _mm256_permute_ps(a, 0xB1); }
static inline vi vi_set1(int32_t a) { return _mm256_set1_epi32(a); }
static inline vi vi_add(vi a, vi b) { return _mm256_add_epi32(a, b); }
static inline vi vi_load_i8(const int8_t* p) { return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)); }
static inline vi vi_load_i16(const int16_t* p) { return _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i*)p)); }
static inline vi vi_load_i32(const int32_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
static inline vi vi_load_i8_n(const int8_t* p, int n) {
    int32_t b[8] = {0}; for (int i = 0; i < n; i++) b[i] = p[i]; return vi_load_i32(b);
}
static inline vi vi_load_i16_n(const int16_t* p, int n) {
    int32_t b[8] = {0}; for (int i = 0; i < n; i++) b[i] = p[i]; return vi_load_i32(b);
}
static inline vi vi_load_i32_n(const int32_t* p, int n) { return _mm256_maskload_epi32(p, lane_mask(n)); }
static inline vf vgather(const float* base, vi idx) { return _mm256_i32gather_ps(base, idx, 4); }
static inline vf vgather_n(const float* base, vi idx, int n) {
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, idx, _mm256_castsi256_ps(lane_mask(n)), 4);
}
#else
#define VL 8
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
static inline vf vload(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float* p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vload_n(const float* p, int n) { vf v = {0}; memcpy(&v, p, n * sizeof(float)); return v; }
static inline void vstore_n(float* p, vf v, int n) { memcpy(p, &v, n * sizeof(float)); }
static inline vf vzero(void) { vf v = {0}; return v; }
static inline vf vset1(float a) { return vzero() + a; }
static inline vf vadd(vf a, vf b) { return a + b; }
static inline vf vmul(vf a, vf b) { return a * b; }
static inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
static inline vf vmax(vf a, vf b) { for (int i = 0; i < VL; i++) a[i] = a[i] > b[i] ? a[i] : b[i]; return a; }
static inline vf vmin(vf a, vf b) { for (int i = 0; i < VL; i++) a[i] = a[i] < b[i] ? a[i] : b[i]; return a; }
static inline float vsum(vf a) { float s = 0; for (int i = 0; i < VL; i++) s += a[i]; return s; }
static inline vf vswap_pairs(vf a) { vi m = {1, 0, 3, 2, 5, 4, 7, 6}; return __builtin_shuffle(a, m); }
static inline vi vi_set1(int32_t a) { vi v = {0}; return v + a; }
static inline vi vi_add(vi a, vi b) { return a + b; }
static inline vi vi_load_i8(const int8_t* p) { vi v; for (int i = 0; i < VL; i++) v[i] = p[i]; return v; }
static inline vi vi_load_i16(const int16_t* p) { vi v; for (int i = 0; i < VL; i++) v[i] = p[i]; return v; }
static inline vi vi_load_i32(const int32_t* p) { vi v; memcpy(&v, p, sizeof v); return v; }
static inline vi vi_load_i8_n(const int8_t* p, int n) { vi v = {0}; for (int i = 0; i < n; i++) v[i] = p[i]; return v; }
static inline vi vi_load_i16_n(const int16_t* p, int n) { vi v = {0}; for (int i = 0; i < n; i++) v[i] = p[i]; return v; }
static inline vi vi_load_i32_n(const int32_t* p, int n) { vi v = {0}; memcpy(&v, p, n * sizeof(int32_t)); return v; }
static inline vf vgather(const float* base, vi idx) { vf v; for (int i = 0; i < VL; i++) v[i] = base[idx[i]]; return v; }
static inline vf vgather_n(const float* base, vi idx, int n) {
    vf v = {0}; for (int i = 0; i < n; i++) v[i] = base[idx[i]]; return v;
}
#endif

#if defined(__AVX2__)
/* Rows s, s + lds, ... s + 7 * lds of 8 floats -> d[j] = their column j (8 rows). */
static inline void _transpose_8x8_registers(const float* s, int64_t lds, __m256 d[8]) {
    __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + lds), r2 = _mm256_loadu_ps(s + 2 * lds),
           r3 = _mm256_loadu_ps(s + 3 * lds), r4 = _mm256_loadu_ps(s + 4 * lds),
           r5 = _mm256_loadu_ps(s + 5 * lds), r6 = _mm256_loadu_ps(s + 6 * lds),
           r7 = _mm256_loadu_ps(s + 7 * lds);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
           t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
           t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
           t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
           u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
           u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
           u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    d[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    d[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    d[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    d[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    d[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    d[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    d[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    d[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

static inline void _transpose_8x8(const float* s, int64_t lds, float* d, int64_t ldd) {
    __m256 columns[8];
    _transpose_8x8_registers(s, lds, columns);
    for (int j = 0; j < 8; j++) _mm256_storeu_ps(d + j * ldd, columns[j]);
}
#else
static inline void _transpose_8x8(const float* s, int64_t lds, float* d, int64_t ldd) {
    for (int r = 0; r < 8; r++)
        for (int c = 0; c < 8; c++) d[c * ldd + r] = s[r * lds + c];
}
#endif

#if defined(__AVX512F__)
/* 16 rows s + i * lds of 16 floats -> d + j * ldd = their column j: 64 bytes, one store. In
   each 128-bit lane L, unpacks and shuffles leave u[4m + p] = column 4L + p of rows
   4m..4m + 3; a 4x4 transposition of 128-bit lanes across u[p], u[4 + p], u[8 + p],
   u[12 + p] gathers the four row quarters of each column. */
static inline void _transpose_16x16(const float* s, int64_t lds, float* d, int64_t ldd) {
    __m512 t[16], u[16];
    for (int k = 0; k < 16; k += 2) {
        __m512 a = _mm512_loadu_ps(s + k * lds), b = _mm512_loadu_ps(s + (k + 1) * lds);
        t[k] = _mm512_unpacklo_ps(a, b);
        t[k + 1] = _mm512_unpackhi_ps(a, b);
    }
    for (int m = 0; m < 4; m++) {
        u[4 * m] = _mm512_shuffle_ps(t[4 * m], t[4 * m + 2], 0x44);
        u[4 * m + 1] = _mm512_shuffle_ps(t[4 * m], t[4 * m + 2], 0xEE);
        u[4 * m + 2] = _mm512_shuffle_ps(t[4 * m + 1], t[4 * m + 3], 0x44);
        u[4 * m + 3] = _mm512_shuffle_ps(t[4 * m + 1], t[4 * m + 3], 0xEE);
    }
    for (int p = 0; p < 4; p++) {
        __m512 low01 = _mm512_shuffle_f32x4(u[p], u[4 + p], 0x44), low23 = _mm512_shuffle_f32x4(u[8 + p], u[12 + p], 0x44);
        __m512 high01 = _mm512_shuffle_f32x4(u[p], u[4 + p], 0xEE), high23 = _mm512_shuffle_f32x4(u[8 + p], u[12 + p], 0xEE);
        _mm512_storeu_ps(d + p * ldd, _mm512_shuffle_f32x4(low01, low23, 0x88));
        _mm512_storeu_ps(d + (4 + p) * ldd, _mm512_shuffle_f32x4(low01, low23, 0xDD));
        _mm512_storeu_ps(d + (8 + p) * ldd, _mm512_shuffle_f32x4(high01, high23, 0x88));
        _mm512_storeu_ps(d + (12 + p) * ldd, _mm512_shuffle_f32x4(high01, high23, 0xDD));
    }
}
#endif

/* The batched kernels' output: rows 0..count-1 of a [count, tile_width] float tile (tile row
   g: output r0 + g; lane l: input row b0 + l), lanes < `lanes` -> y[(b0 + l) * out + r0 + g].
   Each run of 16 rows goes out as a 64-byte run per input row, in one store (AVX-512) or two
   back to back (AVX2), and the runs of an input row follow each other: runs of 8 floats
   written at different times kept missing L1 when out * 4 is a multiple of 4096, where
   every row of y starts in the same set (a third of the int8 kernel's time on 3072-wide
   layers). The kernels buffer STORE_GROUP rows (aligned to multiples of it) per call. */
#define STORE_GROUP 64
static inline void store_row_tile(const float* tile, int64_t tile_width, int64_t count, int lanes, float* y,
                                  int64_t out, int64_t r0, int64_t b0) {
    int64_t full = count / 16 * 16;
    int l0 = 0;
#if defined(__AVX512F__)
    for (; l0 + 16 <= lanes; l0 += 16)
        for (int64_t g = 0; g < full; g += 16)
            _transpose_16x16(tile + g * tile_width + l0, tile_width, y + (b0 + l0) * out + r0 + g, out);
#elif defined(__AVX2__)
    for (; l0 + 8 <= lanes; l0 += 8)
        for (int64_t g = 0; g < full; g += 16) {
            __m256 first[8], second[8];
            _transpose_8x8_registers(tile + g * tile_width + l0, tile_width, first);
            _transpose_8x8_registers(tile + (g + 8) * tile_width + l0, tile_width, second);
            for (int j = 0; j < 8; j++) {
                float* run = y + (b0 + l0 + j) * out + r0 + g;
                _mm256_storeu_ps(run, first[j]);
                _mm256_storeu_ps(run + 8, second[j]);
            }
        }
#endif
    for (int l = 0; l < lanes; l++)
        for (int64_t g = l < l0 ? full : 0; g < count; g++) y[(b0 + l) * out + r0 + g] = tile[g * tile_width + l];
}

/* dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols, and dst[c * ldd + r] = 0 for
   rows <= r < rows_padded; tasks of TRANSPOSE_COLUMNS columns. */
#define TRANSPOSE_COLUMNS 64
struct transpose_job {
    int64_t rows, rows_padded, cols, lds, ldd;
    const float* src;
    float* dst;
};

static void _transpose_columns(const struct transpose_job* job, int64_t c_begin, int64_t c_end) {
    int64_t lds = job->lds, ldd = job->ldd;
    for (int64_t c0 = c_begin; c0 < c_end; c0 += 8) {
        int64_t r0 = 0;
        if (c0 + 8 <= c_end)
            for (; r0 + 8 <= job->rows; r0 += 8)
                _transpose_8x8(job->src + r0 * lds + c0, lds, job->dst + c0 * ldd + r0, ldd);
        for (int64_t c = c0; c < c0 + 8 && c < c_end; c++) {
            for (int64_t r = r0; r < job->rows; r++) job->dst[c * ldd + r] = job->src[r * lds + c];
            for (int64_t r = job->rows; r < job->rows_padded; r++) job->dst[c * ldd + r] = 0.0f;
        }
    }
}

static void _transpose_task(void* context, int64_t task, int worker) {
    const struct transpose_job* job = (const struct transpose_job*)context;
    int64_t c_end = (task + 1) * TRANSPOSE_COLUMNS < job->cols ? (task + 1) * TRANSPOSE_COLUMNS : job->cols;
    _transpose_columns(job, task * TRANSPOSE_COLUMNS, c_end);
}

static void transpose_padded(int num_threads, int64_t rows, int64_t rows_padded, int64_t cols,
                             const float* src, int64_t lds, float* dst, int64_t ldd) {
    struct transpose_job job = {rows, rows_padded, cols, lds, ldd, src, dst};
    sr_parallel_for(num_threads, (cols + TRANSPOSE_COLUMNS - 1) / TRANSPOSE_COLUMNS, _transpose_task, &job);
}

/* x [rows, cols] into tile-major xT: tile b0 (every `width` rows, the last one up to
   ceil(rows / VL) * VL) is a contiguous [cols, tile width] block at xt + b0 * cols, rows past
   `rows` zero. One parallel loop over (tile, column chunk) tasks. */
struct tile_transpose_job { int64_t rows, padded, cols, width, chunks; const float* x; float* xt; };

static void _tile_transpose_task(void* context, int64_t task, int worker) {
    const struct tile_transpose_job* job = (const struct tile_transpose_job*)context;
    int64_t b0 = task / job->chunks * job->width, chunk = task % job->chunks;
    int64_t tile_width = job->padded - b0 < job->width ? job->padded - b0 : job->width;
    int64_t real = job->rows - b0 < tile_width ? job->rows - b0 : tile_width;
    struct transpose_job part = {real, tile_width, job->cols, job->cols, tile_width,
                                 job->x + b0 * job->cols, job->xt + b0 * job->cols};
    int64_t c_end = (chunk + 1) * TRANSPOSE_COLUMNS < job->cols ? (chunk + 1) * TRANSPOSE_COLUMNS : job->cols;
    _transpose_columns(&part, chunk * TRANSPOSE_COLUMNS, c_end);
}

static void transpose_tiles(int num_threads, int64_t rows, int64_t cols, int64_t width, const float* x,
                            float* xt) {
    int64_t padded = (rows + VL - 1) / VL * VL, chunks = (cols + TRANSPOSE_COLUMNS - 1) / TRANSPOSE_COLUMNS;
    struct tile_transpose_job job = {rows, padded, cols, width, chunks, x, xt};
    sr_parallel_for(num_threads, (padded + width - 1) / width * chunks, _tile_transpose_task, &job);
}

int sparse_rt_vector_width(void) { return VL; }
"""


class NativeBuildError(RuntimeError):
    """The C compiler is missing or rejected a kernel source."""


def cache_dir() -> Path:
    """Where compiled kernel libraries are kept."""
    root = os.environ.get("SPARSE_RT_CACHE_DIR")
    if root:
        return Path(root) / "native"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or Path.home() / ".cache") / "sparse_rt" / "native"


@functools.cache
def _host_signature() -> str:
    """The compiler's version and the CPU's feature flags (what -march=native sees)."""
    compiler = os.environ.get("CC", "cc")
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise NativeBuildError(f"C compiler {compiler!r} is not usable: {error}") from None
    cpu = platform.processor() + platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu += next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return compiler + "\n" + version + "\n" + cpu


def target_flags() -> tuple[str, ...]:
    """-march for the host (`$SPARSE_RT_CPU_ARCH` overrides "native", e.g. "haswell" for AVX2,
    "x86-64" for the portable vector code)."""
    return (f"-march={os.environ.get('SPARSE_RT_CPU_ARCH', 'native')}",)


def _build(name: str, full_source: str, extra_flags: tuple[str, ...] = ()) -> Path:
    """The path of the compiled `full_source` (compiled now unless cached); raises NativeBuildError."""
    compiler, _, _ = _host_signature().partition("\n")
    flags = (*CFLAGS, *target_flags(), *extra_flags)
    key = hashlib.sha256(
        "\0".join((full_source, " ".join(flags), _host_signature())).encode()
    ).hexdigest()[:20]
    directory = cache_dir()
    path = directory / f"{name}-{key}.so"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            src = Path(tmp) / f"{name}.c"
            src.write_text(full_source)
            out = Path(tmp) / f"{name}.so"
            result = subprocess.run(
                [compiler, *flags, str(src), "-o", str(out)], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                raise NativeBuildError(
                    f"building native kernels {name!r} with {compiler!r} failed:\n{result.stderr}"
                )
            os.replace(out, path)
    return path


@functools.cache
def _pool_library() -> ctypes.CDLL:
    """The parallel loop, loaded with RTLD_GLOBAL so that every kernel library links to it."""
    return ctypes.CDLL(str(_build("pool", _pool.SOURCE, ("-fopenmp",))), mode=ctypes.RTLD_GLOBAL)


@functools.cache
def load_library(name: str, source: str) -> ctypes.CDLL:
    """Compile `PRELUDE + source` (once per host) and load it; raises NativeBuildError."""
    _pool_library()
    return ctypes.CDLL(str(_build(name, PRELUDE + source)))


@functools.cache
def native_available() -> bool:
    """Whether the C kernels can be built and loaded on this host."""
    try:
        load_library("probe", "")
    except (NativeBuildError, OSError):
        return False
    return True


@functools.cache
def vector_width() -> int:
    """Floats per SIMD register in the compiled kernels (16 with AVX-512, else 8)."""
    return int(load_library("probe", "").sparse_rt_vector_width())


def declare(library: ctypes.CDLL, name: str, argtypes: list) -> ctypes._CFuncPtr:
    """A C function of `library` with its argument types set (returns void)."""
    function = getattr(library, name)
    function.argtypes = argtypes
    function.restype = None
    return function
