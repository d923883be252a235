"""CPU dense kernels (native panel GEMM and torch's), every config, against x @ W.T + b."""

import pytest
import torch

from sparse_rt.formats import DenseFormat
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.cpu.dense import DenseChain, dense_linear_reference, pack_dense
from sparse_rt.kernels.registry import kernels_for
from tests.helpers import assert_close

X_SHAPES = [(), (1,), (3,), (9,), (40,), (2, 5)]


@pytest.mark.parametrize("shape", [(37, 53), (64, 300), (1, 1), (200, 7)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_dense_every_kernel_and_config(shape, with_bias):
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


def test_pack_dense_layout():
    weight = torch.randn(40, 6)
    packed = pack_dense(DenseFormat.from_dense(weight), torch.ones(40))
    width = 2 * simd_width()
    assert packed.panels.shape == (-(-40 // width), 6, width)
    assert torch.equal(packed.panels[0, :, 1], weight[1])
    assert packed.bias[:40].eq(1).all() and packed.bias[40:].eq(0).all()


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
