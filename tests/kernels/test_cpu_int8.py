"""CPU int8 kernels (CSR, BSR 1x4 and dense) against the dense int32 reference, every config.

The reference quantizes x per token exactly as the kernels do and multiplies in int64,
so the kernels must agree to float rounding of the epilogue: any error in the integer
accumulation (a lost group, int16 saturation, a wrong zero point correction) is far
above the tolerance.
"""

import platform
import shutil
import subprocess

import pytest
import torch

from sparse_rt.formats import BsrInt8Format, CsrInt8Format, DenseInt8Format
from sparse_rt.kernels.activation import bind_with_activation
from sparse_rt.kernels.cpu._int8_native import lanes
from sparse_rt.kernels.cpu._launch import splits_by_inputs
from sparse_rt.kernels.cpu.gelu import gelu_erf
from sparse_rt.kernels.int8 import int8_linear_reference, quantize_activations
from sparse_rt.kernels.registry import kernels_for
from tests.helpers import assert_close, host_runs, masked_weight, run_built_for, run_script_built_for

CPU = torch.device("cpu")
FORMATS = {"csr_int8": CsrInt8Format, "bsr_int8": BsrInt8Format, "dense_int8": DenseInt8Format}
# leading dims of x: 1-D, one token, a partial tile, more than one tile, 3-D
X_SHAPES = [(), (1,), (3,), (33,), (70,), (2, 5)]


def _with_empty_rows() -> torch.Tensor:
    weight = masked_weight(37, 53, 0.3, seed=0)
    weight[[0, 3, 36]] = 0
    return weight


def _saturating() -> torch.Tensor:
    # every weight at +-127 after quantization: pairwise products at the int16 edge
    weight = torch.ones(12, 96)
    weight[::2] = -1.0
    return weight


def _one_by_four_blocks() -> torch.Tensor:
    # pruned in aligned blocks of four inputs, 50 inputs: the last block column is partial
    keep = torch.rand(41, 13, generator=torch.Generator().manual_seed(7)) < 0.3
    return masked_weight(41, 50, 1.0, seed=7) * keep.repeat_interleave(4, dim=1)[:, :50]


WEIGHTS = {
    "odd_with_empty_rows": _with_empty_rows,
    "one_by_four_blocks": _one_by_four_blocks,
    "skewed_rows": lambda: masked_weight(64, 300, 1.0, seed=1) * (torch.arange(300)[None] < torch.arange(64)[:, None] * 5),
    "all_zero": lambda: torch.zeros(37, 53),
    "all_dense": lambda: masked_weight(48, 40, 1.0, seed=2),
    "single_column": lambda: masked_weight(9, 1, 1.0, seed=3),
    "saturating": _saturating,
    "wide": lambda: masked_weight(20, 1100, 0.1, seed=4),
}


def _reference(fmt, x, bias):
    dense_q = torch.round(fmt.to_dense() / torch.where(fmt.scales > 0, fmt.scales, 1.0)[:, None]).to(torch.int8)
    return int8_linear_reference(x, dense_q, fmt.scales, bias)


@pytest.mark.parametrize("format_name", sorted(FORMATS))
@pytest.mark.parametrize("name", sorted(WEIGHTS))
def test_every_config_matches_the_int32_reference(format_name, name):
    weight = WEIGHTS[name]()
    fmt = FORMATS[format_name].from_dense(weight)
    bias = torch.randn(weight.shape[0])
    (kernel,) = kernels_for(fmt, CPU)
    configs = kernel.configs(fmt, CPU)
    assert len(configs) > 1
    generator = torch.Generator().manual_seed(0)
    for config in configs:
        for activation in (None, "gelu"):
            bound = bind_with_activation(kernel, fmt, bias, config, CPU, activation)
            for lead in X_SHAPES:
                x = torch.randn(*lead, weight.shape[1], generator=generator)
                if name == "saturating":  # every activation byte at 127: pair sums of +-2 * 127 * 127
                    x = torch.ones_like(x)
                expected = _reference(fmt, x, bias)
                if activation:
                    expected = gelu_erf(expected)
                y = bound(x)
                assert y.shape == (*lead, weight.shape[0]) and y.dtype == torch.float32
                assert_close(y, expected, rtol=2e-6)


