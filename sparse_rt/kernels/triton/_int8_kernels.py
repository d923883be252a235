"""@triton.jit code of the int8 linear kernels (launched from sparse_rt.kernels.triton.int8).

Same arithmetic as the CPU kernels (sparse_rt.kernels.int8): activations quantized per
token, asymmetric, to 8 bits (q in [0, 255] with a zero point), int32 accumulation,
y = sum((q - zero) * w) * x_scale * w_scale + bias. q is stored as the int8 q - 128 so
that the dense kernel's tl.dot stays int8 x int8; the kernels then add the exact int32
correction sum((q - zero) * w) - sum((q - 128) * w) = (128 - zero) * sum(w).
"""

import triton
import triton.language as tl


@triton.jit
def _quantize_rows_kernel(
    x_ptr,  # [rows, in] float, read through (stride_xm, stride_xk)
    q_ptr,  # [in, rows] int8, q - 128 (transposed: a kept column of a batch tile is one coalesced read)
    scale_ptr,  # [rows] float32
    zero_ptr,  # [rows] int32
    in_features,
    stride_xm,
    stride_xk,
    stride_qk,
    stride_qm,
    LEVELS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program m: row m of x -> its scale (hi - lo) / LEVELS (NaN for a non-finite row), zero point
    and q. Exact only when launched without fp fusion (an fma would skip a rounding)."""
    row = tl.program_id(0)
    lo = tl.zeros([BLOCK_K], dtype=tl.float32)
    hi = tl.zeros([BLOCK_K], dtype=tl.float32)
    bad = tl.zeros([BLOCK_K], dtype=tl.int32)
    for k in range(0, in_features, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + row * stride_xm + offs_k * stride_xk, mask=offs_k < in_features, other=0.0).to(tl.float32)
        finite = tl.abs(x) < float("inf")
        bad = tl.maximum(bad, tl.where(finite, 0, 1))
        lo = tl.minimum(lo, tl.where(finite, x, 0.0))
        hi = tl.maximum(hi, tl.where(finite, x, 0.0))
    finite = tl.max(bad, axis=0) == 0
    low = tl.min(lo, axis=0)
    span = tl.max(hi, axis=0) - low
    levels = tl.full([], LEVELS, tl.float32)
    inverse = tl.where(finite & (span > 0), tl.math.div_rn(levels, tl.where(span > 0, span, 1.0)), 0.0)
    # round half to even: the values rounded are at most about LEVELS in magnitude, so adding
    # 1.5 * 2^23 leaves only their integer part
    zero = (-low * inverse + 12582912.0) - 12582912.0
    tl.store(scale_ptr + row, tl.where(finite, tl.math.div_rn(span, levels), float("nan")))
    tl.store(zero_ptr + row, zero.to(tl.int32))
    for k in range(0, in_features, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        mask = offs_k < in_features
        x = tl.load(x_ptr + row * stride_xm + offs_k * stride_xk, mask=mask, other=0.0).to(tl.float32)
        scaled = x * inverse
        scaled = tl.where(tl.abs(scaled) < float("inf"), scaled, 0.0)  # NaN and +-Inf -> 0 (a non-finite row's)
        q = tl.minimum(tl.maximum((scaled + 12582912.0) - 12582912.0 + zero, 0.0), levels)
        tl.store(q_ptr + offs_k * stride_qk + row * stride_qm, (q - 128.0).to(tl.int8), mask=mask)


@triton.jit
def _csr_int8_rows_kernel(
    q_ptr,  # [in, batch] int8, q - 128
    x_scale_ptr,  # [batch] float32
    x_zero_ptr,  # [batch] int32
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
    """Program (r, j): row row_order[r] of W against batch rows j*BLOCK_B.., accumulated in int32
    (the zero point's correction from the sum of the row's values)."""
    row = tl.load(row_order_ptr + tl.program_id(0))
    offs_b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = offs_b < batch
    start = tl.load(row_offsets_ptr + row)
    end = tl.load(row_offsets_ptr + row + 1)
    acc = tl.zeros([BLOCK_B], dtype=tl.int32)
    w_sum = tl.zeros([BLOCK_K], dtype=tl.int32)
    for k in range(start, end, BLOCK_K):
        offs_k = k + tl.arange(0, BLOCK_K)
        mask_k = offs_k < end
        cols = tl.load(column_indices_ptr + offs_k, mask=mask_k, other=0).to(tl.int32)
        vals = tl.load(values_ptr + offs_k, mask=mask_k, other=0).to(tl.int32)
        xs = tl.load(q_ptr + cols[:, None] * stride_qk + offs_b[None, :], mask=mask_k[:, None] & mask_b[None, :],
                     other=0).to(tl.int32)
        acc += tl.sum(xs * vals[:, None], axis=0)
        w_sum += vals
    acc += (128 - tl.load(x_zero_ptr + offs_b, mask=mask_b, other=0)) * tl.sum(w_sum, axis=0)
    x_scale = tl.load(x_scale_ptr + offs_b, mask=mask_b, other=0.0)
    y = acc.to(tl.float32) * (x_scale * tl.load(w_scale_ptr + row))
    if HAS_BIAS:
        y += tl.load(bias_ptr + row)
    tl.store(y_ptr + offs_b * stride_ym + row * stride_yn, y.to(y_ptr.dtype.element_ty), mask=mask_b)


@triton.jit
def _dense_int8_kernel(
    q_ptr,  # [in, batch] int8, q - 128
    x_scale_ptr,  # [batch] float32
    x_zero_ptr,  # [batch] int32
    w_ptr,  # [out, in] int8
    w_sum_ptr,  # [out] int32, the sums of W's rows
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
    x_zero = tl.load(x_zero_ptr + offs_m, mask=offs_m < batch, other=0)
    w_sum = tl.load(w_sum_ptr + offs_n, mask=offs_n < out_features, other=0)
    acc += (128 - x_zero)[:, None] * w_sum[None, :]
    x_scale = tl.load(x_scale_ptr + offs_m, mask=offs_m < batch, other=0.0)
    w_scale = tl.load(w_scale_ptr + offs_n, mask=offs_n < out_features, other=0.0)
    y = acc.to(tl.float32) * x_scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=offs_n < out_features, other=0.0)[None, :]
    mask = (offs_m[:, None] < batch) & (offs_n[None, :] < out_features)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn, y.to(y_ptr.dtype.element_ty), mask=mask)
