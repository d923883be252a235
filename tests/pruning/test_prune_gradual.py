import pytest
import torch
from torch import nn

from sparse_rt.pruning.gradual import CubicSchedule, GradualPruner
from sparse_rt.pruning.masks import densities, get_masks


def test_cubic_schedule_values_at_known_steps():
    schedule = CubicSchedule(final_sparsity=0.8, start_step=10, end_step=110, frequency=10)
    expected = {
        0: 0.0,
        9: 0.0,
        10: 0.0,
        30: 0.8 - 0.8 * 0.8**3,
        35: 0.8 - 0.8 * 0.8**3,
        60: 0.8 - 0.8 * 0.5**3,
        100: 0.8 - 0.8 * 0.1**3,
        110: 0.8,
        1000: 0.8,
    }
    for step, sparsity in expected.items():
        assert schedule.sparsity(step) == pytest.approx(sparsity, abs=1e-12), step
    with_initial = CubicSchedule(
        final_sparsity=0.9, start_step=0, end_step=4, frequency=1, initial_sparsity=0.5
    )
    assert [with_initial.sparsity(t) for t in range(5)] == pytest.approx(
        [0.5, 0.9 - 0.4 * 0.75**3, 0.9 - 0.4 * 0.5**3, 0.9 - 0.4 * 0.25**3, 0.9]
    )


def test_pruning_steps():
    schedule = CubicSchedule(final_sparsity=0.5, start_step=5, end_step=27, frequency=10)
    assert [t for t in range(40) if schedule.is_pruning_step(t)] == [5, 15, 25, 27]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(final_sparsity=1.2, start_step=0, end_step=1),
            r"sparsity: expected a fraction in \[0, 1\], got 1.2",
        ),
        (
            dict(final_sparsity=0.5, start_step=3, end_step=1),
            "expected 0 <= start_step <= end_step, got 3 and 1",
        ),
        (dict(final_sparsity=0.5, start_step=0, end_step=1, frequency=0), "expected frequency >= 1, got 0"),
        (
            dict(final_sparsity=0.5, start_step=0, end_step=1, initial_sparsity=0.6),
            "initial_sparsity <= final",
        ),
    ],
)
def test_schedule_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CubicSchedule(**kwargs)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_gradual_pruner_follows_the_schedule_during_training(scope):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 10))
    schedule = CubicSchedule(final_sparsity=0.9, start_step=3, end_step=23, frequency=4)
    pruner = GradualPruner(model, schedule, scope=scope)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    previous = None
    for step in range(1, 31):
        loss = model(torch.randn(16, 20)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
        assert pruner.step_count == step and pruner.sparsity == schedule.sparsity(step)
        total = sum(w.numel() for w in (model[0].weight, model[2].weight))
        nonzero = sum(int(torch.count_nonzero(w)) for w in (model[0].weight, model[2].weight))
        if scope == "layer":
            for name, density in densities(model).items():
                assert density == pytest.approx(1 - schedule.sparsity(step), abs=1 / 400), (step, name)
        else:
            assert nonzero == total - round(schedule.sparsity(step) * total), step
        masks = get_masks(model)
        if previous:
            for name, mask in masks.items():
                assert not torch.any(mask & ~previous[name]), (step, name)
        previous = masks
    assert set(get_masks(model)) == ({"0", "2"})
    final = pruner.finalize()
    assert type(final[0]) is nn.Linear
    assert sum(int(torch.count_nonzero(layer.weight)) for layer in (final[0], final[2])) == round(0.1 * 1200)


def test_gradual_block_pruning_keeps_whole_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16))
    pruner = GradualPruner(
        model, CubicSchedule(0.75, start_step=0, end_step=6, frequency=2), block_shape=(4, 8)
    )
    for _ in range(6):
        pruner.step()
    blocks = (model[0].weight != 0).reshape(4, 4, 4, 8).permute(0, 2, 1, 3).reshape(4, 4, 32)
    assert torch.all(blocks.all(dim=2) | ~blocks.any(dim=2))
    assert int(blocks.all(dim=2).sum()) == 4
