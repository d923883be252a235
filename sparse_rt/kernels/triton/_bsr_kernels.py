"""@triton.jit code of the BSR linear kernel (launched from sparse_rt.kernels.triton.bsr)."""

import triton
import triton.language as tl


@triton.jit
def _bsr_linear_kernel(
    x_ptr,  # [batch, in] read through (stride_xm, stride_xk)
    blocks_ptr,  # [nblocks, BLOCK_C, BLOCK_R]: each kept block of W, transposed
    block_row_offsets_ptr,  # [block_rows + 1]
    block_column_indices_ptr,  # [nblocks]
    bias_ptr,  # [out]
    y_ptr,  # [batch, out] written through (stride_ym, stride_yn); zeroed fp32 when SPLIT_K > 1
    batch,
    in_features,
    out_features,
    stride_xm,
    stride_xk,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Program (i, j, s): y[j*BLOCK_M.., i*BLOCK_R..] from part s of block row i's blocks, one tl.dot each.

    Batch rows past `batch` and input columns past `in_features` load as zeros, so a
    small batch is padded up to the BLOCK_M >= 16 rows tl.dot needs.
    """
    block_row = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.arange(0, BLOCK_C)
    offs_r = tl.arange(0, BLOCK_R)
    mask_m = offs_m < batch
    start = tl.load(block_row_offsets_ptr + block_row)
    end = tl.load(block_row_offsets_ptr + block_row + 1)
    part = (end - start + SPLIT_K - 1) // SPLIT_K
    first = start + tl.program_id(2) * part
    last = tl.minimum(first + part, end)
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for b in range(first, last):
        cols = tl.load(block_column_indices_ptr + b).to(tl.int32) * BLOCK_C + offs_c
        # xs: [BLOCK_M, BLOCK_C]; w: [BLOCK_C, BLOCK_R]
        xs = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + cols[None, :] * stride_xk,
            mask=mask_m[:, None] & (cols < in_features)[None, :],
            other=0.0,
        )
        w = tl.load(blocks_ptr + b * (BLOCK_C * BLOCK_R) + offs_c[:, None] * BLOCK_R + offs_r[None, :])
        acc = tl.dot(xs, w, acc, input_precision=INPUT_PRECISION)
    rows = block_row * BLOCK_R + offs_r
    mask_r = rows < out_features
    if HAS_BIAS:
        if tl.program_id(2) == 0:
            acc += tl.load(bias_ptr + rows, mask=mask_r, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + rows[None, :] * stride_yn
    mask = mask_m[:, None] & mask_r[None, :]
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(y_ptrs, acc, mask=mask)
