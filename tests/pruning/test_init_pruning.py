import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparse_rt.pruning.init_pruning import (
    grasp_prune,
    grasp_scores,
    snip_prune,
    snip_scores,
    synflow_prune,
    synflow_scores,
)
from sparse_rt.pruning.masks import apply_masks, prunable_layers, weight_matrix
from tests.helpers import assert_close


def _model(bias: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 20, bias=bias), nn.ReLU(), nn.Linear(20, 16, bias=bias), nn.Tanh(),
                         nn.Linear(16, 5, bias=bias))


def _batch(rows: int = 24) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(rows, 12, generator=generator), torch.randint(0, 5, (rows,), generator=generator))]


def _prune(method: str, model: nn.Module, sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    if method == "snip":
        return snip_prune(model, _batch(), sparsity, scope)
    if method == "grasp":
        return grasp_prune(model, _batch(), sparsity, scope)
    return synflow_prune(model, (12,), sparsity, rounds=10, scope=scope)


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_exact_mask_density(method, scope, sparsity):
    model = _model()
    masks = _prune(method, model, sparsity, scope)
    counts = {name: int(torch.count_nonzero(weight_matrix(layer))) for name, layer in prunable_layers(model).items()}
    assert {name: int(mask.sum()) for name, mask in masks.items()} == counts
    if scope == "layer":
        for name, mask in masks.items():
            assert counts[name] == mask.numel() - round(sparsity * mask.numel())
    else:
        total = sum(mask.numel() for mask in masks.values())
        assert sum(counts.values()) == total - round(sparsity * total)


def test_snip_scores_are_gradient_times_weight():
    model = _model()
    [(x, y)] = _batch()
    F.cross_entropy(model(x), y).backward()
    expected = {name: (layer.weight.grad * layer.weight).abs() for name, layer in prunable_layers(model).items()}
    model.zero_grad()
    scores = snip_scores(model, _batch())
    for name, reference in expected.items():
        assert_close(scores[name], reference, rtol=1e-5)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_snip_keeps_the_highest_scores_and_previously_pruned_stay_pruned():
    model = _model()
    first = snip_prune(model, _batch(), 0.5, scope="global")
    scores = snip_scores(model, _batch())
    second = snip_prune(model, _batch(), 0.8, scope="global")
    for name in first:
        assert not (second[name] & ~first[name]).any()
    kept = torch.cat([scores[name][second[name]] for name in second])
    dropped = torch.cat([scores[name][first[name] & ~second[name]] for name in second])
    assert kept.min() >= dropped.max()


def test_grasp_hessian_gradient_matches_the_explicit_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    [(x, y)] = [(torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0]))]
    weights = [model[0].weight, model[2].weight]
    shapes = [w.shape for w in weights]
    flat = torch.cat([w.detach().flatten() for w in weights])

    def loss_of(vector):
        first, second = vector[:12].reshape(shapes[0]), vector[12:].reshape(shapes[1])
        hidden = torch.tanh(x @ first.T + model[0].bias)
        return F.cross_entropy((hidden @ second.T + model[2].bias) / 200.0, y)

    gradient = torch.autograd.functional.jacobian(loss_of, flat)
    hessian = torch.autograd.functional.hessian(loss_of, flat)
    expected = -(hessian @ gradient) * flat
    scores = grasp_scores(model, [(x, y)])
    assert_close(torch.cat([scores["0"].flatten(), scores["2"].flatten()]), expected, rtol=1e-4)


def test_grasp_prunes_the_highest_scores():
    model = _model()
    scores = grasp_scores(model, _batch())
    masks = grasp_prune(model, _batch(), 0.7, scope="global")
    kept = torch.cat([scores[name][masks[name]] for name in masks])
    pruned = torch.cat([scores[name][~masks[name]] for name in masks])
    assert kept.max() <= pruned.min()


def test_synflow_uses_no_data_and_restores_the_model():
    model = _model()
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    before = {name: weight_matrix(layer).clone() for name, layer in prunable_layers(model).items()}
    biases = [layer.bias.detach().clone() for layer in prunable_layers(model).values()]
    model.train()
    masks = synflow_prune(model, (12,), 0.9, rounds=7)
    assert "batches" not in inspect.signature(synflow_prune).parameters
    assert len(seen) == 7
    for inputs in seen:
        assert inputs.shape == (1, 12) and bool((inputs == 1).all())
    assert model.training and all(module.training for module in model.modules())
    for (name, layer), bias in zip(prunable_layers(model).items(), biases):
        weight = weight_matrix(layer)
        assert weight.dtype == torch.float32
        assert torch.equal(weight[masks[name]], before[name][masks[name]])
        assert not weight[~masks[name]].any()
        assert torch.equal(layer.bias.detach(), bias)


def test_synflow_scores_conserve_the_flow_in_every_layer():
    # without biases, sum over a layer of |dR/dw * w| = R for every layer (Tanaka et al., theorem 1)
    model = nn.Sequential(nn.Linear(12, 20, bias=False), nn.ReLU(), nn.Linear(20, 16, bias=False), nn.ReLU(),
                          nn.Linear(16, 5, bias=False))
    torch.manual_seed(0)
    apply_masks(model, {"2": torch.rand(16, 20) < 0.5})
    flow = torch.ones(1, 12, dtype=torch.float64)
    for layer in prunable_layers(model).values():
        flow = flow @ weight_matrix(layer).abs().double().T
    scores = synflow_scores(model, (12,))
    for name, score in scores.items():
        assert score.dtype == torch.float64
        assert float(score.sum()) == pytest.approx(float(flow.sum()), rel=1e-9), name


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="SNIP: expected at least one"):
        snip_scores(_model(), [])
    with pytest.raises(ValueError, match="scope"):
        snip_prune(_model(), _batch(), 0.5, scope="row")
    with pytest.raises(ValueError, match="temperature"):
        grasp_scores(_model(), _batch(), temperature=0.0)
    with pytest.raises(ValueError, match="SynFlow: expected at least one nn.Linear"):
        synflow_scores(nn.Sequential(nn.ReLU()), (3,))
