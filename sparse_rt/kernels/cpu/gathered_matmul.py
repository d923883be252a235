"""A product of which only gathered columns are kept, on the CPU, float32:
y[b, m, j] = sum_k a[b, m, k] * b[b, k, index[b, m, j]], i.e. GatherElements(a @ b, index,
axis=-1), without computing the columns no index names.

DeBERTa's disentangled attention computes each head's query and key against all 2 x 256
relative positions, then keeps 128 of the 512 per token (GatherElements): at 128 tokens,
three quarters of the product are thrown away. Here a task takes one batch entry (a head),
packs its bT into the dense kernel's panels, and for each block of 8 rows of a multiplies
only the panels spanning the block's smallest to largest index (for DeBERTa's relative
positions, 135 of 512 columns), then copies the kept entries out. Indices count from the
end when negative, as GatherElements' do; one outside [-N, N) is an error.

DeBERTa-v3-base's 12 heads of 128 tokens x 512 positions, 2 Zen 4 threads: 0.35 against
1.17 ms for torch's matmul and gather.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from sparse_rt.kernels.cpu._dense_native import TILE_SOURCE
from sparse_rt.kernels.cpu._launch import pointer, thread_scratch, threads
from sparse_rt.kernels.cpu._native import declare, load_library, native_available

# Above this many floats of scratch a thread (bT packed, one block of products: 16 MiB), the
# caller keeps MatMul and GatherElements.
SCRATCH_FLOATS_MAX = 4 * 1024 * 1024

SOURCE = TILE_SOURCE + r"""
static const float _gathered_zeros[NR] __attribute__((aligned(64))) = {0};

struct gathered_job {
    const float *a, *bt;
    const int64_t* index;
    float *y, *scratch;      /* scratch [workers, per_worker] */
    int64_t m, k, n, j, np, per_worker;  /* np: n rounded up to NR */
    const int64_t* strides;  /* a [batch, m], bT [batch, n], index [batch, m, j]; a's and bT's rows adjacent along k */
    int* bad;                /* set when an index is outside [-n, n) */
};

/* Batch entry b: bT packed into panels; then for each block of up to 8 rows of a, the panels
   spanning the block's smallest to largest index multiplied by the tiles into the scratch,
   and each kept entry copied out. */
static void _gathered_task(void* context, int64_t b, int worker) {
    const struct gathered_job* job = (const struct gathered_job*)context;
    const int64_t* s = job->strides;
    int64_t m = job->m, k = job->k, n = job->n, cols = job->j;
    float* panels = job->scratch + worker * job->per_worker;  /* [np / NR, k, NR] */
    float* block = panels + job->np * k;                      /* [8, np] */
    const float* a = job->a + b * s[0];
    const int64_t* index = job->index + b * s[4];
    _pack_panels_transposed(job->bt + b * s[2], s[3], k, n, job->np, panels);
    for (int64_t r0 = 0; r0 < m; r0 += 8) {
        int rows = m - r0 < 8 ? (int)(m - r0) : 8;
        int64_t lo = n, hi = -1;
        for (int r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                int64_t at = index[(r0 + r) * s[5] + c * s[6]];
                at += at < 0 ? n : 0;
                lo = at < lo ? at : lo;
                hi = at > hi ? at : hi;
            }
        if (lo < 0 || hi >= n) {
            __atomic_store_n(job->bad, 1, __ATOMIC_RELAXED);
            return;
        }
        int64_t p0 = lo / NR, p1 = hi / NR, width = (p1 - p0 + 1) * NR;
        for (int64_t p = p0; p <= p1; p++) {
            int ncols = n - p * NR < NR ? (int)(n - p * NR) : NR;
            _dense_tile(rows, k, panels + p * k * NR, a + r0 * s[1], s[1], block + (p - p0) * NR, width, ncols,
                        _gathered_zeros, NULL);
        }
        float* y = job->y + (b * m + r0) * cols;
        for (int r = 0; r < rows; r++) {
            const int64_t* line = index + (r0 + r) * s[5];
            const float* scores = block + r * width - p0 * NR;
            for (int64_t c = 0; c < cols; c++) {
                int64_t at = line[c * s[6]];
                y[r * cols + c] = scores[at < 0 ? at + n : at];
            }
        }
    }
}

