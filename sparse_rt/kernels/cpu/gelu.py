"""GELU (erf form) on the CPU for small tensors: y = 0.5 x (1 + erf(x / sqrt 2)), float32.

Between the linear layers of an MLP at batch 1, torch's GELU took 25-30 us on a
[1, 3072] row (9 us alone), a seventh of the layers' time; this kernel takes 3.3 us
alone. It computes erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7) with
its own exp, and for x < 0 the product 1 + erf(x / sqrt 2) computed as the series'
small term itself, without cancellation. It is written with GCC vector extensions
(VL lanes), which the compiler lowers to the host's SIMD, and runs on one thread.
Up to `NATIVE_LIMIT` elements only: on larger tensors torch's kernel is faster.
`GELU_SOURCE` (`vgelu`) is also the epilogue of the dense and CSR kernels, applied
to their outputs while still in registers.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from sparse_rt.kernels.cpu._launch import pointer
from sparse_rt.kernels.cpu._native import declare, load_library, native_available

# Up to this many elements the kernel beats torch's GELU; above, torch's (Sleef erf,
# over the thread pool) is faster: 69 us against 92 us on [128, 3072] with 2 threads.
NATIVE_LIMIT = 1 << 16

GELU_SOURCE = r"""
/* GCC vector extensions as wide as the prelude's vf (VL lanes), so the kernels can cast
   between the two: lowered to AVX-512, AVX2 or SSE by the compiler. */
typedef float gf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t gi __attribute__((vector_size(VL * sizeof(float))));
#define GL VL

/* exp(x) for x in [-82, 0]: 2^n * p(r), r = x - n ln 2 (Cody-Waite), p of degree 6. n is
   rounded by adding 1.5 * 2^23, whose sum keeps n + 2^22 in its low mantissa bits: shifted
   by 23 with the bias added, those bits are 2^n's exponent field. */
static inline gf _exp_nonpositive(gf x) {
    const gf magic = x - x + 12582912.0f;
    gf shifted = x * 1.44269504088896341f + magic;
    gf n = shifted - magic;
    gf r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    gf p = 1.3888889e-3f * r + 8.3333333e-3f;
    p = p * r + 4.1666667e-2f;
    p = p * r + 1.6666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * (gf)(((gi)shifted + 127) << 23);
}

/* 1 / d for d >= 1: the hardware estimate and one Newton step where there is one
   (relative error 2^-28 with AVX-512), else a division. */
static inline gf _reciprocal(gf d) {
#if VL == 16 && defined(__AVX512F__)
    gf r = (gf)_mm512_rcp14_ps((__m512)d);
    return r * (2.0f - d * r);
#else
    return 1.0f / d;
#endif
}

/* GELU of GL lanes: q = erfc(|x| / sqrt 2) by A&S 7.1.26 (0 past |x| / sqrt 2 = 9, where
   erfc < 5e-37), then 0.5 x (1 + s - s q) with s the sign of x: 0.5 x q for x < 0, without
   the cancellation of 1 + erf. */
static inline gf _gelu(gf v) {
    gi sign = (gi)v & (int32_t)0x80000000;
    gf a = (gf)((gi)v ^ sign) * 0.70710678118654752f;
    gi big = a > 9.0f;
    a = (gf)(((gi)a & ~big) | ((gi)(a - a + 9.0f) & big));
    gf t = _reciprocal(a * 0.3275911f + 1.0f);
    gf poly = (((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f;
    gf q = (gf)((gi)(poly * t * _exp_nonpositive(-a * a)) & ~big);
    gf s = (gf)((gi)(v - v + 1.0f) | sign);
    return 0.5f * v * ((1.0f + s) - s * q);
}

/* GELU of one prelude register, for the kernels' epilogues. */
static inline vf vgelu(vf v) { return (vf)_gelu((gf)v); }
"""

SOURCE = GELU_SOURCE + r"""
static void _gelu_range(const float* x, float* y, int64_t n) {
    int64_t i = 0;
    for (; i + GL <= n; i += GL) {
        gf v;
        memcpy(&v, x + i, sizeof v);
        v = _gelu(v);
        memcpy(y + i, &v, sizeof v);
    }
    if (i < n) {
        gf v = {0};
        memcpy(&v, x + i, (size_t)(n - i) * sizeof(float));
        v = _gelu(v);
        memcpy(y + i, &v, (size_t)(n - i) * sizeof(float));
    }
}

void gelu_erf(int64_t n, const float* x, float* y) { _gelu_range(x, y, n); }
"""


@functools.cache
def gelu_library():
    """The compiled `gelu_erf(n, x, y)`."""
    library = load_library("gelu", SOURCE)
    return declare(library, "gelu_erf", [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p])


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """GELU (erf form) of any tensor: this kernel for float32 cpu tensors up to NATIVE_LIMIT
    elements where the C kernels build, torch's otherwise."""
    if x.dtype == torch.float32 and x.device.type == "cpu" and x.numel() <= NATIVE_LIMIT and native_available():
        return gelu(x)
    return torch.nn.functional.gelu(x)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """x: float32 cpu tensor -> GELU(x), a new contiguous tensor of x's shape (one thread)."""
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel():
        gelu_library()(x.numel(), pointer(x), pointer(y))
    return y
