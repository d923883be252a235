"""Attention on the CPU: softmax(q kT * scale + mask) v, float32, a task per head and block of
at most QUERY_ROWS_MAX queries (blocks small enough that every thread gets two tasks).

A task packs its head's kT and v into the panels of the dense kernel's register tiles
(`_dense_native.TILE_SOURCE`), computes the scores of all its queries into a per-thread
buffer (8 queries x one panel of keys a tile), scales them, adds the mask and takes each
row's softmax in place (the exp of `GELU_SOURCE`), then multiplies the weights by v with
the same tiles. A query row with a NaN score, or with every key at -inf, gets NaN weights,
as torch's softmax gives.

BERT-base's 12 heads of 128 tokens (64 wide), 2 AMD Zen 4 threads, batch 1: 0.31 against
torch's fused kernel's 0.47 ms (`benchmarks/results/attention.md`).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from sparse_rt.kernels.cpu._dense_native import TILE_SOURCE
from sparse_rt.kernels.cpu._launch import pointer, thread_scratch, threads
from sparse_rt.kernels.cpu._native import declare, load_library, native_available

# Above this many floats of scratch a thread (a task's scores, its head's packed kT and v:
# 16 MiB), the caller keeps torch's fused kernel, which never holds a head's whole score matrix.
SCRATCH_FLOATS_MAX = 4 * 1024 * 1024
# Queries of one head a task takes at most (its scores stay in L2: 256 x 512 keys is 512 KiB)
QUERY_ROWS_MAX = 256

SOURCE = TILE_SOURCE + r"""
#include <math.h>
/* The operands q [..., L, E], kT [..., E, S], v [..., S, Ev], out [..., L, Ev] and the mask
   [..., L, S] (in this order: operand 0..4) have leading dims layout[0..2] (heads in all);
   head (i, j, k) of operand n starts at i * layout[3 + 3n] + j * layout[4 + 3n] + k *
   layout[5 + 3n] floats from its pointer, its rows are layout[18 + n] apart (the mask's 0:
   one row for every query) and a row's elements adjacent, except kT's when layout[23], the
   stride of its columns, is not 1 (then its elements along E are adjacent). */
struct attention_job {
    const float *q, *k_t, *v, *mask;
    float *out, *scratch;             /* scratch [workers, per_worker] */
    const int64_t* layout;
    int64_t per_worker, L, S, E, Ev, Sp, Evp;  /* Sp, Evp: S and Ev rounded up to NR */
    int64_t rows, blocks;             /* a task: `rows` queries of one head, blocks = ceil(L / rows) a head */
    float scale;
};

static const float _attention_zeros[NR] __attribute__((aligned(64))) = {0};

/* panels[p, k, 0:NR] = src[k, p * NR : p * NR + NR] (zeros past cols): src [rows, cols], its
   rows ld apart, its columns adjacent */
static void _attention_pack(const float* src, int64_t ld, int64_t rows, int64_t cols, int64_t padded,
                            float* panels) {
    for (int64_t p = 0; p < padded / NR; p++) {
        int64_t c0 = p * NR, n = cols - c0 < NR ? cols - c0 : NR;
        for (int64_t k = 0; k < rows; k++) {
            float* dst = panels + (p * rows + k) * NR;
            memcpy(dst, src + k * ld + c0, n * sizeof(float));
            for (int64_t j = n; j < NR; j++) dst[j] = 0.0f;
        }
    }
}

/* row [S] of scores -> softmax(row * scale + mask) in place, GL lanes at a time */
static void _attention_softmax(float* row, const float* mask, int64_t S, float scale) {
    const gf zero = {0}, floor = zero - 80.0f;
    gf tops = zero - INFINITY;
    gi nans = (gi)zero;
    int64_t j = 0;
    for (; j + GL <= S; j += GL) {
        gf x, m = zero;
        memcpy(&x, row + j, sizeof x);
        if (mask) memcpy(&m, mask + j, sizeof m);
        x = x * scale + m;
        memcpy(row + j, &x, sizeof x);
        nans |= x != x;
        gi above = x > tops;
        tops = (gf)(((gi)x & above) | ((gi)tops & ~above));
    }
    float top = -INFINITY;
    int nan = 0;
    for (int l = 0; l < GL; l++) {
        top = tops[l] > top ? tops[l] : top;
        nan |= nans[l] != 0;
    }
    for (; j < S; j++) {
        float x = row[j] * scale + (mask ? mask[j] : 0.0f);
        row[j] = x;
        nan |= x != x;
        top = x > top ? x : top;
    }
    if (nan || top == -INFINITY) {
        for (j = 0; j < S; j++) row[j] = NAN;
        return;
    }
    /* exp(s - top) for s - top >= -80, else 0 (below 1.8e-35 of the row's largest weight) */
    gf sums = zero;
    for (j = 0; j + GL <= S; j += GL) {
        gf x;
        memcpy(&x, row + j, sizeof x);
        x = x - top;
        gi tiny = x < floor;
        x = (gf)(((gi)x & ~tiny) | ((gi)floor & tiny));
        gf p = (gf)((gi)_exp_nonpositive(x) & ~tiny);
        memcpy(row + j, &p, sizeof p);
        sums += p;
    }
    float sum = 0.0f;
    for (int l = 0; l < GL; l++) sum += sums[l];
    for (int64_t k = j; k < S; k++) {
        float x = row[k] - top;
        row[k] = x < -80.0f ? 0.0f : expf(x);
        sum += row[k];
    }
    float inverse = 1.0f / sum;
    for (j = 0; j + GL <= S; j += GL) {
        gf p;
        memcpy(&p, row + j, sizeof p);
        p = p * inverse;
        memcpy(row + j, &p, sizeof p);
    }
    for (; j < S; j++) row[j] *= inverse;
}