@pytest.mark.parametrize("num_threads", [1, 2, 3])
@pytest.mark.parametrize("format_name", ["bsr_int8", "csr_int8"])
def test_sparse_batched_split_by_tiles_or_outputs(format_name, num_threads, monkeypatch):
    """Both task splits of the batched sparse kernels (by output rows; by activation tile)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: num_threads)
    height = lanes()
    splits = set()
    for name in ("odd_with_empty_rows", "one_by_four_blocks", "all_zero"):
        weight = WEIGHTS[name]()
        fmt = FORMATS[format_name].from_dense(weight)
        bias = torch.randn(weight.shape[0])
        (kernel,) = kernels_for(fmt, CPU)
        bound = kernel.bind(fmt, bias, kernel.configs(fmt, CPU)[0], CPU)
        for batch in (2, height + 3, 3 * height - 1, 5 * height + 1):
            splits.add(splits_by_inputs(batch, height, num_threads))
            x = torch.randn(batch, weight.shape[1])
            assert_close(bound(x), _reference(fmt, x, bias), rtol=2e-6)
    assert splits == ({True} if num_threads == 1 else {True, False})


@pytest.mark.parametrize("format_name", sorted(FORMATS))
def test_close_to_float_and_saturating_extremes_are_exact(format_name):
    weight = masked_weight(64, 256, 0.5, seed=5)
    fmt = FORMATS[format_name].from_dense(weight)
    (kernel,) = kernels_for(fmt, CPU)
    bound = kernel.bind(fmt, None, kernel.configs(fmt, CPU)[0], CPU)
    x = torch.randn(40, 256)
    assert_close(bound(x), x @ weight.T, rtol=0.02)  # 8-bit activations, 8-bit weights
    # tokens of one sign use the whole code: u8 255 (or 0 with zero point 255) times rows of
    # +-127, 255 * 127 * 256 in int32; pairs of u8 255 * 127 overflow int16
    rows = FORMATS[format_name].from_dense(torch.tensor([[1.0], [-1.0], [1.0], [-1.0]]).repeat(1, 256))
    bound = kernel.bind(rows, None, kernel.configs(rows, CPU)[0], CPU)
    for batch in (1, 40):
        tokens = torch.full((batch, 256), 5.0)
        tokens[1::2] = -5.0
        expected = torch.tensor([1.0, -1.0, 1.0, -1.0]) * tokens[:, :1] * 256
        assert torch.allclose(bound(tokens), expected, rtol=1e-6)


@pytest.mark.parametrize("format_name", sorted(FORMATS))
@pytest.mark.parametrize("batch", [1, 5, 40])
def test_non_finite_tokens_give_nan_rows_only(format_name, batch):
    weight = masked_weight(30, 70, 0.4, seed=6)
    fmt = FORMATS[format_name].from_dense(weight)
    bias = torch.randn(30)
    (kernel,) = kernels_for(fmt, CPU)
    bound = kernel.bind(fmt, bias, kernel.configs(fmt, CPU)[0], CPU)
    x = torch.randn(batch, 70)
    x[0, 3] = float("nan")
    if batch > 1:
        x[-1, 69] = float("inf")
        x[1] = 0.0  # an all-zero token: the bias
    y = bound(x)
    assert bool(torch.isnan(y[0]).all())
    if batch > 1:
        assert bool(torch.isnan(y[-1]).all())
        assert torch.allclose(y[1], bias)
        assert_close(y[2:-1], _reference(fmt, x[2:-1], bias), rtol=2e-6)
    q, scales, zeros = quantize_activations(x)
    assert torch.isnan(scales[0]) and bool((q[0] == 0).all()) and int(zeros[0]) == 0


def test_reference_quantizes_per_token_to_eight_bits_with_a_zero_point():
    x = torch.tensor([[0.0, 5.1, -2.55, 0.05], [0.0, 1.0, 2.0, 2.55], [-2.55, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    q, scales, zeros = quantize_activations(x)
    assert zeros.tolist() == [85, 0, 255, 0]
    assert q.tolist() == [[85, 255, 0, 87], [0, 100, 200, 255], [0, 155, 255, 255], [0, 0, 0, 0]]
    assert torch.allclose(scales, torch.tensor([0.03, 0.01, 0.01, 0.0]))
    assert torch.allclose((q - zeros[:, None]) * scales[:, None], x, atol=0.016)  # half a step


# The int8 kernels built for other instruction sets: run where the host can, else compile only.
OTHER_ISA_SCRIPT = r"""
import torch
from sparse_rt.formats import BsrInt8Format, CsrInt8Format, DenseInt8Format
from sparse_rt.kernels.int8 import int8_linear_reference
from sparse_rt.kernels.registry import kernels_for

