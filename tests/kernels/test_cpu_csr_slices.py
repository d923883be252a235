"""The batch-1 "slices" layout of the CPU CSR kernel (pack_slices + csr_slices_gemv), both ways
of reading x, every index width, against the dense product; and on the AVX2 and portable
builds (SPARSE_RT_CPU_ARCH) in a subprocess."""

import pytest
import torch
import torch.nn.functional as F

from sparse_rt.formats import CsrFormat
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.cpu.csr import pack_slices
from sparse_rt.kernels.registry import get_kernel
from tests.helpers import OTHER_INSTRUCTION_SETS, assert_close, masked_weight, run_built_for

KERNEL = get_kernel("csr_cpu_rowwise")
CONFIG = {"tasks_per_thread": 4, "unroll": 1, "batch_vectors": 1, "gemv_layout": "slices"}


def _weights() -> dict[str, torch.Tensor]:
    with_empty_rows = masked_weight(37, 53, 0.3, seed=0)
    with_empty_rows[[0, 3, 36]] = 0
    skewed = masked_weight(64, 300, 1.0, seed=1) * (torch.arange(300)[None, :] < (torch.arange(64) * 300 // 63)[:, None])
    int32_indices = torch.zeros(21, 40000)
    int32_indices[torch.arange(21), torch.randperm(40000, generator=torch.Generator().manual_seed(2))[:21]] = 1.0
    int32_indices[5, [32768, 39999, 0]] = torch.tensor([2.0, -3.0, 0.5])
    return {
        "1x1": masked_weight(1, 1, 1.0, seed=3),
        "7x13": masked_weight(7, 13, 0.4, seed=4),
        "33x65": masked_weight(33, 65, 0.2, seed=5),
        "empty_rows_int8": with_empty_rows,
        "skewed_int16": skewed,
        "all_zero": torch.zeros(19, 40),
        "all_dense": masked_weight(48, 40, 1.0, seed=6),
        "int32_indices": int32_indices,
    }


WEIGHTS = _weights()


@pytest.mark.parametrize("name", sorted(WEIGHTS))
@pytest.mark.parametrize("x_loads", ["gather", "scalar"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_slices_match_dense(name, x_loads, with_bias, activation):
    weight = WEIGHTS[name]
    bias = torch.randn(weight.shape[0]) if with_bias else None
    fmt = CsrFormat.from_dense(weight)
    config = {**CONFIG, "x_loads": x_loads}
    kwargs = {"activation": activation} if activation else {}
    torch.manual_seed(8)
    linear = KERNEL.bind(fmt, bias, config, torch.device("cpu"), **kwargs)
    assert linear.packed.slices is not None
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for x in (torch.randn(1, weight.shape[1]), torch.randn(weight.shape[1]), torch.randn(1, 1, weight.shape[1])):
            expected = F.linear(x, weight, bias)
            expected = F.gelu(expected) if activation else expected
            y = linear(x)
            assert y.shape == expected.shape and y.dtype == torch.float32
            if activation:  # GELU near 0 is tiny: an absolute floor, not relative to a tiny scale
                torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
            else:
                assert_close(y, expected, rtol=1e-5)


def test_slices_layout():
    weight = WEIGHTS["empty_rows_int8"]
    fmt = CsrFormat.from_dense(weight)
    bias = torch.randn(37)
    width = simd_width()
    slices = pack_slices(fmt.row_offsets.long(), fmt.column_indices, fmt.values, bias, width, 2)
    lengths = fmt.row_offsets.diff()
    rows = slices.slice_rows
    # every row once, longest first, -1 after the last
    assert sorted(rows[:37].tolist()) == list(range(37)) and (rows[37:] == -1).all()
    assert (lengths[rows[:37].long()].diff() <= 0).all()
    steps = slices.slice_offsets.diff() // width
    assert int(steps.sum()) * width == slices.values.numel() == slices.column_indices.numel()
    # the padded layout rebuilds W, and bias follows the lanes
    rebuilt = torch.zeros(37, 53)
    for s in range(steps.numel()):
        block = slice(int(slices.slice_offsets[s]), int(slices.slice_offsets[s + 1]))
        values = slices.values[block].view(-1, width)
        columns = slices.column_indices[block].view(-1, width).long()
        for lane in range(width):
            row = int(rows[s * width + lane])
            if row >= 0:
                rebuilt[row].index_add_(0, columns[:, lane], values[:, lane])
                assert float(slices.slice_bias[s * width + lane]) == float(bias[row])
    assert torch.equal(rebuilt, weight)
    # padding: rows sorted by length, a slice's rows are no shorter than the next slice's longest,
    # so the padding telescopes to at most the longest row times the width
    assert (steps.diff() <= 0).all()
    assert slices.values.numel() - fmt.nnz <= width * int(steps[0])


def test_configs_offer_both_layouts_and_old_configs_load():
    fmt = CsrFormat.from_dense(masked_weight(64, 96, 0.1, seed=7))
    configs = KERNEL.configs(fmt, torch.device("cpu"))
    assert configs[0]["gemv_layout"] == "slices"
    assert {(c["gemv_layout"], c["x_loads"]) for c in configs} == {("rows", "gather"), ("slices", "gather"),
                                                                  ("slices", "scalar")}
    # a config saved before gemv_layout and x_loads existed runs the row kernel
    linear = KERNEL.bind(fmt, None, {"tasks_per_thread": 4, "unroll": 2, "batch_vectors": 1}, torch.device("cpu"))
    assert linear.packed.slices is None
    x = torch.randn(1, 96)
    assert_close(linear(x), x @ fmt.to_dense().T, rtol=1e-5)
    with pytest.raises(ValueError, match="gemv_layout"):
        KERNEL.bind(fmt, None, {**CONFIG, "gemv_layout": "columns"}, torch.device("cpu"))
    with pytest.raises(ValueError, match="x_loads"):
        KERNEL.bind(fmt, None, {**CONFIG, "x_loads": "vector"}, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"expected gemv_threads in \[0, 1024\], got -1"):
        KERNEL.bind(fmt, None, {**CONFIG, "gemv_threads": -1}, torch.device("cpu"))


@pytest.mark.parametrize("layout", ["rows", "slices"])
def test_gemv_threads_caps_the_batch_one_call(layout):
    fmt = CsrFormat.from_dense(masked_weight(300, 200, 0.2, seed=9))
    torch.set_num_threads(2)
    linear = KERNEL.bind(fmt, None, {**CONFIG, "gemv_layout": layout, "gemv_threads": 1}, torch.device("cpu"))
    x = torch.randn(1, 200)
    assert_close(linear(x), x @ fmt.to_dense().T, rtol=1e-5)
    if layout == "slices":
        assert linear._launch(1) in linear._launches.values() and 2 not in linear._launches


OTHER_ISA_SCRIPT = """
import torch
from sparse_rt.formats import CsrFormat
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.registry import get_kernel
from tests.kernels.test_cpu_csr_slices import CONFIG, WEIGHTS
torch.manual_seed(0)
kernel = get_kernel("csr_cpu_rowwise")
for name, weight in WEIGHTS.items():
    fmt = CsrFormat.from_dense(weight)
    bias = torch.randn(weight.shape[0])
    for x_loads in ("gather", "scalar"):
        for activation in ({}, {"activation": "gelu"}):
            linear = kernel.bind(fmt, bias, {**CONFIG, "x_loads": x_loads}, torch.device("cpu"), **activation)
            x = torch.randn(1, weight.shape[1])
            expected = x @ weight.T + bias
            expected = torch.nn.functional.gelu(expected) if activation else expected
            error = float((linear(x) - expected).abs().max() / expected.abs().max().clamp(min=1.0))
            assert error < 1e-5, (name, x_loads, activation, error)
print(f"VL={simd_width()}")
"""


@pytest.mark.parametrize("arch, needs", OTHER_INSTRUCTION_SETS, ids=["avx2", "portable"])
def test_slices_on_other_instruction_sets(arch, needs, tmp_path):
    run_built_for(arch, needs, OTHER_ISA_SCRIPT, tmp_path, expect="VL=8")