/* y [rows, cols] (rows ldy apart) = x [rows, kc] (rows ldx apart) @ the panels [cols / NR
   rounded up, kc, NR], 8 rows x one panel a register tile */
static void _attention_product(int64_t rows, int64_t kc, int64_t cols, const float* panels, const float* x,
                               int64_t ldx, float* y, int64_t ldy) {
    for (int64_t r = 0; r < rows; r += 8) {
        int m = rows - r < 8 ? (int)(rows - r) : 8;
        for (int64_t p = 0; p * NR < cols; p++) {
            int ncols = cols - p * NR < NR ? (int)(cols - p * NR) : NR;
            _dense_tile(m, kc, panels + p * kc * NR, x + r * ldx, ldx, y + r * ldy + p * NR, ldy, ncols,
                        _attention_zeros, NULL);
        }
    }
}

static void _attention_task(void* context, int64_t task, int worker) {
    const struct attention_job* job = (const struct attention_job*)context;
    int64_t h = task / job->blocks, r0 = task % job->blocks * job->rows;
    int64_t L = job->L - r0 < job->rows ? job->L - r0 : job->rows, S = job->S, E = job->E, Ev = job->Ev, Sp = job->Sp;
    float* scores = job->scratch + worker * job->per_worker;  /* [rows, Sp] */
    float* k_panels = scores + job->rows * Sp;                  /* [Sp / NR, E, NR] */
    float* v_panels = k_panels + Sp * E;                        /* [Evp / NR, S, NR] */
    const int64_t *layout = job->layout, *ld = layout + 18;
    int64_t at[5], i = h / (layout[1] * layout[2]), j = h / layout[2] % layout[1], k = h % layout[2];
    for (int n = 0; n < 5; n++) at[n] = i * layout[3 + 3 * n] + j * layout[4 + 3 * n] + k * layout[5 + 3 * n];
    const float* q = job->q + at[0] + r0 * ld[0];
    if (ld[5] == 1) _attention_pack(job->k_t + at[1], ld[1], E, S, Sp, k_panels);
    else _pack_panels_transposed(job->k_t + at[1], ld[5], E, S, Sp, k_panels);  /* kT read as k */
    _attention_pack(job->v + at[2], ld[2], S, Ev, job->Evp, v_panels);
    _attention_product(L, E, Sp, k_panels, q, ld[0], scores, Sp);
    const float* mask = job->mask ? job->mask + at[4] + r0 * ld[4] : NULL;
    for (int64_t row = 0; row < L; row++)
        _attention_softmax(scores + row * Sp, mask ? mask + row * ld[4] : NULL, S, job->scale);
    _attention_product(L, S, Ev, v_panels, scores, Sp, job->out + at[3] + r0 * ld[3], ld[3]);
}

/* rows: the queries of a task */
int64_t attention_scratch_floats(int64_t rows, int64_t S, int64_t E, int64_t Ev) {
    int64_t Sp = (S + NR - 1) / NR * NR, Evp = (Ev + NR - 1) / NR * NR;
    return rows * Sp + Sp * E + Evp * S;
}

