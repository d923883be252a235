"""C kernel for N:M linear layers at batch 1, reading the int8 in-group indices directly.

`nm_gemv`: row o is a gather dot product over its kept values; the input index of
kept value p is (p / n) * m + indices[o, p]. With VL % n == 0 a SIMD register of
kept values covers VL / n whole groups, so the index vector is a fixed pattern
((lane / n) * m), advanced by (VL / n) * m per register, plus the widened int8
indices: 5 bytes per kept value (value + index) stream from memory.

x must be zero-padded to groups * m. Batched N:M goes through the CSR kernels
(`_csr_native.csr_gemm`) on absolute column indices.
"""

from __future__ import annotations

import ctypes
import functools

from sparse_rt.kernels.cpu._native import declare, load_library

SOURCE = r"""
struct nm_job {
    const int64_t* task_rows;
    const float* values;
    const int8_t* indices;
    const float *bias, *x;
    float* y;
    int64_t kept, n, m;
};

static void _nm_gemv_task(void* context, int64_t t, int worker) {
    const struct nm_job* job = (const struct nm_job*)context;
    int64_t kept = job->kept;
    int32_t pattern[VL];
    for (int l = 0; l < VL; l++) pattern[l] = (int32_t)((l / job->n) * job->m);
    const int32_t step = (int32_t)((VL / job->n) * job->m);
    vi start = vi_load_i32(pattern), advance = vi_set1(step), advance2 = vi_set1(2 * step);
    for (int64_t r = job->task_rows[t]; r < job->task_rows[t + 1]; r++) {
        const float* v = job->values + r * kept;
        const int8_t* ix = job->indices + r * kept;
        const float* x = job->x;
        vi base0 = start, base1 = vi_add(start, advance);
        vf acc0 = vzero(), acc1 = vzero();
        int64_t p = 0;
        for (; p + 2 * VL <= kept; p += 2 * VL) {
            acc0 = vfma(vload(v + p), vgather(x, vi_add(base0, vi_load_i8(ix + p))), acc0);
            acc1 = vfma(vload(v + p + VL), vgather(x, vi_add(base1, vi_load_i8(ix + p + VL))), acc1);
            base0 = vi_add(base0, advance2);
            base1 = vi_add(base1, advance2);
        }
        for (; p < kept; p += VL) {
            int count = kept - p < VL ? (int)(kept - p) : VL;
            acc0 = vfma(vload_n(v + p, count), vgather_n(x, vi_add(base0, vi_load_i8_n(ix + p, count)), count),
                        acc0);
            base0 = vi_add(base0, advance);
        }
        job->y[r] = vsum(vadd(acc0, acc1)) + (job->bias ? job->bias[r] : 0.0f);
    }
}

/* y[o] = values[o, :] . x[(p / n) * m + indices[o, p]] + bias[o] for the rows of each task.
   Requires VL % n == 0; kept = groups * n values per row; x has groups * m entries. */
void nm_gemv(int num_threads, int64_t tasks, const int64_t* task_rows, const float* values,
             const int8_t* indices, int64_t kept, int64_t n, int64_t m, const float* bias,
             const float* x, float* y) {
    struct nm_job job = {task_rows, values, indices, bias, x, y, kept, n, m};
    sr_parallel_for(num_threads, tasks, _nm_gemv_task, &job);
}
"""

_P = ctypes.c_void_p
_I = ctypes.c_int64


@functools.cache
def nm_gemv():
    """`nm_gemv`: (threads, tasks, task_rows, values, indices, kept, n, m, bias or None,
    x padded to groups * m, y)."""
    library = load_library("nm", SOURCE)
    return declare(library, "nm_gemv", [ctypes.c_int, _I, _P, _P, _P, _I, _I, _I, _P, _P, _P])
