import math

import pytest
import torch

from sparse_rt.formats.butterfly import ButterflyFormat
from sparse_rt.pruning.butterfly import ButterflyLinear


def _butterfly_matrix_by_definition(twiddles: torch.Tensor) -> torch.Tensor:
    """B_{L-1} ... B_0 built pair by pair from the spec's index formula."""
    stages, half = twiddles.shape[:2]
    n = 2 * half
    product = torch.eye(n, dtype=torch.float64)
    for s in range(stages):
        h = 2**s
        stage = torch.zeros(n, n, dtype=torch.float64)
        for p in range(half):
            i = (p // h) * 2 * h + p % h
            j = i + h
            stage[[i, i, j, j], [i, j, i, j]] = twiddles[s, p].reshape(4).double()
        product = stage @ product
    return product


@pytest.mark.parametrize("in_features, out_features", [(16, 16), (20, 12), (5, 33), (1, 1), (64, 63)])
@pytest.mark.parametrize("init", ["orthogonal", "fjlt"])
@pytest.mark.parametrize("lead", [(), (3,), (2, 4)])
def test_forward_matches_its_format(in_features, out_features, init, lead):
    layer = ButterflyLinear(in_features, out_features, init=init, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.twiddles.add_(0.1 * torch.randn_like(layer.twiddles))
    x = torch.randn(*lead, in_features)
    fmt = layer.to_format()
    assert isinstance(fmt, ButterflyFormat) and fmt.shape == (out_features, in_features)
    weight = fmt.to_dense()
    expected = x @ weight.T + layer.bias
    scale = expected.abs().max().item()
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-5 * max(scale, 1.0))
    n = layer.n
    assert n == max(2, 2 ** math.ceil(math.log2(max(in_features, out_features))))
    reference = _butterfly_matrix_by_definition(layer.twiddles.detach())[:out_features, :in_features]
    torch.testing.assert_close(weight.double(), reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("init", ["orthogonal", "fjlt"])
def test_inits_are_orthogonal(init):
    layer = ButterflyLinear(64, 64, bias=False, init=init, generator=torch.Generator().manual_seed(1))
    weight = layer.to_format().to_dense().double()
    torch.testing.assert_close(weight @ weight.T, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-6)


def test_fjlt_is_a_hadamard_transform_after_random_signs():
    layer = ButterflyLinear(32, 32, bias=False, init="fjlt", generator=torch.Generator().manual_seed(2))
    weight = layer.to_format().to_dense().double()
    signs = torch.sign(weight[0])  # W = H D and H's first row is all positive
    sylvester = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(5):
        sylvester = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64), sylvester)
    torch.testing.assert_close(weight * signs, sylvester / math.sqrt(32), rtol=0, atol=1e-6)
    assert 0 < int((signs < 0).sum()) < 32
    other = ButterflyLinear(32, 32, bias=False, init="fjlt", generator=torch.Generator().manual_seed(3))
    assert not torch.equal(torch.sign(other.to_format().to_dense()[0]), signs.float())


def test_trains_and_converts():
    torch.manual_seed(0)
    layer = ButterflyLinear(24, 10)
    target = ButterflyLinear(24, 10)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(30):
        x = torch.randn(32, 24)
        loss = (layer(x) - target(x).detach()).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert layer.twiddles.grad is not None and layer.bias.grad is not None
    x = torch.randn(5, 24)
    torch.testing.assert_close(
        layer(x), x @ layer.to_format().to_dense().T + layer.bias, rtol=1e-5, atol=1e-5
    )


def test_validation():
    with pytest.raises(
        ValueError, match=r"ButterflyLinear init: expected one of \('orthogonal', 'fjlt'\), got 'dct'"
    ):
        ButterflyLinear(4, 4, init="dct")
    with pytest.raises(ValueError, match=r"ButterflyLinear input: expected \[\.\.\., 4\], got \[2, 5\]"):
        ButterflyLinear(4, 4)(torch.randn(2, 5))
