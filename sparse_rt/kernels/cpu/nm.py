"""N:M linear on the CPU: y = x @ W.T + b with W in NmFormat.

One input row: when n divides the SIMD width, `_nm_native.nm_gemv` gathers the
kept columns straight from the int8 in-group indices (5 bytes per kept value);
otherwise, and for several input rows, the weight runs as CSR with equal-length
rows (`pack_nm` expands the indices once into absolute column indices, and the
batched CSR kernel makes every kept value a batch-wide multiply-add).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats.base import narrowest_index_dtype
from sparse_rt.kernels.cpu._launch import TaskSplit, check_cpu, pointer, rows_of, shaped_like, threads
from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu._nm_native import nm_gemv
from sparse_rt.kernels.cpu.configs import BlockOptions, CsrOptions, block_configs, parse_options, simd_width
from sparse_rt.kernels.cpu.csr import CsrPacked, csr_rows_linear, pack_csr_arrays
from sparse_rt.kernels.registry import Config, Kernel, register_kernel


@dataclass(frozen=True)
class NmPacked:
    """An N:M weight ready for the C kernels.

    values:  float32 [out, groups * n]; indices: int8 [out, groups * n] (as in NmFormat)
    grouped: whether nm_gemv takes it (n divides the SIMD width)
    csr:     the same weight as CSR with absolute column indices (positions in the
             input padding, whose values are zero, point at column in - 1)
    """

    shape: tuple[int, int]
    n: int
    m: int
    values: torch.Tensor
    indices: torch.Tensor
    grouped: bool
    csr: CsrPacked
    csr_options: CsrOptions
    tasks: TaskSplit


def pack_nm(weight, bias: torch.Tensor | None, options: BlockOptions) -> NmPacked:
    """Pack an NmFormat (and bias [out]) for the kernels."""
    out_features, in_features = weight.shape
    n, m = weight.n, weight.m
    kept = weight.values.shape[1]
    positions = torch.arange(kept)
    columns = (positions // n * m) + weight.indices.long()
    columns = columns.clamp(max=in_features - 1).to(narrowest_index_dtype(in_features - 1))
    values = weight.values.to(torch.float32).contiguous()
    csr_options = CsrOptions(
        tasks_per_thread=options.tasks_per_thread,
        unroll=2,
        batch_vectors=options.batch_vectors,
    )
    csr = pack_csr_arrays(
        weight.shape,
        torch.arange(out_features + 1, dtype=torch.int64) * kept,
        columns.flatten(),
        values.flatten(),
        bias,
        csr_options,
        "nm_linear",
    )
    return NmPacked(
        shape=(out_features, in_features),
        n=n,
        m=m,
        values=values,
        indices=weight.indices.contiguous(),
        grouped=simd_width() % n == 0,
        csr=csr,
        csr_options=csr_options,
        tasks=TaskSplit(torch.full((out_features,), kept, dtype=torch.int64), options.tasks_per_thread),
    )


def nm_linear(x: torch.Tensor, packed: NmPacked) -> torch.Tensor:
    """x: float32 [..., in] -> y: float32 [..., out]."""
    out_features, in_features = packed.shape
    rows = rows_of(x, in_features, "nm_linear")
    if rows.shape[0] != 1 or not packed.grouped:
        y = csr_rows_linear(rows, packed.csr, packed.csr_options)
        return shaped_like(y, x)
    kept = packed.values.shape[1]
    padded_in = kept // packed.n * packed.m
    if padded_in != in_features:
        rows = torch.nn.functional.pad(rows, (0, padded_in - in_features))
    y = torch.empty(1, out_features, dtype=torch.float32)
    num_threads = threads()
    split = packed.tasks(num_threads)
    nm_gemv()(
        num_threads, split.shape[0] - 1, pointer(split), pointer(packed.values), pointer(packed.indices), kept,
        packed.n, packed.m, pointer(packed.csr.bias), pointer(rows), pointer(y),
    )
    return shaped_like(y, x)


def bind_nm(weight, bias: torch.Tensor | None, config: Config, device: torch.device):
    """Kernel.bind: pack once, return x -> nm_linear(x)."""
    check_cpu(device, "nm_linear")
    options = parse_options(BlockOptions, config)
    packed = pack_nm(weight, bias, options)
    return lambda x: nm_linear(x, packed)


def nm_linear_reference(x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain torch: gather x at (p // n) * m + indices[o, p] and reduce against the values."""
    in_features = weight.shape[1]
    kept = weight.values.shape[1]
    padded = torch.zeros(*x.shape[:-1], kept // weight.n * weight.m, dtype=x.dtype)
    padded[..., :in_features] = x
    columns = torch.arange(kept) // weight.n * weight.m + weight.indices.long()  # [out, kept]
    y = (padded[..., columns] * weight.values.to(x.dtype)).sum(-1)
    return y if bias is None else y + bias.to(x.dtype)


NM_CPU_GROUPED = register_kernel(
    Kernel(
        name="nm_cpu_grouped",
        format="nm",
        backend="cpu",
        bind=bind_nm,
        configs=block_configs,
        supports=lambda weight, device: native_available(),
    )
)
