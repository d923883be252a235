"""Every Triton kernel compiles for a CUDA GPU (sm_90), checked without one.

The launchers run on CPU tensors with their `runnable` swapped for a recorder, so
each launch is captured with the exact arguments and constants it would pass;
each distinct launch is then compiled to a cubin with triton.compile for an
sm_90 target. This catches what the interpreter accepts and the compiler does
not (shapes that are not constexpr, tl.dot sides, layouts of split/join/gather).

The compiling runs in a child process without TRITON_INTERPRET: where triton was
imported with the variable set (as the other test_triton_* modules do without a
GPU), its library functions (tl.sum, ...) are interpreted ones and cannot be
compiled. This module therefore leaves the variable alone.
"""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.backends
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction, mangle_type

from sparse_rt.formats import (
    BsrFormat,
    ButterflyFormat,
    CsrFormat,
    NmFormat,
    PermutedFormat,
)
from sparse_rt.formats.base import narrowest_index_dtype
from sparse_rt.kernels.triton import bsr, butterfly, configs, csr, nm, permuted
from tests.helpers import masked_weight

TARGET = GPUTarget("cuda", 90, 32)


def _recording_runnable(launches: list):
    """Stands in for `runnable`: kernel[grid](*args, **kwargs) appends (kernel, args, kwargs)."""

    class _Launcher:
        def __init__(self, kernel) -> None:
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

    return lambda kernel, device: _Launcher(kernel)


def _compile(kernel: JITFunction, args, kwargs):
    names = list(inspect.signature(kernel.fn).parameters)
    bound = {**dict(zip(names, args)), **{k: v for k, v in kwargs.items() if k in names}}
    signature = {}
    constants = {}
    for name, param in zip(names, kernel.params):
        if param.is_constexpr:
            signature[name] = "constexpr"
            constants[name] = bound[name]
        else:
            signature[name] = mangle_type(bound[name])
    options = {"num_warps": kwargs.get("num_warps", 4), "num_stages": kwargs.get("num_stages", 3)}
    return triton.compile(ASTSource(kernel, signature, constants), target=TARGET, options=options)


def _csr_launches():
    fmt = CsrFormat.from_dense(masked_weight(300, 200, 0.2))
    linear = csr.bind_csr(fmt, torch.randn(300), configs.csr_configs(fmt, torch.device("cpu"))[0], "cpu")
    for x in (torch.randn(200), torch.randn(5, 200), torch.randn(5, 200).half()):
        linear(x)


def _bsr_launches():
    weight = masked_weight(256, 256, 1.0)
    for block_shape, dtype, split_k in (((16, 16), torch.float32, 1), ((64, 32), torch.float16, 4), ((128, 128), torch.bfloat16, 1)):
        fmt = BsrFormat.from_dense(weight, block_shape=block_shape)
        config = dict(configs.bsr_configs(fmt, torch.device("cpu"))[0], SPLIT_K=split_k)
        bsr.bind_bsr(fmt, torch.randn(256), config, "cpu")(torch.randn(5, 256, dtype=dtype))


def _nm_launches():
    weight = masked_weight(64, 64, 1.0) * torch.tensor([1.0, 0.0, 0.0, 1.0]).repeat(16)
    fmt = NmFormat.from_dense(weight, n=2, m=4)
    linear = nm.bind_nm(fmt, torch.randn(64), configs.nm_configs(fmt, torch.device("cpu"))[0], "cpu")
    for x in (torch.randn(5, 64), torch.randn(5, 64).half()):
        linear(x)


def _butterfly_launches():
    fmt = ButterflyFormat(in_features=4096, out_features=4096, twiddles=torch.randn(12, 2048, 2, 2))
    space = configs.butterfly_configs(fmt, torch.device("cpu"))
    for config in (space[0], next(c for c in space if c["schedule"] == "staged")):
        butterfly.bind_butterfly(fmt, torch.randn(4096), config, "cpu")(torch.randn(2, 4096))


def _permuted_launches():
    n = configs.MAX_GATHER_WIDTH
    generator = torch.Generator().manual_seed(0)
    fmt = PermutedFormat(
        in_features=n,
        out_features=n,
        permutations=torch.stack([torch.randperm(n, generator=generator) for _ in range(2)]).to(narrowest_index_dtype(n - 1)),
        blocks=torch.randn(2, n // 2, 2, 2),
    )
    space = configs.permuted_configs(fmt, torch.device("cpu"))
    for config in (space[0], next(c for c in space if c["schedule"] == "staged")):
        permuted.bind_permuted(fmt, torch.randn(n), config, "cpu")(torch.randn(2, n))


FAMILIES = {
    "csr": (csr, _csr_launches, {"_csr_rows_kernel", "_csr_row_block_kernel"}),
    "bsr": (bsr, _bsr_launches, {"_bsr_linear_kernel"}),
    "nm": (nm, _nm_launches, {"_nm_linear_kernel"}),
    "butterfly": (butterfly, _butterfly_launches, {"_butterfly_fused_kernel", "_butterfly_stage_kernel"}),
    "permuted": (permuted, _permuted_launches, {"_permuted_fused_kernel", "_permuted_layer_kernel"}),
}


def _compile_family(family: str) -> None:
    """Record the launches of one family's launchers and compile each distinct one (child process)."""
    module, run, kernel_names = FAMILIES[family]
    launches = []
    module.runnable = _recording_runnable(launches)
    run()
    found = {kernel.fn.__name__ for kernel, _, _ in launches}
    assert found == kernel_names, f"expected launches of {sorted(kernel_names)}, got {sorted(found)}"
    compiled = set()
    for kernel, args, kwargs in launches:
        key = (kernel.fn.__name__, tuple(mangle_type(a) for a in args), tuple(sorted(kwargs.items())))
        if key not in compiled:
            compiled.add(key)
            binary = _compile(kernel, args, kwargs)
            assert binary.asm["cubin"], f"{kernel.fn.__name__}: empty cubin"


@pytest.fixture(scope="module")
def compile_report() -> str:
    """Output of one child process compiling every family (one line per family)."""
    if "nvidia" not in triton.backends.backends:
        pytest.skip("triton has no NVIDIA backend")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run(
        [sys.executable, "-m", "tests.kernels.test_triton_compile", *sorted(FAMILIES)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return child.stdout + child.stderr


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kernels_compile_for_sm90(compile_report, family):
    assert f"compiled {family}\n" in compile_report, compile_report[-4000:]


if __name__ == "__main__":
    for name in sys.argv[1:]:
        try:
            _compile_family(name)
            print(f"compiled {name}", flush=True)
        except Exception as error:  # report every family, not just the first failure
            print(f"failed {name}: {error!r}", flush=True)
