"""CPU dense kernels (native panel GEMM and torch's), every config, against x @ W.T + b."""

import pytest
import torch

from sparse_rt.formats import DenseFormat
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.cpu.configs import DenseOptions
from sparse_rt.kernels.cpu.dense import DenseChain, bind_dense, dense_linear, dense_linear_reference, pack_dense
from sparse_rt.kernels.registry import kernels_for
from tests.helpers import OTHER_INSTRUCTION_SETS, assert_close, run_built_for

X_SHAPES = [(), (1,), (3,), (9,), (40,), (2, 5)]


@pytest.mark.parametrize("shape", [(37, 53), (64, 300), (1, 1), (200, 7)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_dense_every_kernel_and_config(shape, with_bias):
    torch.manual_seed(sum(shape))  # seeded: a one-element product can cancel against its bias
    weight = torch.randn(*shape)
    bias = torch.randn(shape[0]) if with_bias else None
    fmt = DenseFormat.from_dense(weight)
    kernels = kernels_for(fmt, "cpu")
    assert [k.name for k in kernels] == ["dense_cpu_native", "dense_cpu_torch"]
    for kernel in kernels:
        for config in kernel.configs(fmt, torch.device("cpu")):
            bound = kernel.bind(fmt, bias, config, torch.device("cpu"))
            for lead in X_SHAPES:
                x = torch.randn(*lead, shape[1])
                y = bound(x)
                assert y.shape == (*lead, shape[0])
                assert_close(y, x @ weight.T + (0 if bias is None else bias), rtol=1e-5)


@pytest.mark.parametrize("rows", [23, 530], ids=["one_row_block", "three_row_blocks"])
def test_dense_k_blocks_and_row_tiles(rows):
    # a reduction split into blocks plus a partial last block, every row-tile height, and
    # rows past one task's block of rows (256)
    weight = torch.randn(70, 600)
    fmt = DenseFormat.from_dense(weight)
    (native, _) = kernels_for(fmt, "cpu")
    x = torch.randn(rows, 600)
    for rows_per_tile in range(1, 9):
        config = {"panels_per_task": 2, "rows_per_tile": rows_per_tile, "k_block": 256}
        assert_close(native.bind(fmt, None, config, torch.device("cpu"))(x), x @ weight.T, rtol=1e-5)


EPILOGUES = [("relu", None, False), ("relu", None, True), ("clip", (-0.5, 1.5), False), ("clip", (0.0, 6.0), True),
             (None, None, True), ("gelu", None, True)]


def epilogue_reference(x, weight, bias, activation, bounds, residual):
    y = x.double() @ weight.double().T + bias.double()
    if residual is not None:
        y = y + residual.double()
    if activation == "relu":
        return y.relu()
    if activation == "gelu":
        return torch.nn.functional.gelu(y)
    return y.clamp(*bounds) if activation == "clip" else y


@pytest.mark.parametrize("activation, bounds, with_residual", EPILOGUES,
                         ids=lambda v: str(v) if not isinstance(v, bool) else ("residual" if v else "none"))
@pytest.mark.parametrize("rows", [1, 7, 23, 530])
def test_dense_epilogue_adds_the_residual_then_activates(activation, bounds, with_residual, rows):
    # out 70: a partial panel; the one-row path, partial row tiles, several row blocks, k blocks
    weight, bias = torch.randn(70, 300), torch.randn(70)
    packed = pack_dense(DenseFormat.from_dense(weight), bias)
    x = torch.randn(rows, 300)
    residual = torch.randn(rows, 70) if with_residual else None
    expected = epilogue_reference(x, weight, bias, activation, bounds, residual)
    for options in (DenseOptions(1, 8, 0), DenseOptions(2, 3, 128)):
        assert_close(dense_linear(x, packed, options, activation, residual, bounds), expected, rtol=1e-4)


def test_dense_epilogue_errors():
    packed = pack_dense(DenseFormat.from_dense(torch.randn(8, 5)), None)
    x, options = torch.randn(3, 5), DenseOptions(1, 8, 0)
    with pytest.raises(ValueError, match=r"expected a contiguous float32 residual \[3, 8\], got float32 \[3, 7\]"):
        dense_linear(x, packed, options, None, torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"expected a contiguous float32 residual \[3, 8\], got float64 \[3, 8\]"):
        dense_linear(x, packed, options, None, torch.randn(3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="activation 'clip' needs bounds"):
        dense_linear(x, packed, options, "clip")


OTHER_ISA_SCRIPT = r"""
import torch
from sparse_rt.formats import DenseFormat
from sparse_rt.kernels.cpu.configs import DenseOptions
from sparse_rt.kernels.cpu.dense import dense_linear, pack_dense
g = torch.Generator().manual_seed(0)
for rows in (1, 13):
    w, b = torch.randn(21, 40, generator=g), torch.randn(21, generator=g)
    x, z = torch.randn(rows, 40, generator=g), torch.randn(rows, 21, generator=g)
    expected = (x.double() @ w.double().T + b.double() + z.double()).clamp(-1, 2)
    actual = dense_linear(x, pack_dense(DenseFormat.from_dense(w), b), DenseOptions(1, 4, 0), "clip", z, (-1.0, 2.0))
    assert float((actual - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
print("ok")
"""


@pytest.mark.parametrize("arch, needs", OTHER_INSTRUCTION_SETS, ids=["avx2", "portable"])
def test_dense_epilogue_other_instruction_sets(arch, needs, tmp_path):
    run_built_for(arch, needs, OTHER_ISA_SCRIPT, tmp_path)


def test_pack_dense_layout():
    weight = torch.randn(40, 6)
    packed = pack_dense(DenseFormat.from_dense(weight), torch.ones(40))
    width = 2 * simd_width()
    assert packed.panels.shape == (-(-40 // width), 6, width)
    assert torch.equal(packed.panels[0, :, 1], weight[1])
    assert packed.bias[:40].eq(1).all() and packed.bias[40:].eq(0).all()


def test_binds_of_one_weight_share_its_packed_panels():
    """A layer bound for several row ranges holds one packed copy of its weight."""
    weight, bias = DenseFormat.from_dense(torch.randn(40, 6)), torch.randn(40)
    cpu = torch.device("cpu")
    few = bind_dense(weight, bias, {"panels_per_task": 4, "rows_per_tile": 4, "k_block": 0}, cpu)
    many = bind_dense(weight, bias, {"panels_per_task": 1, "rows_per_tile": 8, "k_block": 0}, cpu, activation="relu")
    assert many.packed is few.packed
    other_bias = bind_dense(weight, bias.clone(), {"panels_per_task": 1, "rows_per_tile": 8, "k_block": 0}, cpu)
    assert other_bias.packed is not few.packed and torch.equal(other_bias.packed.panels, few.packed.panels)
    x = torch.randn(9, 6)
    assert_close(many(x), torch.relu(dense_linear_reference(x, weight, bias)))
    assert_close(few(x), dense_linear_reference(x, weight, bias))


def test_dense_reference_and_errors():
    weight = torch.randn(8, 5)
    fmt = DenseFormat.from_dense(weight)
    x = torch.randn(3, 5)
    assert_close(dense_linear_reference(x, fmt, None), x @ weight.T, rtol=1e-6)
    native = kernels_for(fmt, "cpu")[0]
    bound = native.bind(fmt, None, native.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
    with pytest.raises(TypeError, match="expected float32"):
        bound(x.double())
    with pytest.raises(ValueError, match="expected device cpu"):
        native.bind(fmt, None, native.configs(fmt, torch.device("cpu"))[0], torch.device("meta"))


def bound_native(weight, bias=None, activation=None, config=None):
    fmt = DenseFormat.from_dense(weight)
    native = kernels_for(fmt, "cpu")[0]
    config = config or native.configs(fmt, torch.device("cpu"))[0]
    extra = {"activation": activation} if activation else {}
    return native.bind(fmt, bias, config, torch.device("cpu"), **extra)


@pytest.mark.parametrize("lead", [(0,), (1,), (3,), (9,), (40,), (2, 5)], ids=str)
def test_dense_chain_equals_its_layers_one_by_one(lead):
    # odd widths, a GELU epilogue on some layers, with and without bias, a k-blocked config,
    # an all-zero and a one-column layer in the middle
    torch.manual_seed(0)
    widths = [37, 53, 1, 130, 19]
    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        weight = torch.zeros(n_out, n_in) if i == 2 else torch.randn(n_out, n_in)
        bias = torch.randn(n_out) if i % 2 == 0 else None
        config = {"panels_per_task": 1, "rows_per_tile": 3, "k_block": 16} if i == 1 else None
        layers.append(bound_native(weight, bias, "gelu" if i in (0, 3) else None, config))
    chain = DenseChain(layers)
    x = torch.randn(*lead, widths[0])
    expected = x
    for layer in layers:
        expected = layer(expected)
    y = chain(x)
    assert y.shape == (*lead, widths[-1])
    assert torch.equal(y, expected)  # the same kernels, the same order of sums


def test_dense_chain_checks_its_layers_and_input():
    a, b = bound_native(torch.randn(6, 4)), bound_native(torch.randn(3, 5))
    with pytest.raises(ValueError, match="layer 0 gives 6 features but layer 1 takes 5"):
        DenseChain([a, b])
    with pytest.raises(ValueError, match="at least 2 layers"):
        DenseChain([a])
    chain = DenseChain([a, bound_native(torch.randn(3, 6))])
    with pytest.raises(ValueError, match=r"expected float32 \[\.\.\., 4\]"):
        chain(torch.randn(2, 5))
    with pytest.raises(TypeError, match="expected float32"):
        chain(torch.randn(2, 4, dtype=torch.float64))
