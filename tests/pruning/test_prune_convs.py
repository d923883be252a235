"""Pruning KxK convolutions: masks laid out as the converted layer's [out, kh * kw * in]
matrix, so N:M and block structure survive conversion; every pruner's result converts and
matches torch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparse_rt
from sparse_rt.converters.torch import export_module
from sparse_rt.formats import get_format
from sparse_rt.pruning import finalize
from sparse_rt.pruning.init_pruning import snip_prune
from sparse_rt.pruning.magnitude import magnitude_prune
from sparse_rt.pruning.masks import as_matrix, from_matrix
from sparse_rt.pruning.sparsegpt import sparsegpt_prune
from sparse_rt.pruning.structured import block_prune, nm_prune
from sparse_rt.pruning.wanda import wanda_prune
from tests.helpers import assert_close


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(32, 16, (3, 1), padding=(1, 0), dilation=(1, 1)),
    ).eval()


def batches(count=4, seed=1):
    """Images with structure: noise at 5x5 upsampled to 10x10, so neighbouring pixels correlate."""
    generator = torch.Generator().manual_seed(seed)
    return [F.interpolate(torch.randn(2, 16, 5, 5, generator=generator), size=(10, 10), mode="bilinear")
            for _ in range(count)]


def conv_weights(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_the_matrix_view_is_the_one_conversion_lowers_to():
    conv = nn.Conv2d(5, 7, (3, 2))
    matrix = as_matrix(conv, conv.weight.detach())
    assert matrix.shape == (7, 3 * 2 * 5)
    # column (kernel row 1, kernel column 0, channel 4)
    assert torch.equal(matrix[2, (1 * 2 + 0) * 5 + 4], conv.weight[2, 4, 1, 0].detach())
    assert torch.equal(from_matrix(conv, matrix), conv.weight.detach())


PRUNERS = {
    "magnitude": lambda model: magnitude_prune(model, 0.75),
    "2:4": lambda model: nm_prune(model, 2, 4),
    "4x4 blocks": lambda model: block_prune(model, 0.75, (4, 4)),
    "wanda": lambda model: wanda_prune(model, batches(), 0.75),
    "sparsegpt": lambda model: sparsegpt_prune(model, batches(), 0.75),
    "snip": lambda model: snip_prune(model, [(x, torch.zeros(2, dtype=torch.long)) for x in batches(1)], 0.75,
                                     loss_fn=lambda out, target: out.pow(2).mean()),
}


@pytest.mark.parametrize("pruner", PRUNERS)
def test_every_pruner_prunes_kxk_convs_and_the_result_converts_and_matches_torch(pruner):
    model = small_cnn()
    masks = PRUNERS[pruner](model)
    assert set(masks) == set(conv_weights(model))
    finalize(model)
    for name, conv in conv_weights(model).items():
        matrix = as_matrix(conv, conv.weight.detach())
        assert not matrix[~masks[name]].any()  # zeros wherever the mask prunes
    pruned = sum(int((~m).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert pruned >= 0.5
    x = torch.randn(1, 16, 10, 10)
    proto, _ = export_module(model, (x,))
    graph = sparse_rt.convert(proto, tune=False)
    ops = [n.op_type for n in graph.nodes]
    convs = ops.count("Conv") + ops.count("FusedConv")  # where the heuristic keeps dense
    assert ops.count("Im2Col") + convs == 3 and ops.count("Im2Col") == ops.count("SparseLinear")
    (y,) = sparse_rt.InferenceSession(graph).run(None, {proto.graph.input[0].name: x.numpy()})
    with torch.no_grad():
        assert_close(y, model(x).numpy())


@pytest.mark.parametrize("pattern", ["2:4", "4x4 blocks"])
def test_structured_masks_of_a_kxk_conv_fit_their_format_after_lowering(pattern):
    model = small_cnn()
    PRUNERS[pattern](model)
    finalize(model)
    for conv in conv_weights(model).values():
        matrix = as_matrix(conv, conv.weight.detach())
        if pattern == "2:4":
            groups = matrix.reshape(matrix.shape[0], -1, 4)
            assert ((groups != 0).sum(dim=2) <= 2).all()
            get_format("nm").from_dense(matrix, n=2, m=4)
        else:
            bsr = get_format("bsr").from_dense(matrix, block_shape=(4, 4))
            blocks = matrix.reshape(matrix.shape[0] // 4, 4, -1, 4).abs().sum(dim=(1, 3)) != 0
            assert blocks.float().mean() <= 0.25 + 1e-6
            assert torch.equal(bsr.to_dense(), matrix)


def test_sparsegpt_reconstructs_a_kxk_conv_better_than_magnitude():
    calibration = batches(8)
    first = lambda module, name: name == "0"  # noqa: E731
    errors = {}
    for name, prune in (("magnitude", lambda m: magnitude_prune(m, 0.75, filter_fn=first)),
                        ("sparsegpt", lambda m: sparsegpt_prune(m, calibration, 0.75, filter_fn=first))):
        model, dense = small_cnn(), small_cnn()
        prune(model)
        with torch.no_grad():
            errors[name] = np.mean([(model[0](x) - dense[0](x)).pow(2).mean().item() for x in calibration])
    assert errors["sparsegpt"] < 0.85 * errors["magnitude"], errors  # 0.74x here
