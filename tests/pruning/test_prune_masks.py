import pytest
import torch
from torch import nn

from sparse_rt.pruning.magnitude import magnitude_prune
from sparse_rt.pruning.masks import (
    apply_masks,
    densities,
    finalize,
    get_masks,
    prunable_layers,
    weight_matrix,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(6, 12, kernel_size=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 3 * 3, 17),
        nn.ReLU(),
        nn.Linear(17, 5),
    )


def test_apply_masks_zeroes_exactly_the_masked_entries():
    layer = nn.Linear(13, 9)
    mask = torch.rand(9, 13, generator=torch.Generator().manual_seed(1)) < 0.3
    apply_masks(layer, {"": mask})
    weight = weight_matrix(layer)
    assert torch.all(weight[~mask] == 0)
    assert torch.all(layer.parametrizations.weight.original.detach()[~mask] == 0)
    assert torch.count_nonzero(weight) == mask.sum()
    assert densities(layer)[""] == pytest.approx(mask.float().mean().item())
    assert torch.equal(get_masks(layer)[""], mask)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda params: torch.optim.Adam(params, lr=1e-2),
        lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd_momentum_wd", "adam", "adamw"],
)
def test_masks_survive_optimizer_steps(make_optimizer):
    model = _model()
    masks = magnitude_prune(model, 0.7)
    before = {name: weight_matrix(layer).clone() for name, layer in prunable_layers(model).items()}
    optimizer = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(2)
    for _ in range(15):
        x = torch.randn(8, 6, 3, 3, generator=generator)
        loss = model(x).pow(2).mean() + model(x).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, layer in prunable_layers(model).items():
        weight = weight_matrix(layer)
        assert torch.all(weight[~masks[name]] == 0), name
        assert not torch.equal(weight[masks[name]], before[name][masks[name]]), f"{name} did not train"
    assert densities(model) == pytest.approx(
        {name: mask.float().mean().item() for name, mask in masks.items()}
    )


def test_finalize_leaves_plain_layers_with_the_same_function():
    model = _model()
    masks = magnitude_prune(model, 0.5)
    x = torch.randn(4, 6, 3, 3)
    expected = model(x)
    finalize(model)
    assert type(model[0]) is nn.Conv2d and type(model[3]) is nn.Linear and type(model[5]) is nn.Linear
    assert sorted(model.state_dict()) == sorted(_model().state_dict())
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    for name, layer in prunable_layers(model).items():
        assert isinstance(layer.weight, nn.Parameter)
        assert torch.equal(weight_matrix(layer) != 0, masks[name])


def test_filter_and_layer_kinds():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 8, 1, groups=2), nn.Linear(4, 2)
    )
    assert list(prunable_layers(model)) == ["0", "1", "3"]  # grouped convs are not
    chosen = prunable_layers(model, lambda module, name: isinstance(module, nn.Conv2d))
    assert list(chosen) == ["0", "1"]
    masks = magnitude_prune(model, 0.5, filter_fn=lambda module, name: name in ("0", "1"))
    assert list(masks) == ["0", "1"] and masks["0"].shape == (4, 3) and masks["1"].shape == (4, 3 * 3 * 4)
    assert densities(model) == {"0": 0.5, "1": 0.5, "3": 1.0}


def test_apply_masks_errors_name_the_layer():
    model = nn.Sequential(nn.Linear(4, 3), nn.Conv2d(2, 4, 3, groups=2))
    with pytest.raises(ValueError, match=r"mask of layer '0': expected shape \[3, 4\], got \[4, 3\]"):
        apply_masks(model, {"0": torch.ones(4, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"mask of layer '0': expected dtype torch.bool, got torch.float32"):
        apply_masks(model, {"0": torch.ones(3, 4)})
    with pytest.raises(
        ValueError,
        match=r"layer '1': expected nn.Linear or nn.Conv2d with groups=1, got Conv2d\(2, 4, kernel_size=\(3, 3\)",
    ):
        apply_masks(model, {"1": torch.ones(4, 9, dtype=torch.bool)})
    with pytest.raises(ValueError, match="magnitude pruning: expected at least one"):
        magnitude_prune(nn.Sequential(nn.ReLU()), 0.5)
