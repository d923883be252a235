"""@triton.jit code of the bitmask linear kernel (launched from sparse_rt.kernels.triton.bitmask)."""

import triton
import triton.language as tl


@triton.jit
def _bitmask_linear_kernel(
    x_ptr,  # [batch, in] read through (stride_xm, stride_xk)
    mask_ptr,  # uint8 [out, row_bytes] read through (stride_mo, 1); bit j of byte k: column 8k + j
    row_offsets_ptr,  # int64 [out + 1]: row o's values start at row_offsets[o]
    values_ptr,  # [nnz + padding] packed in column order row by row
    bias_ptr,  # [out]
    y_ptr,  # [batch, out] written through (stride_ym, stride_yn)
    batch,
    in_features,
    out_features,
    stride_xm,
    stride_xk,
    stride_mo,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (i, j): y[j*BLOCK_B.., i*BLOCK_O..]. Columns go BLOCK_K at a time; a set bit's value
    sits at its row's start + the set bits before it (a running count plus a prefix sum)."""
    offs_o = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_o = offs_o < out_features
    mask_b = offs_b < batch
    # position: [BLOCK_O], each row's next packed value
    position = tl.load(row_offsets_ptr + offs_o, mask=mask_o, other=0)
    acc = tl.zeros([BLOCK_B, BLOCK_O], dtype=tl.float32)
    for k in range(0, in_features, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        mask_k = offs_k < in_features
        # bits, ranks: [BLOCK_O, BLOCK_K]
        w_mask = mask_o[:, None] & mask_k[None, :]
        chunks = tl.load(mask_ptr + offs_o[:, None] * stride_mo + (offs_k // 8)[None, :], mask=w_mask, other=0)
        bits = (chunks.to(tl.int32) >> (offs_k % 8)[None, :]) & 1
        ranks = tl.cumsum(bits, axis=1) - bits
        vals = tl.load(values_ptr + position[:, None] + ranks, mask=bits != 0, other=0.0).to(tl.float32)
        position += tl.sum(bits, axis=1)
        # xs: [BLOCK_B, BLOCK_K]
        xs = tl.load(
            x_ptr + offs_b[:, None] * stride_xm + offs_k[None, :] * stride_xk,
            mask=mask_b[:, None] & mask_k[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(xs[:, None, :] * vals[None, :, :], axis=2)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_o, mask=mask_o, other=0.0).to(tl.float32)[None, :]
    tl.store(
        y_ptr + offs_b[:, None] * stride_ym + offs_o[None, :] * stride_yn,
        acc.to(y_ptr.dtype.element_ty),
        mask=mask_b[:, None] & mask_o[None, :],
    )