torch.manual_seed(0)
sparse = torch.randn(70, 45) * (torch.rand(70, 45) < 0.3)
saturating = torch.where(torch.arange(70)[:, None] % 2 == 0, 1.0, -1.0).repeat(1, 48)  # +-127 everywhere
for weight in (sparse, saturating):
    for fmt in (CsrInt8Format.from_dense(weight), BsrInt8Format.from_dense(weight), DenseInt8Format.from_dense(weight)):
        q = torch.round(fmt.to_dense() / torch.where(fmt.scales > 0, fmt.scales, 1.0)[:, None]).to(torch.int8)
        bias = torch.randn(70)
        for kernel in kernels_for(fmt, "cpu"):
            bound = kernel.bind(fmt, bias, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
            for batch in (1, 5, 40, 130):
                # both signs, then one sign (u8 up to 255 beside weights of +-127)
                for x in (torch.randn(batch, weight.shape[1]), 4 + torch.rand(batch, weight.shape[1])):
                    expected = int8_linear_reference(x, q, fmt.scales, bias)
                    error = float((bound(x) - expected).abs().max() / expected.abs().max())
                    assert error < 2e-6, (kernel.name, batch, error)
print("ok")
"""

COMPILE_SCRIPT = r"""
import sys
from sparse_rt.kernels.cpu._int8_native import SOURCE
from sparse_rt.kernels.cpu._native import PRELUDE, _build
print(_build("int8", PRELUDE + SOURCE))
"""


@pytest.mark.parametrize("arch, needs", [("skylake-avx512", "avx512bw"), ("haswell", "avx2"), ("x86-64", None)],
                         ids=["avx512_without_vnni", "avx2", "portable"])
def test_other_instruction_sets_run(arch, needs, tmp_path):
    run_built_for(arch, needs, OTHER_ISA_SCRIPT, tmp_path)


@pytest.mark.parametrize("arch, instruction", [("icelake-server", "vpdpbusd"), ("alderlake", "vpdpbusd")],
                         ids=["avx512_vnni", "avx_vnni"])
def test_vnni_builds(arch, instruction, tmp_path):
    """AVX-512 VNNI and AVX-VNNI hosts get vpdpbusd: the source compiles for them (run where the host has VNNI)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 only")
    result = run_script_built_for(arch, COMPILE_SCRIPT, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    library = result.stdout.strip().splitlines()[-1]
    if shutil.which("objdump"):
        disassembly = subprocess.run(["objdump", "-d", library], capture_output=True, text=True, check=True).stdout
        assert instruction in disassembly
    if host_runs("avx512_vnni") and arch == "icelake-server":
        run_built_for(arch, "avx512_vnni", OTHER_ISA_SCRIPT, tmp_path)
