"""What every Triton launcher shares: where a kernel runs, input checks, dtype copies.

Where a kernel runs. In triton 3.x `@triton.jit` reads TRITON_INTERPRET
(`triton.knobs.runtime.interpret`) when it decorates a function: the kernels in
the `_*_kernels` modules, and triton's own library functions (`tl.sum`,
`tl.max`, ...) decorated when triton is imported, are interpreted functions if
the variable was set by then, compiled ones otherwise. `runnable` sends CPU
tensors to the interpreter in both cases: a compiled-mode kernel is wrapped in
an interpreted twin, and while it runs triton.language's compiled library
functions are swapped for interpreted twins too (the interpreter patches
triton.language the same way for its builtins). CUDA tensors go to whatever
the decorator made: compiled code, or the interpreter under TRITON_INTERPRET=1.
Interpreted launches hold a lock: the interpreter keeps its grid state in
globals, so concurrent launches would mix it up.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_INTERPRETER_LOCK = threading.RLock()
_twins: dict[JITFunction, InterpretedFunction] = {}


def _twin(function: JITFunction) -> InterpretedFunction:
    if function not in _twins:
        _twins[function] = InterpretedFunction(function.fn)
    return _twins[function]


@contextmanager
def _interpreted_language():
    """Swap triton.language's compiled library functions for interpreted twins, then restore them."""
    # gluon is imported lazily on the first launch and asserts tl.cdiv is compiled: import it unswapped
    import triton.experimental.gluon  # noqa: F401

    swapped = []
    for module in (tl, tl.standard, tl.core, tl.math):
        for name, member in list(vars(module).items()):
            if isinstance(member, JITFunction):
                swapped.append((module, name, member))
                setattr(module, name, _twin(member))
    try:
        yield
    finally:
        for module, name, member in swapped:
            setattr(module, name, member)


class _Interpreted:
    """`kernel[grid](...)` under the interpreter, holding its lock."""

    def __init__(self, kernel) -> None:
        self._kernel = kernel if isinstance(kernel, InterpretedFunction) else _twin(kernel)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with _INTERPRETER_LOCK:
                if isinstance(tl.sum, InterpretedFunction):
                    return self._kernel[grid](*args, **kwargs)
                with _interpreted_language():
                    return self._kernel[grid](*args, **kwargs)

        return launch


def runnable(kernel, device: torch.device):
    """The launchable form of a `@triton.jit` kernel for tensors on `device` (see the module doc)."""
    if device.type == "cpu" or isinstance(kernel, InterpretedFunction):
        return _Interpreted(kernel)
    return kernel


def rows_of(x: torch.Tensor, in_features: int, device: torch.device, what: str) -> torch.Tensor:
    """x: [..., in_features] float32/float16/bfloat16 on `device` -> [rows, in_features] view or copy.

    A device without an index ("cuda") takes tensors on any device of its type.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: input 'x': expected a torch.Tensor, got {type(x).__name__}")
    elsewhere = x.device.type != device.type or device.index not in (None, x.device.index)
    if x.dtype not in INPUT_DTYPES or x.dim() == 0 or x.shape[-1] != in_features or elsewhere:
        dtypes = "/".join(str(d).removeprefix("torch.") for d in INPUT_DTYPES)
        raise ValueError(
            f"{what}: input 'x': expected {dtypes} [..., {in_features}] on {device}, "
            f"got {str(x.dtype).removeprefix('torch.')} {list(x.shape)} on {x.device}"
        )
    rows = x.reshape(-1, in_features)
    if rows.numel() >= 2**31:
        raise ValueError(f"{what}: input 'x': expected fewer than 2**31 elements, got {rows.numel()}")
    return rows


def pow2_at_most(value: int, limit: int, floor: int = 1) -> int:
    """The power of two covering `value`, clamped to [floor, limit] (a tile size for a run of `value`)."""
    return max(floor, min(limit, triton.next_power_of_2(max(value, 1))))


class DtypeCopies:
    """A float tensor on its device and its copies in the other input dtypes, made on first use."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self._copies = {tensor.dtype: tensor}
        self._source = tensor

    def __call__(self, dtype: torch.dtype) -> torch.Tensor:
        copy = self._copies.get(dtype)
        if copy is None:
            copy = self._source.to(dtype).contiguous()
            self._copies[dtype] = copy
        return copy


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for fp32 operands: TF32 only where torch allows it for matmuls."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"
