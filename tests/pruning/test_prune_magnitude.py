import pytest
import torch
from torch import nn

from sparse_rt.pruning.magnitude import magnitude_prune, select_top
from sparse_rt.pruning.masks import apply_masks, prunable_layers, weight_matrix


def _model(scales=(1.0, 1.0, 1.0)) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(31, 23), nn.Tanh(), nn.Linear(23, 17), nn.Tanh(), nn.Conv2d(17, 7, 1))
    with torch.no_grad():
        for layer, scale in zip(prunable_layers(model).values(), scales, strict=True):
            layer.weight.mul_(scale)
    return model


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.97, 1.0])
def test_layerwise_exact_density_keeps_largest(sparsity):
    model = _model()
    dense = {name: weight_matrix(layer).clone() for name, layer in prunable_layers(model).items()}
    masks = magnitude_prune(model, sparsity, scope="layer")
    for name, layer in prunable_layers(model).items():
        weight = weight_matrix(layer)
        numel = weight.numel()
        assert torch.count_nonzero(weight) == numel - round(sparsity * numel), name
        kept, pruned = dense[name][masks[name]].abs(), dense[name][~masks[name]].abs()
        if kept.numel() and pruned.numel():
            assert kept.min() >= pruned.max()


def test_global_scope_uses_one_threshold_across_layers():
    model = _model(scales=(1.0, 10.0, 0.1))
    dense = {name: weight_matrix(layer).clone() for name, layer in prunable_layers(model).items()}
    masks = magnitude_prune(model, 0.8, scope="global")
    total = sum(mask.numel() for mask in masks.values())
    assert sum(int(mask.sum()) for mask in masks.values()) == total - round(0.8 * total)
    kept = torch.cat([dense[name][mask].abs() for name, mask in masks.items()])
    pruned = torch.cat([dense[name][~mask].abs() for name, mask in masks.items()])
    assert kept.min() >= pruned.max()
    density = {name: mask.float().mean().item() for name, mask in masks.items()}
    assert density["2"] > 3 * density["0"] and density["2"] > 3 * density["4"]


def test_global_and_layerwise_differ_on_unequal_layers():
    layerwise = magnitude_prune(_model(scales=(1.0, 10.0, 1.0)), 0.5, scope="layer")
    global_ = magnitude_prune(_model(scales=(1.0, 10.0, 1.0)), 0.5, scope="global")
    assert layerwise["2"].float().mean() == pytest.approx(0.5, abs=0.01)
    assert global_["2"].float().mean() > 0.85
    assert global_["0"].float().mean() < 0.3


def test_pruning_again_only_removes_more():
    model = _model()
    first = magnitude_prune(model, 0.5)
    with torch.no_grad():
        for layer in prunable_layers(model).values():
            layer.parametrizations.weight.original.add_(torch.randn_like(layer.weight))
    second = magnitude_prune(model, 0.75)
    for name in first:
        assert not torch.any(second[name] & ~first[name]), name
        assert second[name].sum() == second[name].numel() - round(0.75 * second[name].numel())


@pytest.mark.parametrize("pruned_half", ["first", "second"])
def test_ties_at_zero_never_revive_pruned_weights(pruned_half):
    layer = nn.Linear(40, 30)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[:, 5::10] = 1.0
    mask = torch.zeros(30, 40, dtype=torch.bool)
    mask[:, 20:] = True
    if pruned_half == "second":
        mask = mask.flip(1)
    apply_masks(layer, {"": mask})
    again = magnitude_prune(layer, 0.5)[""]
    assert torch.equal(again, mask)
    more = magnitude_prune(layer, 0.6)[""]
    assert not torch.any(more & ~mask)


def test_select_top_validates():
    scores = {"a": torch.rand(3, 4)}
    with pytest.raises(ValueError, match=r"sparsity: expected a fraction in \[0, 1\], got 1.5"):
        select_top(scores, 1.5)
    with pytest.raises(ValueError, match=r"scope: expected one of \('layer', 'global'\), got 'row'"):
        select_top(scores, 0.5, scope="row")
