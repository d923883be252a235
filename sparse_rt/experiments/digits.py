"""The digits data set and the small training loop the experiments share.

scikit-learn's `load_digits` (1797 8x8 images, 10 classes, shipped with the
package, so no download): features scaled to [0, 1] then standardised with the
training split's mean and std; a stratified 80/20 split fixed by `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

StepHook = Callable[[Callable[[], torch.Tensor]], object]
"""Called after every optimizer step with a closure recomputing the loss on that step's batch."""


@dataclass(frozen=True)
class Digits:
    """Float32 features [N, 64] and int64 labels [N] of the training and test splits."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load_digits_split(seed: int = 0, test_fraction: float = 0.2) -> Digits:
    """The digits data, standardised, split stratified into train and test (deterministic in `seed`)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    train_index, test_index = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=seed, stratify=y.numpy()
    )
    train_x, test_x = x[train_index], x[test_index]
    mean, std = train_x.mean(dim=0), train_x.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return Digits((train_x - mean) / std, y[train_index], (test_x - mean) / std, y[test_index])


def mlp(sizes: tuple[int, ...], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers sizes[0] -> sizes[1] -> ... -> sizes[-1] with `activation` between them (not after the last)."""
    if len(sizes) < 2:
        raise ValueError(f"mlp sizes: expected at least (in, out), got {sizes}")
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def baked_copy(model: nn.Sequential, sizes: tuple[int, ...], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """A plain `mlp(sizes, activation)` holding `model`'s effective weights (masks baked in) and biases.

    `masks.finalize(copy.deepcopy(model))` is not used: a deep copy shares torch's
    injected parametrized class with `model`, and removing the copy's
    parametrizations would remove `model`'s masked weight too.
    """
    plain = mlp(sizes, activation)
    with torch.no_grad():
        for source, target in zip(model, plain):
            if isinstance(target, nn.Linear):
                target.weight.copy_(source.weight)
                target.bias.copy_(source.bias)
    return plain


def train(
    model: nn.Module,
    data: Digits,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    after_step: StepHook | None = None,
) -> int:
    """Minibatch cross-entropy training on `data.train_*` for `epochs` shuffled epochs; returns the steps taken."""
    model.train()
    steps = 0
    count = len(data.train_y)
    for _ in range(epochs):
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, batch_size):
            index = order[start : start + batch_size]
            inputs, targets = data.train_x[index], data.train_y[index]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
            steps += 1
            if after_step is not None:
                after_step(lambda inputs=inputs, targets=targets: F.cross_entropy(model(inputs), targets))
    return steps


def steps_per_epoch(data: Digits, batch_size: int = 64) -> int:
    """Optimizer steps in one epoch of `train`."""
    return -(-len(data.train_y) // batch_size)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows of x [N, 64] whose arg-max output is the label y [N]."""
    model.eval()
    return float((model(x).argmax(dim=1) == y).float().mean())
