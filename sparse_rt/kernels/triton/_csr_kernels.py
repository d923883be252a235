"""@triton.jit code of the CSR linear kernels (launched from sparse_rt.kernels.triton.csr).

Both kernels visit the rows of W in the order `row_order` (a permutation of the
rows sorted by nonzero count, longest first: Sputnik's row swizzle), so the
longest rows start first and rows handled together have similar lengths.
Column indices may be any integer dtype; they are widened before addressing.
"""

import triton
import triton.language as tl


@triton.jit
def _csr_rows_kernel(
    x_ptr,  # [batch, in] read through (stride_xm, stride_xk)
    row_order_ptr,  # [out] rows of W, longest first
    row_offsets_ptr,  # [out + 1]
    column_indices_ptr,  # [nnz]
    values_ptr,  # [nnz]
    bias_ptr,  # [out]
    y_ptr,  # [batch, out] written through (stride_ym, stride_yn)
    batch,
    stride_xm,
    stride_xk,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (r, j): row row_order[r] of W against batch rows j*BLOCK_B.. (vectorised over the batch)."""
    row = tl.load(row_order_ptr + tl.program_id(0))
    offs_b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < batch
    start = tl.load(row_offsets_ptr + row)
    end = tl.load(row_offsets_ptr + row + 1)
    acc = tl.zeros([BLOCK_B], dtype=tl.float32)
    for k in range(start, end, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        mask_k = offs_k < end
        cols = tl.load(column_indices_ptr + offs_k, mask=mask_k, other=0).to(tl.int32)
        vals = tl.load(values_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        # xs: [BLOCK_K, BLOCK_B], the kept columns of x for this batch tile
        xs = tl.load(
            x_ptr + cols[:, None] * stride_xk + offs_b[None, :] * stride_xm,
            mask=mask_k[:, None] & mask_b[None, :],
            other=0.0,
        )
        acc += tl.sum(xs.to(tl.float32) * vals[:, None], axis=0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + row).to(tl.float32)
    tl.store(y_ptr + offs_b * stride_ym + row * stride_yn, acc.to(y_ptr.dtype.element_ty), mask=mask_b)


@triton.jit
def _csr_row_block_kernel(
    x_ptr,  # [batch, in] read through (stride_xm, stride_xk)
    row_order_ptr,  # [out] rows of W, longest first
    row_offsets_ptr,  # [out + 1]
    column_indices_ptr,  # [nnz]
    values_ptr,  # [nnz]
    bias_ptr,  # [out]
    y_ptr,  # [batch, out] written through (stride_ym, stride_yn)
    out_features,
    stride_xm,
    stride_xk,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (r, b): rows row_order[r*BLOCK_ROWS..] of W against batch row b (the batch-1 path)."""
    offs_r = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    mask_r = offs_r < out_features
    rows = tl.load(row_order_ptr + offs_r, mask=mask_r, other=0)
    starts = tl.load(row_offsets_ptr + rows, mask=mask_r, other=0)
    lengths = tl.load(row_offsets_ptr + rows + 1, mask=mask_r, other=0) - starts
    x_row_ptr = x_ptr + tl.program_id(1) * stride_xm
    acc = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
    for k in range(0, tl.max(lengths, axis=0), BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        # mask, entries: [BLOCK_ROWS, BLOCK_K]
        mask = offs_k[None, :] < lengths[:, None]
        entries = starts[:, None] + offs_k[None, :]
        cols = tl.load(column_indices_ptr + entries, mask=mask, other=0).to(tl.int32)
        vals = tl.load(values_ptr + entries, mask=mask, other=0.0).to(tl.float32)
        xs = tl.load(x_row_ptr + cols * stride_xk, mask=mask, other=0.0).to(tl.float32)
        acc += tl.sum(vals * xs, axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=mask_r, other=0.0).to(tl.float32)
    y_row_ptr = y_ptr + tl.program_id(1) * stride_ym
    tl.store(y_row_ptr + rows * stride_yn, acc.to(y_ptr.dtype.element_ty), mask=mask_r)
