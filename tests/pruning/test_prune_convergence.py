"""End-to-end checks that the pruners and structured layers train to useful models."""

import pytest
import torch
from torch import nn

from sparse_rt.pruning.gradual import CubicSchedule, GradualPruner
from sparse_rt.pruning.lottery import LotteryTicket, imp_sparsities
from sparse_rt.pruning.masks import apply_masks, densities, finalize
from sparse_rt.pruning.permuted import PermutedBlockLinear


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one intra-op thread is fastest and does not stall on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    features, labels = datasets.load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        features / 16.0, labels, test_size=0.3, random_state=0, stratify=labels
    )
    return (
        torch.tensor(x_train, dtype=torch.float32),
        torch.tensor(y_train),
        torch.tensor(x_test, dtype=torch.float32),
        torch.tensor(y_test),
    )


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def _train(model, digits, steps: int, seed: int, pruner: GradualPruner | None = None) -> None:
    x_train, y_train = digits[0], digits[1]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = torch.randint(0, len(x_train), (64,), generator=generator)
        loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if pruner is not None:
            pruner.step()


def _accuracy(model, digits) -> float:
    with torch.no_grad():
        return 100.0 * (model(digits[2]).argmax(dim=1) == digits[3]).float().mean().item()


@pytest.mark.slow
def test_gradual_pruning_to_90_percent_keeps_digits_accuracy(digits):
    dense = _mlp(0)
    _train(dense, digits, 1500, seed=0)
    pruned = _mlp(0)
    schedule = CubicSchedule(final_sparsity=0.9, start_step=150, end_step=900, frequency=50)
    _train(pruned, digits, 1500, seed=0, pruner=GradualPruner(pruned, schedule))
    finalize(pruned)
    assert densities(pruned) == {
        "0": pytest.approx(0.1, abs=1e-4),
        "2": pytest.approx(0.1, abs=1e-4),
        "4": 0.1,
    }
    dense_accuracy, pruned_accuracy = _accuracy(dense, digits), _accuracy(pruned, digits)
    assert dense_accuracy > 95.0
    assert pruned_accuracy >= dense_accuracy - 1.5, (dense_accuracy, pruned_accuracy)


@pytest.mark.slow
def test_lottery_ticket_beats_random_reinitialisation_of_its_mask(digits):
    steps = 300
    ticket_accuracies, random_accuracies = [], []
    for seed in range(3):
        model = _mlp(seed)
        ticket = LotteryTicket(model)
        ticket.set_rewind_point()
        for round_, sparsity in enumerate(imp_sparsities(0.9, rounds=3)):
            _train(model, digits, steps, seed=100 * seed + round_)
            masks = ticket.prune_and_rewind(sparsity)
        _train(model, digits, steps, seed=1000 + seed)
        ticket_accuracies.append(_accuracy(model, digits))
        reinitialised = _mlp(seed + 50)
        apply_masks(reinitialised, masks)
        _train(reinitialised, digits, steps, seed=1000 + seed)
        random_accuracies.append(_accuracy(reinitialised, digits))
        assert sum(int(mask.sum()) for mask in masks.values()) == sum(
            mask.numel() - round(0.9 * mask.numel()) for mask in masks.values()
        )
    ticket_mean = sum(ticket_accuracies) / 3
    random_mean = sum(random_accuracies) / 3
    assert ticket_mean > random_mean, (ticket_accuracies, random_accuracies)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["permutation", "rank2"])
def test_permuted_block_layer_learns_linear_maps(target):
    generator = torch.Generator().manual_seed(0)
    if target == "permutation":
        matrix = torch.eye(128)[torch.randperm(128, generator=generator)]
        orthogonality = 1.0
    else:
        matrix = (
            torch.randn(128, 2, generator=generator) @ torch.randn(2, 128, generator=generator) / 128**0.5
        )
        orthogonality = 0.0
    steps = 800
    layer = PermutedBlockLinear(128, 128, depth=24, n=256, generator=torch.Generator().manual_seed(1))
    assert layer.blocks.numel() < matrix.numel()
    optimizer = torch.optim.Adam(layer.parameters(), lr=3e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        x = torch.randn(64, 128, generator=generator)
        y = x @ matrix.T
        loss = (layer(x) - y).pow(2).mean() / y.pow(2).mean() + orthogonality * layer.regularizer()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    x = torch.randn(4096, 128, generator=generator)
    with torch.no_grad():
        relative_mse = ((layer(x) - x @ matrix.T).pow(2).sum() / (x @ matrix.T).pow(2).sum()).item()
    assert relative_mse < 1e-3
    weight = layer.to_format().to_dense()
    torch.testing.assert_close(weight, matrix, rtol=0, atol=0.1)
