"""@triton.jit code of the butterfly linear kernels (launched from sparse_rt.kernels.triton.butterfly).

Twiddles come planar: [L, 4, n/2], entry e = 2 * row + col of the 2x2 twiddle of
pair p at [s, e, p], so each entry of a stage is one contiguous vector.
"""

import triton
import triton.language as tl


@triton.jit
def _butterfly_fused_kernel(
    x_ptr,  # [batch, in] read through (stride_xm, stride_xk)
    twiddles_ptr,  # [L, 4, n/2] planar
    bias_ptr,  # [out]
    y_ptr,  # [batch, out] written through (stride_ym, stride_yn)
    batch,
    in_features,
    out_features,
    stride_xm,
    stride_xk,
    stride_ym,
    stride_yn,
    N: tl.constexpr,
    LOG_N: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Program i: BLOCK_M rows of x, zero-padded to N, through all LOG_N stages in registers."""
    HALF: tl.constexpr = N // 2
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, N)
    offs_p = tl.arange(0, HALF)
    mask_m = offs_m < batch
    # v: [BLOCK_M, N]
    v = tl.load(
        x_ptr + offs_m[:, None] * stride_xm + offs_n[None, :] * stride_xk,
        mask=mask_m[:, None] & (offs_n < in_features)[None, :],
        other=0.0,
    ).to(tl.float32)
    for s in tl.static_range(LOG_N):
        # stage s pairs g * 2**(s+1) + t with g * 2**(s+1) + t + 2**s, t < 2**s (pair p = g * 2**s + t);
        # shapes are written out inline: a name assigned in the loop would stop being a constexpr
        stage_ptr = twiddles_ptr + s * 4 * HALF + offs_p
        # t..: [N // 2**(s+1), 2**s]
        t00 = tl.reshape(tl.load(stage_ptr).to(tl.float32), [N // 2 ** (s + 1), 2**s])
        t01 = tl.reshape(tl.load(stage_ptr + HALF).to(tl.float32), [N // 2 ** (s + 1), 2**s])
        t10 = tl.reshape(tl.load(stage_ptr + 2 * HALF).to(tl.float32), [N // 2 ** (s + 1), 2**s])
        t11 = tl.reshape(tl.load(stage_ptr + 3 * HALF).to(tl.float32), [N // 2 ** (s + 1), 2**s])
        # [BLOCK_M, N] -> [BLOCK_M, N // 2**(s+1), 2, 2**s] -> [..., 2**s, 2] -> 2 x [BLOCK_M, N // 2**(s+1), 2**s]
        pairs = tl.reshape(v, [BLOCK_M, N // 2 ** (s + 1), 2, 2**s])
        upper, lower = tl.split(tl.permute(pairs, (0, 1, 3, 2)))
        new_upper = t00[None, :, :] * upper + t01[None, :, :] * lower
        new_lower = t10[None, :, :] * upper + t11[None, :, :] * lower
        v = tl.reshape(tl.permute(tl.join(new_upper, new_lower), (0, 1, 3, 2)), [BLOCK_M, N])
    mask_out = offs_n < out_features
    if HAS_BIAS:
        v += tl.load(bias_ptr + offs_n, mask=mask_out, other=0.0).to(tl.float32)[None, :]
    tl.store(
        y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
        v.to(y_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_out[None, :],
    )


@triton.jit
def _butterfly_stage_kernel(
    src_ptr,  # [batch, src_cols] read through (stride_sm, stride_sk); columns past src_cols read as 0
    twiddles_ptr,  # [4, n/2] planar, this stage's
    bias_ptr,  # [dst_cols]
    dst_ptr,  # [batch, dst_cols] written through (stride_dm, stride_dk); may alias src
    batch,
    src_cols,
    dst_cols,
    half,
    stride,
    stride_sm,
    stride_sk,
    stride_dm,
    stride_dk,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Program (i, j): pairs i*BLOCK_P.. of one stage (pair stride `stride`) for rows j*BLOCK_M..

    Each pair's two entries are read and written by this program alone, so src and
    dst may be the same buffer.
    """
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_p = offs_p < half
    mask_m = offs_m < batch
    first = offs_p // stride * (2 * stride) + offs_p % stride
    second = first + stride
    # upper, lower: [BLOCK_M, BLOCK_P]
    upper = tl.load(
        src_ptr + offs_m[:, None] * stride_sm + first[None, :] * stride_sk,
        mask=mask_m[:, None] & (mask_p & (first < src_cols))[None, :],
        other=0.0,
    ).to(tl.float32)
    lower = tl.load(
        src_ptr + offs_m[:, None] * stride_sm + second[None, :] * stride_sk,
        mask=mask_m[:, None] & (mask_p & (second < src_cols))[None, :],
        other=0.0,
    ).to(tl.float32)
    t00 = tl.load(twiddles_ptr + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    t01 = tl.load(twiddles_ptr + half + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    t10 = tl.load(twiddles_ptr + 2 * half + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    t11 = tl.load(twiddles_ptr + 3 * half + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    new_upper = t00 * upper + t01 * lower
    new_lower = t10 * upper + t11 * lower
    mask_first = mask_p & (first < dst_cols)
    mask_second = mask_p & (second < dst_cols)
    if HAS_BIAS:
        new_upper += tl.load(bias_ptr + first, mask=mask_first, other=0.0).to(tl.float32)[None, :]
        new_lower += tl.load(bias_ptr + second, mask=mask_second, other=0.0).to(tl.float32)[None, :]
    dst_rows = dst_ptr + offs_m[:, None] * stride_dm
    tl.store(
        dst_rows + first[None, :] * stride_dk,
        new_upper.to(dst_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_first[None, :],
    )
    tl.store(
        dst_rows + second[None, :] * stride_dk,
        new_lower.to(dst_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_second[None, :],
    )
