"""CPU BSR kernel, every block shape and config, against the dense product x @ W.T + b."""

import pytest
import torch

from sparse_rt.formats import BsrFormat
from sparse_rt.kernels.cpu._launch import splits_by_inputs
from sparse_rt.kernels.cpu.bsr import block_row_panels, bsr_linear_reference
from sparse_rt.kernels.cpu.configs import simd_width
from sparse_rt.kernels.registry import kernels_for
from tests.helpers import assert_close

BLOCK_SHAPES = [(1, 4), (4, 1), (8, 1), (1, 8), (4, 4), (8, 8), (16, 16), (32, 32), (3, 5)]
# leading dims of x: 1-D, batch 1, batches below / above / across SIMD tiles, and 3-D
X_SHAPES = [(), (1,), (3,), (17,), (70,), (2, 5)]


def _block_sparse(out_features: int, in_features: int, block: tuple[int, int], density: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    r, c = block
    grid = torch.rand(-(-out_features // r), -(-in_features // c), generator=generator) < density
    keep = grid.repeat_interleave(r, 0).repeat_interleave(c, 1)[:out_features, :in_features]
    return torch.randn(out_features, in_features, generator=generator) * keep


@pytest.mark.parametrize("block", BLOCK_SHAPES, ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_bsr_every_config_matches_dense(block, with_bias):
    # odd shape (padding in both dims), an empty block row and a full one
    weight = _block_sparse(70, 45, block, 0.3, seed=sum(block))
    weight[: block[0]] = 0
    weight[-1] = torch.randn(45)
    bias = torch.randn(70) if with_bias else None
    fmt = BsrFormat.from_dense(weight, block_shape=block)
    kernels = kernels_for(fmt, "cpu")
    assert [k.name for k in kernels] == ["bsr_cpu_blockrow"]
    for config in kernels[0].configs(fmt, torch.device("cpu")):
        bound = kernels[0].bind(fmt, bias, config, torch.device("cpu"))
        for lead in X_SHAPES:
            x = torch.randn(*lead, 45)
            y = bound(x)
            assert y.shape == (*lead, 70)
            assert_close(y, x @ weight.T + (0 if bias is None else bias), rtol=1e-5)


@pytest.mark.parametrize("num_threads", [1, 2, 3])
@pytest.mark.parametrize("block", [(1, 4), (16, 16), (3, 5)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_bsr_batched_split_by_tiles_or_block_rows(block, num_threads, monkeypatch):
    """Both task splits of the batched kernel (by block rows; by tiles of input rows)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: num_threads)
    weight = _block_sparse(70, 45, block, 0.3, seed=1)
    weight[: block[0]] = 0
    bias = torch.randn(70)
    fmt = BsrFormat.from_dense(weight, block_shape=block)
    (kernel,) = kernels_for(fmt, "cpu")
    splits = set()
    for batch_vectors in (1, 2, 4):
        config = {**kernel.configs(fmt, torch.device("cpu"))[0], "batch_vectors": batch_vectors}
        bound = kernel.bind(fmt, bias, config, torch.device("cpu"))
        width = batch_vectors * simd_width()
        for batch in (2, width + 3, 3 * width - 1, 5 * width + 1):
            splits.add(splits_by_inputs(batch, width, num_threads))
            x = torch.randn(batch, 45)
            assert_close(bound(x), x @ weight.T + bias, rtol=1e-5)
    assert splits == ({True} if num_threads == 1 else {True, False})


@pytest.mark.parametrize("name", ["all_zero", "all_dense"])
@pytest.mark.parametrize("block", [(1, 4), (8, 1), (16, 16)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_bsr_extreme_weights(name, block):
    weight = torch.zeros(40, 36) if name == "all_zero" else torch.randn(40, 36)
    fmt = BsrFormat.from_dense(weight, block_shape=block)
    (kernel,) = kernels_for(fmt, "cpu")
    bias = torch.randn(40)
    bound = kernel.bind(fmt, bias, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
    for batch in (1, 5, 40):
        x = torch.randn(batch, 36)
        assert_close(bound(x), x @ weight.T + bias, rtol=1e-5)


@pytest.mark.parametrize("shape", [(256, 96), (96, 256)])
@pytest.mark.parametrize("density", [0.5, 0.1])
def test_bsr_shapes_and_densities(shape, density):
    for block in [(4, 4), (16, 16)]:
        weight = _block_sparse(*shape, block, density, seed=7)
        fmt = BsrFormat.from_dense(weight, block_shape=block)
        (kernel,) = kernels_for(fmt, "cpu")
        bound = kernel.bind(fmt, None, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
        for batch in (1, 32):
            x = torch.randn(batch, shape[1])
            assert_close(bound(x), x @ weight.T, rtol=1e-5)


def test_block_row_panels_layout():
    weight = _block_sparse(8, 12, (2, 3), 0.6, seed=8)
    fmt = BsrFormat.from_dense(weight, block_shape=(2, 3))
    panels = block_row_panels(fmt)
    offsets = fmt.block_row_offsets.long()
    for block_row in range(4):
        k0, k1 = int(offsets[block_row]), int(offsets[block_row + 1])
        panel = panels[k0 * 6 : k1 * 6].reshape(2, (k1 - k0) * 3)
        # row i of the panel: row i of every kept block, side by side
        expected = fmt.blocks[k0:k1].permute(1, 0, 2).reshape(2, -1)
        assert torch.equal(panel, expected)


def test_bsr_reference_matches_dense():
    weight = _block_sparse(70, 45, (4, 4), 0.3, seed=9)
    bias = torch.randn(70)
    x = torch.randn(2, 3, 45)
    fmt = BsrFormat.from_dense(weight, block_shape=(4, 4))
    assert_close(bsr_linear_reference(x, fmt, bias), x @ weight.T + bias, rtol=1e-5)


def test_bsr_non_contiguous_input_and_errors():
    weight = _block_sparse(32, 24, (8, 8), 0.5, seed=10)
    fmt = BsrFormat.from_dense(weight, block_shape=(8, 8))
    (kernel,) = kernels_for(fmt, "cpu")
    bound = kernel.bind(fmt, None, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
    x = torch.randn(24, 6).T
    assert_close(bound(x), x @ weight.T, rtol=1e-5)
    with pytest.raises(TypeError, match="expected float32"):
        bound(torch.randn(3, 24, dtype=torch.float16))
    with pytest.raises(ValueError, match="batch_vectors"):
        kernel.bind(fmt, None, {"tasks_per_thread": 4, "batch_vectors": 3}, torch.device("cpu"))
