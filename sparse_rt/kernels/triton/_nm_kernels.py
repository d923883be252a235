"""@triton.jit code of the N:M linear kernel (launched from sparse_rt.kernels.triton.nm)."""

import triton
import triton.language as tl


@triton.jit
def _nm_linear_kernel(
    x_ptr,  # [batch, in] read through (stride_xm, stride_xk)
    values_ptr,  # [out, kept] read through (stride_wo, 1)
    indices_ptr,  # [out, kept] int8 in-group positions, same strides as values
    bias_ptr,  # [out]
    y_ptr,  # [batch, out] written through (stride_ym, stride_yn)
    batch,
    in_features,
    out_features,
    kept,
    stride_xm,
    stride_xk,
    stride_wo,
    stride_ym,
    stride_yn,
    N: tl.constexpr,
    M: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (i, j): y[j*BLOCK_B.., i*BLOCK_O..], gathering for each kept value k of each row
    the input column (k // N) * M + indices[o, k]."""
    offs_o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_o = offs_o < out_features
    mask_b = offs_b < batch
    acc = tl.zeros([BLOCK_B, BLOCK_O], dtype=tl.float32)
    for k in range(0, kept, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        # w_mask, vals, cols: [BLOCK_O, BLOCK_K]
        w_mask = mask_o[:, None] & (offs_k < kept)[None, :]
        w_offsets = offs_o[:, None] * stride_wo + offs_k[None, :]
        vals = tl.load(values_ptr + w_offsets, mask=w_mask, other=0.0).to(tl.float32)
        positions = tl.load(indices_ptr + w_offsets, mask=w_mask, other=0).to(tl.int32)
        cols = (offs_k // N * M)[None, :] + positions
        x_mask = w_mask & (cols < in_features)
        # xs: [BLOCK_B, BLOCK_O, BLOCK_K], the kept columns of each row of W for each batch row
        xs = tl.load(
            x_ptr + offs_b[:, None, None] * stride_xm + cols[None, :, :] * stride_xk,
            mask=mask_b[:, None, None] & x_mask[None, :, :],
            other=0.0,
        )
        acc += tl.sum(xs.to(tl.float32) * vals[None, :, :], axis=2)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_o, mask=mask_o, other=0.0).to(tl.float32)[None, :]
    tl.store(
        y_ptr + offs_b[:, None] * stride_ym + offs_o[None, :] * stride_yn,
        acc.to(y_ptr.dtype.element_ty),
        mask=mask_b[:, None] & mask_o[None, :],
    )
