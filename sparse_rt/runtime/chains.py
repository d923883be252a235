"""Execution plan: consecutive dense or CSR layers that feed each other run as one step.

Two planned steps are linked when both are bound SparseLinear nodes, the second's one
computed input is the first's one output, and nothing else reads that value (it dies
at the second step). A run of linked steps becomes one step that makes one C call for
all of them at the row counts where every layer runs the native dense kernel
(`kernels.cpu.dense.DenseChain`), and at one row where every layer runs the CSR kernel's
"slices" layout (`kernels.cpu.csr.CsrRowChain`); at other row counts (a layer dispatched
to another kernel) it calls the layers one by one, as before.

Why: after a layer streams its weight through the caches, the Python between two
kernel calls runs from cold caches and cost about 17 us a layer, against 180 us for the
layer itself on a 768x3072 weight at batch 1. An 8-layer MLP went from 1.56 to 1.41 ms.
Sparse layers are shorter still (a 384x1536 CSR layer at 10 % takes about 20 us), so the
Python between them weighs more: 4 FFN blocks of 384->1536->384 at 10 % went from 257 to
162 us on one thread (benchmarks/results/csr_gemv.md).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from sparse_rt.kernels.cpu.csr import BoundCsr, CsrRowChain
from sparse_rt.kernels.cpu.dense import BoundDense, DenseChain
from sparse_rt.ops.sparse_linear import BoundSparseLinear, batch_rows, segment


class ChainedLinears:
    """SparseLinear nodes run back to back: x [..., in of the first] -> y [..., out of the
    last]; one `DenseChain` call where all run the native dense kernel at x's row count, one
    `CsrRowChain` call for one row where all run the CSR "slices" layout there."""

    def __init__(self, linears: Sequence[BoundSparseLinear]) -> None:
        self.linears = tuple(linears)
        self.starts = _row_starts(linears)
        self.chains = [None if kernels is None else DenseChain(kernels)
                       for kernels in (_dense_kernels(linears, rows) for rows in self.starts)]
        row_kernels = _csr_row_kernels(linears)
        self.row_chain = None if row_kernels is None else CsrRowChain(row_kernels)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = batch_rows(x)
        if rows == 1 and self.row_chain is not None:
            return self.row_chain(x)
        chain = self.chains[segment(self.starts, rows)]
        if chain is not None:
            return chain(x)
        for linear in self.linears:
            x = linear(x)
        return x


def _row_starts(linears: Sequence[BoundSparseLinear]) -> list[int]:
    """The row counts from which some layer of `linears` switches kernel, ascending."""
    return sorted({start for linear in linears for start in linear.starts})


def _dense_kernels(linears: Sequence[BoundSparseLinear], rows: int) -> list[BoundDense] | None:
    """The layers' kernels at `rows` rows when all are native dense, else None."""
    kernels = [linear.at(rows) for linear in linears]
    return kernels if all(isinstance(kernel, BoundDense) for kernel in kernels) else None


def _csr_row_kernels(linears: Sequence[BoundSparseLinear]) -> list[BoundCsr] | None:
    """The layers' kernels at one row when all are CSR with the "slices" layout, else None."""
    kernels = [linear.at(1) for linear in linears]
    if all(isinstance(kernel, BoundCsr) and kernel.packed.slices_layout for kernel in kernels):
        return kernels
    return None


def chain_dense_steps(steps: list) -> list:
    """The session's planned steps with each run of linked dense or CSR layers merged into one
    (see the module docstring); other steps are kept as they are."""
    merged: list = []
    run: list = []
    for step in steps + [None]:
        if run and step is not None and _links(run[-1], step) and _has_native_chain(run + [step]):
            run.append(step)
            continue
        if run:
            merged.append(_merge(run) if len(run) > 1 else run[0])
        run = [step] if step is not None and _chainable(step) else []
        if step is not None and not run:
            merged.append(step)
    return merged


def _chainable(step) -> bool:
    return (isinstance(step.fn, BoundSparseLinear) and not step.computes_shape
            and len(step.dynamic) == 1 and step.dynamic[0][0] == 0 and len(step.outputs) == 1)


def _links(first, second) -> bool:
    value = first.outputs[0]
    return _chainable(second) and second.dynamic[0][1] == value and value in second.release


def _has_native_chain(run: list) -> bool:
    """Whether at some row count every step of `run` runs the native dense kernel, or at one
    row the CSR "slices" layout."""
    linears = [step.fn for step in run]
    return (any(_dense_kernels(linears, rows) is not None for rows in _row_starts(linears))
            or _csr_row_kernels(linears) is not None)


def _merge(run: list):
    """One step for a run of linked steps: the first's input, the last's output."""
    first, last = run[0], run[-1]
    between = {step.outputs[0] for step in run[:-1]}
    release = tuple(sorted({name for step in run for name in step.release} - between))
    return dataclasses.replace(
        first,
        fn=ChainedLinears([step.fn for step in run]),
        template=(None,),
        outputs=last.outputs,
        release=release,
        label=f"{first.label} .. {last.label}: {len(run)} chained layers",
    )

