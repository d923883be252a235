"""@triton.jit code of the int8 linear kernels (launched from sparse_rt.kernels.triton.int8).

Same arithmetic as the CPU kernels (sparse_rt.kernels.int8): activations quantized per
token to 7 bits (signed, no zero point here), int32 accumulation, y = acc * x_scale *
w_scale + bias.
"""

import triton
import triton.language as tl


@triton.jit
def _quantize_rows_kernel(
    x_ptr,  # [rows, in] float, read through (stride_xm, stride_xk)
    q_ptr,  # [in, rows] int8 (transposed: a kept column of a batch tile is one coalesced read)
    scale_ptr,  # [rows] float32
    in_features,
    stride_xm,
    stride_xk,
    stride_qk,
    stride_qm,
    QMAX: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program m: row m of x -> its scale amax / QMAX (NaN for a non-finite row) and q."""
    row = tl.program_id(0)
    amax = tl.zeros([BLOCK_K], dtype=tl.float32)
    bad = tl.zeros([BLOCK_K], dtype=tl.int32)
    for k in range(0, in_features, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * stride_xm + offs_k * stride_xk, mask=offs_k < in_features, other=0.0).to(tl.float32)
        a = tl.abs(x)
        bad = tl.maximum(bad, tl.where(a < float("inf"), 0, 1))
        amax = tl.maximum(amax, tl.where(a < float("inf"), a, 0.0))
    top = tl.max(amax, axis=0)
    finite = tl.max(bad, axis=0) == 0
    inverse = tl.where(finite & (top > 0), QMAX / tl.where(top > 0, top, 1.0), 0.0)
    tl.store(scale_ptr + row, tl.where(finite, top / QMAX, float("nan")))
    for k in range(0, in_features, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        mask = offs_k < in_features
        x = tl.load(x_ptr + row * stride_xm + offs_k * stride_xk, mask=mask, other=0.0).to(tl.float32)
        scaled = tl.where(tl.abs(x) < float("inf"), x * inverse, 0.0)
        # round half to even: |scaled| <= QMAX, so adding 1.5 * 2^23 leaves the integer part alone
        rounded = (scaled + 12582912.0) - 12582912.0
        q = tl.minimum(tl.maximum(rounded, -QMAX), QMAX)
        tl.store(q_ptr + offs_k * stride_qk + row * stride_qm, q.to(tl.int8), mask=mask)


@triton.jit
def _csr_int8_rows_kernel(
    q_ptr,  # [in, batch] int8
    x_scale_ptr,  # [batch] float32
    row_order_ptr,  # [out] rows of W, longest first
    row_offsets_ptr,  # [out + 1]
    column_indices_ptr,  # [nnz]
    values_ptr,  # [nnz] int8
    w_scale_ptr,  # [out] float32
    bias_ptr,  # [out] float32
    y_ptr,  # [batch, out], written through (stride_ym, stride_yn)
    batch,
    stride_qk,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (r, j): row row_order[r] of W against batch rows j*BLOCK_B.., accumulated in int32."""
    row = tl.load(row_order_ptr + tl.program_id(0))
    offs_b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < batch
    start = tl.load(row_offsets_ptr + row)
    end = tl.load(row_offsets_ptr + row + 1)
    acc = tl.zeros([BLOCK_B], dtype=tl.int32)
    for k in range(start, end, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        mask_k = offs_k < end
        cols = tl.load(column_indices_ptr + offs_k, mask=mask_k, other=0).to(tl.int32)
        vals = tl.load(values_ptr + offs_k, mask=mask_k, other=0).to(tl.int32)
        xs = tl.load(q_ptr + cols[:, None] * stride_qk + offs_b[None, :], mask=mask_k[:, None] & mask_b[None, :],
                     other=0).to(tl.int32)
        acc += tl.sum(xs * vals[:, None], axis=0)
    x_scale = tl.load(x_scale_ptr + offs_b, mask=mask_b, other=0.0)
    y = acc.to(tl.float32) * (x_scale * tl.load(w_scale_ptr + row))
    if HAS_BIAS:
        y += tl.load(bias_ptr + row)
    tl.store(y_ptr + offs_b * stride_ym + row * stride_yn, y.to(y_ptr.dtype.element_ty), mask=mask_b)


@triton.jit
def _dense_int8_kernel(
    q_ptr,  # [in, batch] int8
    x_scale_ptr,  # [batch] float32
    w_ptr,  # [out, in] int8
    w_scale_ptr,  # [out] float32
    bias_ptr,  # [out] float32
    y_ptr,  # [batch, out]
    batch,
    out_features,
    in_features,
    stride_qk,
    stride_wn,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (i, j): y[i*BLOCK_M.., j*BLOCK_N..] from int8 tiles, tl.dot accumulating in int32."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k in range(0, in_features, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        mask_k = offs_k < in_features
        a = tl.load(q_ptr + offs_k[None, :] * stride_qk + offs_m[:, None],
                    mask=(offs_m[:, None] < batch) & mask_k[None, :], other=0)  # [BLOCK_M, BLOCK_K]
        b = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None],
                    mask=mask_k[:, None] & (offs_n[None, :] < out_features), other=0)  # [BLOCK_K, BLOCK_N]
        acc += tl.dot(a, b, out_dtype=tl.int32)
    x_scale = tl.load(x_scale_ptr + offs_m, mask=offs_m < batch, other=0.0)
    w_scale = tl.load(w_scale_ptr + offs_n, mask=offs_n < out_features, other=0.0)
    y = acc.to(tl.float32) * x_scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=offs_n < out_features, other=0.0)[None, :]
    mask = (offs_m[:, None] < batch) & (offs_n[None, :] < out_features)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn, y.to(y_ptr.dtype.element_ty), mask=mask)
