"""CPU N:M kernel, every pattern and config, against the dense product x @ W.T + b."""

import pytest
import torch

from sparse_rt.formats import NmFormat
from sparse_rt.kernels.cpu.nm import nm_linear_reference
from sparse_rt.kernels.registry import kernels_for
from tests.helpers import assert_close

# 2:4, 1:4, 4:8 go through the grouped batch-1 kernel; 3:8 and 5:16 through CSR
PATTERNS = [(2, 4), (1, 4), (4, 8), (3, 8), (5, 16), (1, 1)]
X_SHAPES = [(), (1,), (3,), (17,), (2, 5)]


def _nm_weight(out_features: int, in_features: int, n: int, m: int, seed: int, fill: float = 1.0):
    """Random W keeping n of every m inputs (the last group may be partial); `fill` < 1 leaves
    some groups short of n nonzeros."""
    generator = torch.Generator().manual_seed(seed)
    groups = -(-in_features // m)
    scores = torch.rand(out_features, groups, m, generator=generator)
    keep = torch.zeros(out_features, groups, m, dtype=torch.bool)
    keep.scatter_(2, scores.topk(n, dim=2).indices, True)
    keep &= torch.rand(out_features, groups, m, generator=generator) < fill
    keep = keep.reshape(out_features, groups * m)[:, :in_features]
    return torch.randn(out_features, in_features, generator=generator) * keep


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: f"{p[0]}of{p[1]}")
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_nm_every_config_matches_dense(pattern, with_bias):
    n, m = pattern
    weight = _nm_weight(37, 45, n, m, seed=n * 16 + m, fill=0.8)  # 45 % m != 0: padded input
    weight[5] = 0
    bias = torch.randn(37) if with_bias else None
    fmt = NmFormat.from_dense(weight, n=n, m=m)
    kernels = kernels_for(fmt, "cpu")
    assert [k.name for k in kernels] == ["nm_cpu_grouped"]
    for config in kernels[0].configs(fmt, torch.device("cpu")):
        bound = kernels[0].bind(fmt, bias, config, torch.device("cpu"))
        for lead in X_SHAPES:
            x = torch.randn(*lead, 45)
            y = bound(x)
            assert y.shape == (*lead, 37)
            assert_close(y, x @ weight.T + (0 if bias is None else bias), rtol=1e-5)


@pytest.mark.parametrize("shape", [(128, 96), (64, 256)])
def test_nm_shapes(shape):
    weight = _nm_weight(*shape, 2, 4, seed=11)
    fmt = NmFormat.from_dense(weight, n=2, m=4)
    (kernel,) = kernels_for(fmt, "cpu")
    bias = torch.randn(shape[0])
    bound = kernel.bind(fmt, bias, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
    for batch in (1, 8, 33):
        x = torch.randn(batch, shape[1])
        assert_close(bound(x), x @ weight.T + bias, rtol=1e-5)


def test_nm_all_zero():
    fmt = NmFormat.from_dense(torch.zeros(20, 16), n=2, m=4)
    (kernel,) = kernels_for(fmt, "cpu")
    bias = torch.randn(20)
    bound = kernel.bind(fmt, bias, kernel.configs(fmt, torch.device("cpu"))[0], torch.device("cpu"))
    for batch in (1, 4):
        assert_close(bound(torch.randn(batch, 16)), bias.expand(batch, 20), rtol=1e-6)


def test_nm_reference_matches_dense():
    weight = _nm_weight(37, 45, 2, 4, seed=12)
    bias = torch.randn(37)
    x = torch.randn(2, 3, 45)
    assert_close(nm_linear_reference(x, NmFormat.from_dense(weight, n=2, m=4), bias), x @ weight.T + bias, rtol=1e-5)
