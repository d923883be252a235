"""C kernel for permuted-block linear layers: all layers per input row in one call.

Each layer's 2x2 blocks are repacked at bind time into two planes of n entries,
diagonal[l, 2p] = blocks[l, p, 0, 0], diagonal[l, 2p + 1] = blocks[l, p, 1, 1],
cross[l, 2p] = blocks[l, p, 0, 1], cross[l, 2p + 1] = blocks[l, p, 1, 0], so
one layer on a SIMD register of VL entries is

    z = gather(x, permutation[k : k + VL]);  out = diagonal * z + cross * swap_pairs(z)

`permuted_rows`: every input row is zero-padded to n in a per-thread buffer and
goes through the layers between two buffers; the first `out` entries (+ bias) are
its output. Rows are split into tasks of `rows_per_task` run through `_pool.sr_parallel_for`.
"""

from __future__ import annotations

import ctypes
import functools

from sparse_rt.kernels.cpu._native import declare, load_library

SOURCE = r"""
struct permuted_job {
    int64_t rows, rows_per_task, n, layers, in, out;
    const int32_t* permutations;
    const float *diagonal, *cross, *bias, *x;
    float *y, *scratch;
};

static void _permuted_task(void* context, int64_t t, int worker) {
    const struct permuted_job* job = (const struct permuted_job*)context;
    int64_t n = job->n, in = job->in, out = job->out;
    float* w = job->scratch + worker * 2 * n;
    float* z = w + n;
    int64_t r1 = (t + 1) * job->rows_per_task < job->rows ? (t + 1) * job->rows_per_task : job->rows;
    for (int64_t row = t * job->rows_per_task; row < r1; row++) {
        memcpy(w, job->x + row * in, (size_t)in * sizeof(float));
        memset(w + in, 0, (size_t)(n - in) * sizeof(float));
        float* src = w;
        float* dst = z;
        for (int64_t l = 0; l < job->layers; l++) {
            const int32_t* perm = job->permutations + l * n;
            const float* dg = job->diagonal + l * n;
            const float* cr = job->cross + l * n;
            int64_t k = 0;
            for (; k + VL <= n; k += VL) {
                vf g = vgather(src, vi_load_i32(perm + k));
                vstore(dst + k, vfma(vload(dg + k), g, vmul(vload(cr + k), vswap_pairs(g))));
            }
            if (k < n) {
                int count = (int)(n - k);
                vf g = vgather_n(src, vi_load_i32_n(perm + k, count), count);
                vstore_n(dst + k, vfma(vload_n(dg + k, count), g, vmul(vload_n(cr + k, count), vswap_pairs(g))),
                         count);
            }
            float* swap = src;
            src = dst;
            dst = swap;
        }
        float* yrow = job->y + row * out;
        for (int64_t o = 0; o < out; o++) yrow[o] = src[o] + (job->bias ? job->bias[o] : 0.0f);
    }
}

void permuted_rows(int num_threads, int64_t rows, int64_t rows_per_task, int64_t n,
                   int64_t layers, const int32_t* permutations, const float* diagonal,
                   const float* cross, const float* bias, int64_t in, int64_t out,
                   const float* x, float* y) {
    int workers = num_threads > 1 ? num_threads : 1;
    float* scratch = (float*)malloc((size_t)(2 * n * workers) * sizeof(float));
    struct permuted_job job = {rows, rows_per_task, n, layers, in, out, permutations, diagonal,
                               cross, bias, x, y, scratch};
    sr_parallel_for(workers, (rows + rows_per_task - 1) / rows_per_task, _permuted_task, &job);
    free(scratch);
}
"""

_P = ctypes.c_void_p
_I = ctypes.c_int64


@functools.cache
def permuted_rows():
    """`permuted_rows`: (threads, rows, rows_per_task, n, layers, permutations int32 [L, n],
    diagonal [L, n], cross [L, n], bias or None, in, out, x, y)."""
    library = load_library("permuted", SOURCE)
    return declare(library, "permuted_rows", [ctypes.c_int, _I, _I, _I, _I, _P, _P, _P, _P, _I, _I, _P, _P])
