"""CSR linear on Triton: y = x @ W.T + b with W in CsrFormat.

`pack_csr` moves the arrays to the device once per layer and computes the row
swizzle (rows sorted by nonzero count, longest first). `csr_linear` launches
the row kernel (one row x a batch tile per program, vectorised over the batch)
or, for a single input row, the row-block kernel (BLOCK_ROWS rows of similar
length per program).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from sparse_rt.kernels.registry import Config
from sparse_rt.kernels.triton._csr_kernels import (
    _csr_row_block_kernel,
    _csr_rows_kernel,
)
from sparse_rt.kernels.triton._launch import (
    DtypeCopies,
    pow2_at_most,
    rows_of,
    runnable,
)
from sparse_rt.kernels.triton.configs import CsrOptions, parse_options


@dataclass(frozen=True)
class CsrPacked:
    """A CSR weight on its device.

    row_order: int32 [out], the rows sorted by nonzero count, longest first
    row_offsets, column_indices: as in CsrFormat; values, bias: per-dtype copies
    """

    shape: tuple[int, int]
    device: torch.device
    row_order: torch.Tensor
    row_offsets: torch.Tensor
    column_indices: torch.Tensor
    values: DtypeCopies
    bias: DtypeCopies | None


def pack_csr(weight, bias: torch.Tensor | None, device: torch.device) -> CsrPacked:
    """Move a CsrFormat (and bias [out]) to `device` and compute the row swizzle."""
    lengths = weight.row_offsets.diff()
    row_order = torch.argsort(lengths, descending=True, stable=True).to(torch.int32)
    return CsrPacked(
        shape=tuple(weight.shape),
        device=device,
        row_order=row_order.to(device),
        row_offsets=weight.row_offsets.to(device),
        column_indices=weight.column_indices.to(device),
        values=DtypeCopies(weight.values.to(device)),
        bias=None if bias is None else DtypeCopies(bias.detach().to(device)),
    )


def csr_linear(x: torch.Tensor, packed: CsrPacked, options: CsrOptions) -> torch.Tensor:
    """x: [..., in] on packed.device -> y: [..., out] in x's dtype."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, packed.device, "csr_linear")
    batch = rows.shape[0]
    y = torch.empty((batch, out_features), dtype=x.dtype, device=x.device)
    if batch == 0:
        return y.reshape(*x.shape[:-1], out_features)
    values = packed.values(x.dtype)
    bias = packed.bias(x.dtype) if packed.bias is not None else values
    common = {"HAS_BIAS": packed.bias is not None, "num_warps": options.num_warps, "num_stages": options.num_stages}
    if batch == 1:
        grid = lambda meta: (triton.cdiv(out_features, meta["BLOCK_ROWS"]), batch)
        runnable(_csr_row_block_kernel, x.device)[grid](
            rows, packed.row_order, packed.row_offsets, packed.column_indices, values, bias, y,
            out_features, rows.stride(0), rows.stride(1), y.stride(0), y.stride(1),
            BLOCK_ROWS=options.BLOCK_ROWS, BLOCK_K=options.BLOCK_K, **common,
        )
    else:
        # x.T: [in, batch] contiguous, so one kept column of a batch tile is one coalesced read
        columns = rows.t().contiguous()
        block_b = pow2_at_most(batch, options.BLOCK_B)
        grid = lambda meta: (out_features, triton.cdiv(batch, meta["BLOCK_B"]))
        runnable(_csr_rows_kernel, x.device)[grid](
            columns, packed.row_order, packed.row_offsets, packed.column_indices, values, bias, y,
            batch, columns.stride(1), columns.stride(0), y.stride(0), y.stride(1),
            BLOCK_B=block_b, BLOCK_K=options.BLOCK_K, **common,
        )
    return y.reshape(*x.shape[:-1], out_features)


def bind_csr(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind: pack once, return x -> csr_linear(x)."""
    options = parse_options(CsrOptions, config)
    packed = pack_csr(weight, bias, torch.device(device))
    return lambda x: csr_linear(x, packed, options)


def csr_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: scatter-add values[k] * x[..., column_indices[k]] into the row of entry k."""
    out_features, _ = weight.shape
    rows = torch.repeat_interleave(
        torch.arange(out_features, device=x.device), weight.row_offsets.diff().long().to(x.device)
    )
    products = x[..., weight.column_indices.long().to(x.device)] * weight.values.to(x)
    y = torch.zeros(*x.shape[:-1], out_features, dtype=x.dtype, device=x.device)
    y.index_add_(-1, rows, products)
    return y if bias is None else y + bias.to(x)
