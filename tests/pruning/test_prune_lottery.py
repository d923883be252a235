import pytest
import torch
from torch import nn

from sparse_rt.pruning.lottery import LotteryTicket, imp_sparsities
from sparse_rt.pruning.magnitude import magnitude_masks
from sparse_rt.pruning.masks import get_masks


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 3))


def _train(model: nn.Module, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        x = torch.randn(32, 12, generator=generator)
        loss = (model(x) - x[:, :3]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        "w0": model[0].weight.detach().clone(),
        "b0": model[0].bias.detach().clone(),
        "w3": model[3].weight.detach().clone(),
        "running_mean": model[1].running_mean.clone(),
    }


@pytest.mark.parametrize("rewind_step", [0, 7])
def test_rewinding_resets_survivors_to_the_rewind_point(rewind_step):
    model = _model()
    ticket = LotteryTicket(model)
    _train(model, rewind_step, seed=1)
    ticket.set_rewind_point()
    saved = _snapshot(model)
    _train(model, 20, seed=2)
    trained = _snapshot(model)
    expected_masks = magnitude_masks(model, 0.6)
    masks = ticket.prune_and_rewind(0.6)
    for name in ("0", "3"):
        assert torch.equal(masks[name], expected_masks[name])
    rewound = _snapshot(model)
    assert torch.equal(rewound["w0"], torch.where(masks["0"], saved["w0"], 0.0))
    assert torch.equal(rewound["w3"], torch.where(masks["3"], saved["w3"], 0.0))
    assert torch.equal(rewound["b0"], saved["b0"]) and not torch.equal(trained["b0"], saved["b0"])
    assert torch.equal(rewound["running_mean"], saved["running_mean"])
    assert int(masks["0"].sum()) == 288 - round(0.6 * 288)


def test_iterative_rounds_nest_and_reach_the_final_sparsity():
    model = _model()
    ticket = LotteryTicket(model, scope="global")
    ticket.set_rewind_point()
    previous = None
    for round_, sparsity in enumerate(imp_sparsities(0.9, rounds=3)):
        _train(model, 15, seed=10 + round_)
        masks = ticket.prune_and_rewind(sparsity)
        assert set(get_masks(model)) == {"0", "3"}
        if previous is not None:
            for name in masks:
                assert not torch.any(masks[name] & ~previous[name])
        previous = masks
    kept = sum(int(mask.sum()) for mask in previous.values())
    assert kept == 360 - round(0.9 * 360)


def test_imp_sparsities_prune_a_constant_fraction_per_round():
    assert imp_sparsities(0.875, rounds=3) == pytest.approx([0.5, 0.75, 0.875])
    assert imp_sparsities(0.3, rounds=1) == pytest.approx([0.3])


def test_prune_without_rewind_point_raises():
    with pytest.raises(ValueError, match=r"expected set_rewind_point\(\) before prune_and_rewind\(\)"):
        LotteryTicket(_model()).prune_and_rewind(0.5)
