"""CPU butterfly and permuted-block kernels, every config, against the dense W they stand for."""

import pytest
import torch

from sparse_rt.formats import ButterflyFormat, PermutedFormat
from sparse_rt.kernels.cpu.butterfly import butterfly_linear_reference
from sparse_rt.kernels.cpu.permuted import permuted_linear_reference
from sparse_rt.kernels.registry import kernels_for
from tests.helpers import assert_close

X_SHAPES = [(), (1,), (3,), (17,), (2, 5)]


def _check_every_config(fmt, bias):
    weight = fmt.to_dense()
    kernels = kernels_for(fmt, "cpu")
    assert len(kernels) == 1
    for config in kernels[0].configs(fmt, torch.device("cpu")):
        bound = kernels[0].bind(fmt, bias, config, torch.device("cpu"))
        for lead in X_SHAPES:
            x = torch.randn(*lead, weight.shape[1])
            y = bound(x)
            assert y.shape == (*lead, weight.shape[0])
            assert_close(y, x @ weight.T + (0 if bias is None else bias), rtol=1e-5)


# n from 1 (no stage) to 128 (stages folded into SIMD blocks and stages on registers);
# square, wider and narrower layers
@pytest.mark.parametrize("stages", [0, 1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("trim", [(0, 0), (1, 0), (0, 3)], ids=["square", "in_short", "out_short"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_butterfly_matches_dense(stages, trim, with_bias):
    n = 2**stages
    in_features, out_features = max(1, n - trim[0]), max(1, n - trim[1])
    generator = torch.Generator().manual_seed(stages)
    twiddles = torch.randn(stages, n // 2, 2, 2, generator=generator) / 2**0.5
    fmt = ButterflyFormat(in_features=in_features, out_features=out_features, twiddles=twiddles)
    _check_every_config(fmt, torch.randn(out_features) if with_bias else None)


@pytest.mark.parametrize("n", [2, 6, 16, 38, 130])
@pytest.mark.parametrize("layers", [0, 1, 3])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_permuted_matches_dense(n, layers, with_bias):
    generator = torch.Generator().manual_seed(n * 10 + layers)
    permutations = torch.stack([torch.randperm(n, generator=generator) for _ in range(layers)]) if layers else (
        torch.zeros(0, n, dtype=torch.int64)
    )
    dtype = torch.int8 if n <= 128 else torch.int16
    blocks = torch.randn(layers, n // 2, 2, 2, generator=generator)
    fmt = PermutedFormat(
        in_features=n - 1, out_features=max(1, n - 2), permutations=permutations.to(dtype), blocks=blocks
    )
    _check_every_config(fmt, torch.randn(max(1, n - 2)) if with_bias else None)


def test_structured_references_match_dense():
    twiddles = torch.randn(4, 8, 2, 2)
    butterfly = ButterflyFormat(in_features=13, out_features=16, twiddles=twiddles)
    x = torch.randn(2, 3, 13)
    bias = torch.randn(16)
    assert_close(butterfly_linear_reference(x, butterfly, bias), x @ butterfly.to_dense().T + bias, rtol=1e-5)
    permutations = torch.stack([torch.randperm(10) for _ in range(2)]).to(torch.int8)
    permuted = PermutedFormat(in_features=9, out_features=10, permutations=permutations, blocks=torch.randn(2, 5, 2, 2))
    x = torch.randn(4, 9)
    assert_close(permuted_linear_reference(x, permuted, None), x @ permuted.to_dense().T, rtol=1e-5)
