import pytest
import torch
from torch import nn

from sparse_rt.formats.bsr import BsrFormat
from sparse_rt.formats.nm import NmFormat
from sparse_rt.pruning.magnitude import magnitude_prune
from sparse_rt.pruning.masks import apply_masks, finalize
from sparse_rt.pruning.structured import block_masks, block_norms, block_prune, nm_masks, nm_prune


def _linear(out_features: int, in_features: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features)


@pytest.mark.parametrize("shape", [(64, 48), (30, 50), (7, 129)])
@pytest.mark.parametrize("block_shape", [(4, 4), (8, 1), (1, 8), (3, 5), (16, 16)])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_block_pruning_converts_exactly_to_bsr(shape, block_shape, sparsity):
    layer = _linear(*shape)
    dense = layer.weight.detach().clone()
    block_prune(layer, sparsity, block_shape)
    finalize(layer)
    weight = layer.weight.detach()
    grid = (-(-shape[0] // block_shape[0]), -(-shape[1] // block_shape[1]))
    nblocks = grid[0] * grid[1]
    bsr = BsrFormat.from_dense(weight, block_shape=block_shape)
    assert bsr.block_column_indices.numel() == nblocks - round(sparsity * nblocks)
    assert torch.equal(bsr.to_dense(), weight)
    norms = block_norms(dense, block_shape)
    kept = block_norms(weight, block_shape) > 0
    assert torch.equal(block_norms(weight, block_shape)[kept], norms[kept])
    assert norms[kept].min() >= norms[~kept].max()


def test_block_norms_of_padded_edge_blocks():
    weight = torch.arange(15.0).reshape(3, 5)
    norms = block_norms(weight, (2, 3))
    expected = torch.tensor(
        [
            [torch.tensor([0.0, 1, 2, 5, 6, 7]).norm(), torch.tensor([3.0, 4, 8, 9]).norm()],
            [torch.tensor([10.0, 11, 12]).norm(), torch.tensor([13.0, 14]).norm()],
        ]
    )
    torch.testing.assert_close(norms, expected)


@pytest.mark.parametrize("dead_columns", [(0, 1), (1, 2)])
def test_block_ties_at_zero_never_revive_pruned_blocks(dead_columns):
    layer = nn.Linear(16, 16, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, 12:] = 1.0  # block column 3 is nonzero, block columns 0-2 are zero
    alive = torch.ones(4, 4, dtype=torch.bool)
    alive[:, list(dead_columns)] = False  # 8 of the 16 blocks pruned, all of them zero
    mask = alive.repeat_interleave(4, 0).repeat_interleave(4, 1)
    apply_masks(layer, {"": mask})
    assert torch.equal(block_masks(layer, 0.5, (4, 4))[""], mask)
    assert not torch.any(block_masks(layer, 0.75, (4, 4))[""] & ~mask)


@pytest.mark.parametrize("dead", [(0, 1), (1, 2)])
def test_nm_ties_at_zero_never_revive_pruned_weights(dead):
    layer = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, 3] = 1.0
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[:, list(dead)] = False
    apply_masks(layer, {"": mask})
    assert torch.equal(nm_masks(layer, 2, 4)[""], mask)


def test_global_block_scope_counts_blocks_over_all_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 32))
    with torch.no_grad():
        model[1].weight.mul_(100.0)
    masks = block_masks(model, 0.5, (4, 4), scope="global")
    blocks = {name: block_norms(mask.float(), (4, 4)) > 0 for name, mask in masks.items()}
    assert int(blocks["0"].sum() + blocks["1"].sum()) == 32
    assert bool(blocks["1"].all())


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (3, 3)])
@pytest.mark.parametrize("in_features", [32, 37])
def test_nm_pruning_converts_exactly_to_nm(n, m, in_features):
    layer = _linear(11, in_features)
    dense = layer.weight.detach().clone()
    nm_prune(layer, n, m)
    finalize(layer)
    weight = layer.weight.detach()
    groups = -(-in_features // m)
    padded = torch.nn.functional.pad(weight, (0, groups * m - in_features)).reshape(11, groups, m)
    full_groups = in_features // m
    assert torch.all((padded[:, :full_groups] != 0).sum(dim=2) == n)
    assert torch.all((padded != 0).sum(dim=2) <= n)
    nm = NmFormat.from_dense(weight, n=n, m=m)
    assert torch.equal(nm.to_dense(), weight)
    dense_groups = torch.nn.functional.pad(dense.abs(), (0, groups * m - in_features)).reshape(11, groups, m)
    kept = padded != 0
    smallest_kept = torch.where(kept, dense_groups, torch.inf).amin(dim=2)
    largest_pruned = torch.where(kept, -torch.inf, dense_groups).amax(dim=2)
    assert torch.all(smallest_kept >= largest_pruned)


def test_nm_after_unstructured_pruning_still_fits():
    layer = _linear(8, 16)
    magnitude_prune(layer, 0.7)
    masks = nm_masks(layer, 2, 4)
    nm_prune(layer, 2, 4)
    finalize(layer)
    assert torch.all(layer.weight[~masks[""]] == 0)
    assert torch.equal(NmFormat.from_dense(layer.weight.detach(), n=2, m=4).to_dense(), layer.weight.detach())


def test_structured_validation():
    layer = _linear(4, 8)
    with pytest.raises(
        ValueError, match=r"block_shape: expected two positive integers \(r, c\), got \(0, 4\)"
    ):
        block_prune(layer, 0.5, (0, 4))
    with pytest.raises(ValueError, match="N:M pruning: expected integers 1 <= n <= m, got n=5, m=4"):
        nm_prune(layer, 5, 4)
