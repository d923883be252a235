"""@triton.jit code of the permuted-block linear kernels (launched from sparse_rt.kernels.triton.permuted).

Arrays come padded to a power-of-two width N >= n: permutations [L, N] (identity
past n), blocks planar [L, 4, N/2] (entry e = 2 * row + col of pair p's 2x2 block
at [l, e, p], zero past n/2), so each entry of a layer is one contiguous vector.
"""

import triton
import triton.language as tl


@triton.jit
def _permuted_fused_kernel(
    x_ptr,  # [batch, in] read through (stride_xm, stride_xk)
    permutations_ptr,  # [L, N]
    blocks_ptr,  # [L, 4, N/2] planar
    bias_ptr,  # [out]
    y_ptr,  # [batch, out] written through (stride_ym, stride_yn)
    batch,
    in_features,
    out_features,
    layers,
    stride_xm,
    stride_xk,
    stride_ym,
    stride_yn,
    N: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Program i: BLOCK_M rows of x, zero-padded to N, through all layers in registers
    (each layer a tl.gather by its permutation, then the 2x2 blocks on adjacent pairs)."""
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
    for layer in range(layers):
        permutation = tl.load(permutations_ptr + layer * N + offs_n).to(tl.int32)
        z = tl.gather(v, tl.broadcast_to(permutation[None, :], [BLOCK_M, N]), 1)
        # [BLOCK_M, N] -> [BLOCK_M, HALF, 2] -> 2 x [BLOCK_M, HALF]
        upper, lower = tl.split(tl.reshape(z, [BLOCK_M, HALF, 2]))
        layer_ptr = blocks_ptr + layer * 4 * HALF + offs_p
        b00 = tl.load(layer_ptr).to(tl.float32)[None, :]
        b01 = tl.load(layer_ptr + HALF).to(tl.float32)[None, :]
        b10 = tl.load(layer_ptr + 2 * HALF).to(tl.float32)[None, :]
        b11 = tl.load(layer_ptr + 3 * HALF).to(tl.float32)[None, :]
        v = tl.reshape(tl.join(b00 * upper + b01 * lower, b10 * upper + b11 * lower), [BLOCK_M, N])
    mask_out = offs_n < out_features
    if HAS_BIAS:
        v += tl.load(bias_ptr + offs_n, mask=mask_out, other=0.0).to(tl.float32)[None, :]
    tl.store(
        y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
        v.to(y_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_out[None, :],
    )


@triton.jit
def _permuted_layer_kernel(
    src_ptr,  # [batch, src_cols] read through (stride_sm, stride_sk); columns past src_cols read as 0
    permutation_ptr,  # [>= n] this layer's
    blocks_ptr,  # [4, stride_be] planar, this layer's
    bias_ptr,  # [dst_cols]
    dst_ptr,  # [batch, dst_cols] written through (stride_dm, stride_dk); must not alias src
    batch,
    src_cols,
    dst_cols,
    half,
    stride_be,
    stride_sm,
    stride_sk,
    stride_dm,
    stride_dk,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Program (i, j): pairs i*BLOCK_P.. of one layer for rows j*BLOCK_M..;
    dst[:, 2p + r] = sum_c block[p][r, c] * src[:, permutation[2p + c]]."""
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_p = offs_p < half
    mask_m = offs_m < batch
    first = tl.load(permutation_ptr + 2 * offs_p, mask=mask_p, other=0).to(tl.int32)
    second = tl.load(permutation_ptr + 2 * offs_p + 1, mask=mask_p, other=0).to(tl.int32)
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
    b00 = tl.load(blocks_ptr + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    b01 = tl.load(blocks_ptr + stride_be + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    b10 = tl.load(blocks_ptr + 2 * stride_be + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    b11 = tl.load(blocks_ptr + 3 * stride_be + offs_p, mask=mask_p, other=0.0).to(tl.float32)[None, :]
    new_upper = b00 * upper + b01 * lower
    new_lower = b10 * upper + b11 * lower
    even = 2 * offs_p
    mask_even = mask_p & (even < dst_cols)
    mask_odd = mask_p & (even + 1 < dst_cols)
    if HAS_BIAS:
        new_upper += tl.load(bias_ptr + even, mask=mask_even, other=0.0).to(tl.float32)[None, :]
        new_lower += tl.load(bias_ptr + even + 1, mask=mask_odd, other=0.0).to(tl.float32)[None, :]
    dst_rows = dst_ptr + offs_m[:, None] * stride_dm
    tl.store(
        dst_rows + even[None, :] * stride_dk,
        new_upper.to(dst_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_even[None, :],
    )
    tl.store(
        dst_rows + (even + 1)[None, :] * stride_dk,
        new_lower.to(dst_ptr.dtype.element_ty),
        mask=mask_m[:, None] & mask_odd[None, :],
    )
