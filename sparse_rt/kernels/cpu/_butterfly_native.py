"""C kernel for butterfly linear layers: all stages per input row in one call.

The first S = log2(block) stages (block = min(VL, n)) never mix entries across
aligned blocks of `block` entries, so they are folded at bind time into one dense
block x block matrix per block, stored column by column: fused[b, j, :] is column
j of block b's matrix. The remaining stages (stride h >= block) run on SIMD
registers with the twiddles repacked into planes: stages[s, q, p] = twiddles[S + s,
p, q // 2, q % 2] (q = 0..3: a, b, c, d of the 2x2).

`butterfly_rows`: every input row is zero-padded to n in a per-thread buffer,
mixed by the fused blocks, then by the remaining stages in place; the first `out`
entries (+ bias) are its output. Rows are split into tasks of `rows_per_task`
run through `_pool.sr_parallel_for`.
"""

from __future__ import annotations

import ctypes
import functools

from sparse_rt.kernels.cpu._native import declare, load_library

SOURCE = r"""
struct butterfly_job {
    int64_t rows, rows_per_task, n, block, later_stages, in, out;
    const float *fused, *stages, *bias, *x;
    float *y, *scratch;
};

static void _butterfly_task(void* context, int64_t t, int worker) {
    const struct butterfly_job* job = (const struct butterfly_job*)context;
    int64_t n = job->n, block = job->block, half = n / 2, in = job->in, out = job->out;
    float* w = job->scratch + worker * 2 * n;
    float* z = w + n;
    int64_t r1 = (t + 1) * job->rows_per_task < job->rows ? (t + 1) * job->rows_per_task : job->rows;
    for (int64_t row = t * job->rows_per_task; row < r1; row++) {
        memcpy(w, job->x + row * in, (size_t)in * sizeof(float));
        memset(w + in, 0, (size_t)(n - in) * sizeof(float));
        /* z_b = M_b w_b: column j of M_b scaled by w[b * block + j] */
        int width = (int)block;
        for (int64_t b0 = 0; b0 < n; b0 += block) {
            const float* columns = job->fused + b0 * block;
            vf acc = vzero();
            for (int64_t j = 0; j < block; j++)
                acc = vfma(vset1(w[b0 + j]), vload_n(columns + j * block, width), acc);
            vstore_n(z + b0, acc, width);
        }
        int64_t h = block;
        for (int64_t s = 0; s < job->later_stages; s++, h *= 2) {
            const float* a = job->stages + s * 4 * half;
            const float* bb = a + half;
            const float* c = bb + half;
            const float* d = c + half;
            for (int64_t i0 = 0; i0 < n; i0 += 2 * h) {
                int64_t p0 = i0 / 2;
                for (int64_t u = 0; u < h; u += VL) {
                    vf x0 = vload(z + i0 + u), x1 = vload(z + i0 + h + u);
                    int64_t p = p0 + u;
                    vstore(z + i0 + u, vfma(vload(a + p), x0, vmul(vload(bb + p), x1)));
                    vstore(z + i0 + h + u, vfma(vload(c + p), x0, vmul(vload(d + p), x1)));
                }
            }
        }
        float* yrow = job->y + row * out;
        for (int64_t o = 0; o < out; o++) yrow[o] = z[o] + (job->bias ? job->bias[o] : 0.0f);
    }
}

void butterfly_rows(int num_threads, int64_t rows, int64_t rows_per_task, int64_t n,
                    int64_t block, const float* fused, int64_t later_stages,
                    const float* stages, const float* bias, int64_t in, int64_t out,
                    const float* x, float* y) {
    int workers = num_threads > 1 ? num_threads : 1;
    float* scratch = (float*)malloc((size_t)(2 * n * workers) * sizeof(float));
    struct butterfly_job job = {rows, rows_per_task, n, block, later_stages, in, out,
                                fused, stages, bias, x, y, scratch};
    sr_parallel_for(workers, (rows + rows_per_task - 1) / rows_per_task, _butterfly_task, &job);
    free(scratch);
}
"""

_P = ctypes.c_void_p
_I = ctypes.c_int64


@functools.cache
def butterfly_rows():
    """`butterfly_rows`: (threads, rows, rows_per_task, n, block, fused, later_stages, stages,
    bias or None, in, out, x, y)."""
    library = load_library("butterfly", SOURCE)
    return declare(library, "butterfly_rows", [ctypes.c_int, _I, _I, _I, _I, _P, _I, _P, _P, _I, _I, _P, _P])