void attention(int num_threads, int64_t heads, int64_t L, int64_t S, int64_t E, int64_t Ev, int64_t rows,
               const float* q, const float* k_t, const float* v, const float* mask, float* out,
               const int64_t* layout, float scale, float* scratch) {
    int64_t blocks = (L + rows - 1) / rows;
    struct attention_job job = {q, k_t, v, mask, out, scratch, layout,
                                attention_scratch_floats(rows, S, E, Ev), L, S, E, Ev,
                                (S + NR - 1) / NR * NR, (Ev + NR - 1) / NR * NR, rows, blocks, scale};
    sr_parallel_for(num_threads, heads * blocks, _attention_task, &job);
}
"""

_P = ctypes.c_void_p
_I = ctypes.c_int64


@functools.cache
def _library():
    return load_library("attention", SOURCE)


@functools.cache
def _scratch_floats():
    function = declare(_library(), "attention_scratch_floats", [_I, _I, _I, _I])
    function.restype = _I
    return function


@functools.cache
def _attention():
    return declare(_library(), "attention",
                   [ctypes.c_int, _I, _I, _I, _I, _I, _I, _P, _P, _P, _P, _P, ctypes.c_void_p, ctypes.c_float, _P])


def _query_rows(heads: int, L: int, num_threads: int) -> int:
    """Queries a task takes: at most QUERY_ROWS_MAX, and few enough that the tasks give every
    thread two (SegFormer's first stage has one head of 16384 queries); a multiple of 8 (the
    tiles' rows) unless a head's whole L."""
    blocks = max(-(-2 * num_threads // heads), -(-L // QUERY_ROWS_MAX))
    rows = -(-L // blocks)
    return L if blocks == 1 else -(-rows // 8) * 8


def native_attention_applies(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether `native_attention` takes these: float32 CPU tensors, q [..., L, E], kT [..., E, S],
    v [..., S, Ev] with the same one to three leading dims, no empty dim, a float32 mask broadcastable to
    [..., L, S] or none, and a task's scratch within SCRATCH_FLOATS_MAX."""
    tensors = (q, k_t, v) if mask is None else (q, k_t, v, mask)
    if not native_available() or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if not 3 <= q.dim() <= 5 or not (q.shape[:-2] == k_t.shape[:-2] == v.shape[:-2]) or 0 in q.shape or 0 in v.shape:
        return False
    (L, E), (E2, S), (S2, Ev) = q.shape[-2:], k_t.shape[-2:], v.shape[-2:]
    if E2 != E or S2 != S or 0 in (S, Ev):
        return False
    if mask is not None:
        try:
            torch.broadcast_to(mask, (*q.shape[:-1], S))
        except RuntimeError:
            return False
    return int(_scratch_floats()(_query_rows(q.shape[:-2].numel(), L, threads()), S, E, Ev)) <= SCRATCH_FLOATS_MAX


def _unit_stride(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    return tensor if tensor.stride(dim) == 1 else tensor.contiguous()


def native_attention(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """softmax(q kT * scale + mask) v [..., L, Ev]; see `native_attention_applies` for the inputs.
    The operands are read in place where their rows have adjacent elements (kT: along E or S).
    With two leading dims (batch, heads) the result is a view of [batch, L, heads, Ev] memory:
    the usual transpose back to tokens and merge of the heads then moves nothing."""
    lead, (L, E), S, Ev = q.shape[:-2], q.shape[-2:], k_t.shape[-1], v.shape[-1]
    heads = lead.numel()
    rows = _query_rows(heads, L, threads())
    num_threads = min(threads(), heads * -(-L // rows))
    q, v = _unit_stride(q, -1), _unit_stride(v, -1)
    if k_t.stride(-2) != 1 and k_t.stride(-1) != 1:
        k_t = k_t.contiguous()
    if len(lead) == 2:
        out = torch.empty(lead[0], L, lead[1], Ev, dtype=torch.float32).transpose(1, 2)
    else:
        out = torch.empty(*lead, L, Ev, dtype=torch.float32)
    if mask is not None:
        mask = _unit_stride(mask.expand(*lead, L, S), -1)
    pad = 3 - len(lead)
    operands = (q, k_t, v, out, q if mask is None else mask)
    kt_rows, kt_columns = (k_t.stride(-2), 1) if k_t.stride(-1) == 1 else (1, k_t.stride(-1))
    layout = [1] * pad + list(lead)
    for tensor in operands:
        layout += [0] * pad + list(tensor.stride()[:-2])
    layout += [q.stride(-2), kt_rows, v.stride(-2), out.stride(-2), 0 if mask is None else mask.stride(-2), kt_columns]
    scratch = thread_scratch("attention", num_threads * int(_scratch_floats()(rows, S, E, Ev)))
    _attention()(num_threads, heads, L, S, E, Ev, rows, pointer(q), pointer(k_t), pointer(v), pointer(mask), pointer(out),
                 (ctypes.c_int64 * len(layout))(*layout), scale, pointer(scratch))
    return out
