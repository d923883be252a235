"""sparsify(): in-place swap of linear layers for sparse_rt kernels inside a torch model."""

import pytest
import torch
from torch import nn

import sparse_rt
from sparse_rt.pruning.butterfly import ButterflyLinear
from sparse_rt.pruning.magnitude import magnitude_prune
from sparse_rt.pruning.permuted import PermutedBlockLinear
from sparse_rt.sparsify import SparseLinear, SparsifyConfig
from tests.helpers import assert_close


def pruned_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 256), nn.GELU(), nn.Linear(256, 64), nn.GELU(), nn.Linear(64, 10))
    magnitude_prune(model, 0.9)  # masks still attached: sparsify reads the masked weight
    return model.eval()


@pytest.mark.parametrize("shape", [(96,), (5, 96), (2, 7, 96)], ids=["1d", "2d", "3d"])
def test_sparsified_model_gives_the_same_outputs(shape):
    model = pruned_mlp()
    x = torch.randn(*shape)
    with torch.inference_mode():
        expected = model(x)
        sparse_rt.sparsify(model)
        actual = model(x)
    assert all(isinstance(model[i], SparseLinear) for i in (0, 2, 4))
    assert model[0].choice.weight.name != "dense"
    assert_close(actual, expected)


def test_filter_chooses_the_layers_and_config_is_used():
    model = pruned_mlp()
    sparse_rt.sparsify(model, SparsifyConfig(batch_size=32), filter_fn=lambda m, name: name != "4")
    assert isinstance(model[0], SparseLinear) and isinstance(model[2], SparseLinear)
    assert not isinstance(model[4], SparseLinear)


def test_structured_layers_keep_their_format():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(ButterflyLinear(48, 64, generator=g), nn.ReLU(),
                          PermutedBlockLinear(64, 32, depth=4, bias=True, generator=g),
                          PermutedBlockLinear(32, 8, depth=2, nonlinear=True, generator=g)).eval()
    x = torch.randn(3, 48)
    with torch.inference_mode():
        expected = model(x)
        sparse_rt.sparsify(model)
        actual = model(x)
    assert model[0].choice.weight.name == "butterfly" and model[2].choice.weight.name == "permuted"
    assert isinstance(model[3], PermutedBlockLinear)  # the nonlinear variant is no linear map: left alone
    assert_close(actual, expected)


def test_wrong_dtype_is_a_clear_error():
    model = sparse_rt.sparsify(pruned_mlp())
    with pytest.raises(TypeError, match=r"expected float32 \[\.\.\., 96\], got torch.float64"):
        model(torch.randn(2, 96, dtype=torch.float64))
