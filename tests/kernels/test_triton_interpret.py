"""CPU tensors run under triton's interpreter however triton was imported, and concurrently."""

import os

import torch

# The kernels run compiled where CUDA is present, else under triton's interpreter; the
# variable must be set before triton is first imported (see sparse_rt.kernels.triton._launch).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys
import threading
from pathlib import Path

import triton.language as tl

from sparse_rt.formats import CsrFormat
from sparse_rt.kernels.triton.configs import csr_configs
from sparse_rt.kernels.triton.csr import bind_csr
from tests.helpers import assert_close

# Imports triton without TRITON_INTERPRET (its library functions compiled-mode), then runs
# kernels that call tl.sum / tl.max / tl.gather on CPU tensors.
WITHOUT_VARIABLE = """
import torch
import triton.language as tl
from triton.runtime.jit import JITFunction
from sparse_rt.formats import CsrFormat, PermutedFormat
from sparse_rt.kernels.triton.configs import csr_configs, permuted_configs
from sparse_rt.kernels.triton.csr import bind_csr
from sparse_rt.kernels.triton.permuted import bind_permuted
from tests.helpers import relative_error

assert isinstance(tl.sum, JITFunction)
weight = torch.randn(37, 53) * (torch.rand(37, 53) < 0.3)
csr = CsrFormat.from_dense(weight)
linear = bind_csr(csr, None, csr_configs(csr, torch.device("cpu"))[0], torch.device("cpu"))
permuted = PermutedFormat(
    in_features=6, out_features=6, permutations=torch.tensor([[5, 0, 3, 1, 4, 2]], dtype=torch.int8),
    blocks=torch.randn(1, 3, 2, 2),
)
mix = bind_permuted(permuted, None, permuted_configs(permuted, torch.device("cpu"))[0], torch.device("cpu"))
errors = []
for batch in (1, 5):
    x = torch.randn(batch, 53)
    errors.append(relative_error(linear(x), x @ weight.T))
    z = torch.randn(batch, 6)
    errors.append(relative_error(mix(z), z @ permuted.to_dense().T))
assert isinstance(tl.sum, JITFunction), "triton.language was not restored"
print("max relative error", max(errors))
"""


def test_kernels_run_when_triton_was_imported_without_the_variable():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    child = subprocess.run(
        [sys.executable, "-c", WITHOUT_VARIABLE],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    error = float(child.stdout.split("max relative error")[-1])
    assert error <= 1e-5


def test_concurrent_calls_on_cpu_are_serialised_and_correct():
    weight = torch.randn(37, 53) * (torch.rand(37, 53) < 0.3)
    fmt = CsrFormat.from_dense(weight)
    linear = bind_csr(fmt, None, csr_configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
    inputs = [torch.randn(batch, 53) for batch in (1, 3, 1, 4)]
    outputs = [None] * len(inputs)
    language_sum = tl.sum

    def work(k: int) -> None:
        outputs[k] = linear(inputs[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for x, y in zip(inputs, outputs):
        assert_close(y, x @ weight.T, rtol=1e-5)
    assert tl.sum is language_sum
