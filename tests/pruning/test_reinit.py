import pytest
import torch
from torch import nn

from sparse_rt.pruning.magnitude import magnitude_prune
from sparse_rt.pruning.masks import prunable_layers, weight_matrix
from sparse_rt.pruning.reinit import sign_constant_reinit


def _pruned_model() -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 7))
    initial = {name: weight_matrix(layer).clone() for name, layer in prunable_layers(model).items()}
    masks = magnitude_prune(model, 0.75)
    with torch.no_grad():  # training moves the surviving weights, flipping some signs
        for layer in prunable_layers(model).values():
            layer.parametrizations.weight.original.add_(torch.randn_like(layer.weight) * 0.5)
    return model, initial, masks


def test_kept_weights_become_signed_std_of_the_kept_initial_weights():
    model, initial, masks = _pruned_model()
    constants = sign_constant_reinit(model, initial_weights=initial)
    for name, layer in prunable_layers(model).items():
        weight, mask = weight_matrix(layer), masks[name]
        expected_c = initial[name][mask].std(correction=0).item()
        assert constants[name] == pytest.approx(expected_c)
        assert torch.equal(torch.sign(weight[mask]), torch.sign(initial[name][mask]))
        assert torch.allclose(weight[mask].abs(), torch.full_like(weight[mask], expected_c))
        assert not weight[~mask].any()
        assert not layer.parametrizations.weight.original[~mask].any()


def test_given_constant_and_current_signs_by_default():
    model, _, masks = _pruned_model()
    current = {name: weight_matrix(layer).clone() for name, layer in prunable_layers(model).items()}
    constants = sign_constant_reinit(model, constant=0.125)
    assert constants == {name: 0.125 for name in masks}
    for name, layer in prunable_layers(model).items():
        assert torch.equal(weight_matrix(layer), torch.sign(current[name]) * 0.125 * masks[name])


def test_zero_initial_weights_stay_zero_and_unmasked_layers_keep_their_zeros():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 5))
    with torch.no_grad():
        model[0].weight[:, :2] = 0.0
    sign_constant_reinit(model, constant=2.0)
    weight = model[0].weight.detach()
    assert not weight[:, :2].any()
    assert torch.equal(weight[:, 2:].abs(), torch.full((5, 4), 2.0))


def test_bad_initial_weights_are_rejected():
    model, initial, _ = _pruned_model()
    with pytest.raises(ValueError, match=r"initial_weights\['2'\]: expected shape \[7, 30\]"):
        sign_constant_reinit(model, initial_weights={**initial, "2": torch.zeros(30, 7)})
    with pytest.raises(ValueError, match="expected an entry for layer '2'"):
        sign_constant_reinit(model, initial_weights={"0": initial["0"]})
    with pytest.raises(ValueError, match="constant"):
        sign_constant_reinit(model, constant=-1.0)