int64_t gathered_scratch_floats(int64_t k, int64_t n) {
    int64_t np = (n + NR - 1) / NR * NR;
    return np * k + 8 * np;
}

/* sizes: batch, m, k, n, j; strides: see gathered_job. Returns 1 when an index was out of range. */
int gathered_matmul(int num_threads, const int64_t* sizes, const int64_t* strides, const float* a, const float* bt,
                    const int64_t* index, float* y, float* scratch) {
    int bad = 0;
    int64_t n = sizes[3];
    struct gathered_job job = {a, bt, index, y, scratch, sizes[1], sizes[2], n, sizes[4], (n + NR - 1) / NR * NR,
                               gathered_scratch_floats(sizes[2], n), strides, &bad};
    sr_parallel_for(num_threads, sizes[0], _gathered_task, &job);
    return bad;
}
"""


@functools.cache
def _library():
    return load_library("gathered_matmul", SOURCE)


@functools.cache
def _scratch_floats():
    function = declare(_library(), "gathered_scratch_floats", [ctypes.c_int64, ctypes.c_int64])
    function.restype = ctypes.c_int64
    return function


@functools.cache
def _gathered_matmul():
    arrays = ctypes.POINTER(ctypes.c_int64)
    function = declare(_library(), "gathered_matmul", [ctypes.c_int, arrays, arrays] + [ctypes.c_void_p] * 5)
    function.restype = ctypes.c_int
    return function


def gathered_matmul_applies(a: torch.Tensor, b: torch.Tensor, index: torch.Tensor) -> bool:
    """Whether `gathered_matmul` takes these: float32 cpu a [..., M, K] and b [..., K, N] with the
    same leading dims, an int64 cpu index [..., M, J] with those leading dims too, K and N not
    empty, and a scratch within SCRATCH_FLOATS_MAX."""
    return (native_available() and a.device.type == b.device.type == index.device.type == "cpu"
            and a.dtype == b.dtype == torch.float32 and index.dtype == torch.int64
            and a.dim() == b.dim() == index.dim() >= 2 and a.shape[:-2] == b.shape[:-2] == index.shape[:-2]
            and a.shape[-1] == b.shape[-2] > 0 and b.shape[-1] > 0 and index.shape[-2] == a.shape[-2]
            and int(_scratch_floats()(a.shape[-1], b.shape[-1])) <= SCRATCH_FLOATS_MAX)


def gathered_matmul(a: torch.Tensor, b: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """GatherElements(a @ b, index, axis=-1) as a new contiguous [..., M, J] float32 tensor, for
    the operands `gathered_matmul_applies` takes. ValueError for an index outside [-N, N)."""
    lead, (m, k), (n, j) = a.shape[:-2], a.shape[-2:], (b.shape[-1], index.shape[-1])
    y = torch.empty(*lead, m, j, dtype=torch.float32)
    if y.numel() == 0:
        return y
    a = a.reshape(-1, m, k)
    bt = b.reshape(-1, k, n).transpose(1, 2)
    a = a if a.stride(2) == 1 else a.contiguous()
    bt = bt if bt.stride(2) == 1 else bt.contiguous()
    index = index.reshape(-1, m, j)
    num_threads = min(threads(), a.shape[0])
    scratch = thread_scratch("gathered_matmul", num_threads * int(_scratch_floats()(k, n)))
    sizes = (ctypes.c_int64 * 5)(a.shape[0], m, k, n, j)
    strides = (ctypes.c_int64 * 7)(*a.stride()[:2], *bt.stride()[:2], *index.stride())
    if _gathered_matmul()(num_threads, sizes, strides, pointer(a), pointer(bt), pointer(index), pointer(y),
                          pointer(scratch)):
        raise ValueError(f"GatherElements: expected indices in [-{n}, {n}) along the product's last axis, "
                         f"found one outside")
    return y


def gathered_matmul_torch(a: torch.Tensor, b: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The reference the kernel is tested against (any operands torch.matmul takes, an int64 index)."""
    product = torch.matmul(a, b)
    return torch.gather(product, -1, torch.where(index < 0, index + product.shape[-1], index))
