import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_rt.pruning.dst import (
    SET,
    CosineDropSchedule,
    RigL,
    erk_densities,
    layer_keep_counts,
    random_masks,
)
from sparse_rt.pruning.masks import get_masks, prunable_layers, trainable_weight, weight_matrix

SHAPES = {"a": (300, 64), "b": (100, 300), "c": (10, 100)}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 6))


def _data(rows: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(rows, 24, generator=generator), torch.randint(0, 6, (rows,), generator=generator)


@pytest.mark.parametrize("density", [0.01, 0.05, 0.1, 0.3, 0.6])
def test_erk_densities_hit_the_target_and_follow_the_erk_ratio(density):
    densities = erk_densities(SHAPES, density)
    numels = {name: o * i for name, (o, i) in SHAPES.items()}
    assert sum(densities[name] * numels[name] for name in SHAPES) == pytest.approx(density * sum(numels.values()))
    free = {name: d for name, d in densities.items() if d < 1.0}
    ratios = {name: d / ((SHAPES[name][0] + SHAPES[name][1]) / numels[name]) for name, d in free.items()}
    assert max(ratios.values()) == pytest.approx(min(ratios.values()))
    assert all(0.0 < d <= 1.0 for d in densities.values())


def test_erk_caps_dense_layers_at_one_and_rescales_the_rest():
    shapes = {"small": (10, 100), "big": (1000, 1000)}
    densities = erk_densities(shapes, 0.05)
    # uncapped, "small" would get 0.11 / 0.002 times the density of "big", above 1
    assert densities["small"] == 1.0
    assert densities["big"] == pytest.approx((0.05 * 1_001_000 - 1000) / 1_000_000)


@pytest.mark.parametrize("distribution", ["erk", "uniform"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.95, 0.98, 1.0])
def test_keep_counts_add_up_exactly(distribution, sparsity):
    counts = layer_keep_counts(SHAPES, sparsity, distribution)
    numels = {name: o * i for name, (o, i) in SHAPES.items()}
    if distribution == "uniform":
        assert counts == {name: n - round(sparsity * n) for name, n in numels.items()}
    total = sum(numels.values())
    if distribution == "erk":
        assert sum(counts.values()) == total - round(sparsity * total)
    masks = random_masks(SHAPES, sparsity, distribution, torch.Generator().manual_seed(0))
    assert {name: int(mask.sum()) for name, mask in masks.items()} == counts
    assert all(mask.shape == SHAPES[name] for name, mask in masks.items())


def test_cosine_schedule_values():
    schedule = CosineDropSchedule(end_step=1000, drop_fraction=0.3, update_interval=100)
    assert schedule.fraction(0) == pytest.approx(0.3)
    assert schedule.fraction(500) == pytest.approx(0.15)
    assert schedule.fraction(250) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert schedule.fraction(1000) == 0.0 and schedule.fraction(5000) == 0.0
    assert [t for t in range(1200) if schedule.is_update_step(t)] == list(range(100, 1000, 100))


def _train(model, trainer, optimizer, steps):
    x, y = _data()
    updates = 0
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        updates += trainer.step(lambda: F.cross_entropy(model(x), y))
    return updates


@pytest.mark.parametrize("method", [SET, RigL])
def test_density_stays_constant_while_masks_move(method):
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = method(model, 0.8, CosineDropSchedule(end_step=40, update_interval=5), optimizer=optimizer,
                     generator=torch.Generator().manual_seed(0))
    start = get_masks(model)
    counts = {name: int(mask.sum()) for name, mask in start.items()}
    total = sum(mask.numel() for mask in start.values())
    assert sum(counts.values()) == total - round(0.8 * total)
    assert _train(model, trainer, optimizer, 60) == 7
    end = get_masks(model)
    assert {name: int(mask.sum()) for name, mask in end.items()} == counts
    assert any((end[name] != start[name]).any() for name in end)
    for name, layer in prunable_layers(model).items():
        assert int(torch.count_nonzero(weight_matrix(layer))) <= counts[name]
        assert not weight_matrix(layer)[~end[name]].any()


def test_rigl_regrows_exactly_the_highest_gradient_positions():
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    trainer = RigL(model, 0.7, CosineDropSchedule(end_step=100, update_interval=10), optimizer=optimizer)
    _train(model, trainer, optimizer, 5)
    before = get_masks(model)
    # the reference: a plain dense copy holding the same effective weights
    dense = _model()
    with torch.no_grad():
        for name, layer in prunable_layers(dense).items():
            layer.weight.copy_(model.get_submodule(name).weight)
            layer.bias.copy_(model.get_submodule(name).bias)
    x, y = _data()
    F.cross_entropy(dense(x), y).backward()
    expected_grown = {}
    for name, layer in prunable_layers(dense).items():
        mask = before[name]
        active, moved = int(mask.sum()), round(0.25 * int(mask.sum()))
        magnitude = layer.weight.detach().abs().masked_fill(~mask, -1.0).flatten()
        kept = torch.zeros(mask.numel(), dtype=torch.bool)
        kept[magnitude.argsort(descending=True)[: active - moved]] = True
        gradient = layer.weight.grad.abs().flatten().masked_fill(kept, -1.0)
        grown = torch.zeros(mask.numel(), dtype=torch.bool)
        grown[gradient.argsort(descending=True)[:moved]] = True
        expected_grown[name] = grown.reshape(mask.shape)
        assert kept.reshape(mask.shape).logical_and(mask).sum() == active - moved
    grown = trainer.update(0.25, lambda: F.cross_entropy(model(x), y))
    after = get_masks(model)
    for name, layer in prunable_layers(model).items():
        assert torch.equal(grown[name], expected_grown[name]), name
        assert int(after[name].sum()) == int(before[name].sum())
        assert not weight_matrix(layer)[grown[name]].any()
        state = optimizer.state[trainable_weight(layer)]
        assert not state["exp_avg"][grown[name]].any() and not state["exp_avg_sq"][grown[name]].any()


def test_set_regrown_weights_start_at_zero_and_kept_ones_are_untouched():
    model = _model()
    trainer = SET(model, 0.6, CosineDropSchedule(end_step=100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for layer in prunable_layers(model).values():
            trainable_weight(layer).add_(0.01)  # no exact zeros among the active weights
    before = {name: weight_matrix(layer).clone() for name, layer in prunable_layers(model).items()}
    masks_before = get_masks(model)
    grown = trainer.update(0.3)
    for name, layer in prunable_layers(model).items():
        weight, mask = weight_matrix(layer), get_masks(model)[name]
        survivors = mask & masks_before[name] & ~grown[name]
        assert torch.equal(weight[survivors], before[name][survivors])
        assert not weight[grown[name]].any()
        assert int(survivors.sum()) == int(masks_before[name].sum()) - round(0.3 * int(masks_before[name].sum()))


def test_rigl_needs_the_loss_closure():
    model = _model()
    trainer = RigL(model, 0.5, CosineDropSchedule(end_step=10, update_interval=1))
    with pytest.raises(ValueError, match="RigL update: expected a loss_closure"):
        trainer.step()


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match=r"SET update: expected 0 <= drop_fraction <= 1, got 1.5"):
        SET(_model(), 0.5, CosineDropSchedule(end_step=10)).update(1.5)
    with pytest.raises(ValueError, match="drop_fraction"):
        CosineDropSchedule(end_step=10, drop_fraction=0.0)
    with pytest.raises(ValueError, match="distribution"):
        layer_keep_counts(SHAPES, 0.5, "normal")
    with pytest.raises(ValueError, match="sparsity"):
        layer_keep_counts(SHAPES, 1.5)
