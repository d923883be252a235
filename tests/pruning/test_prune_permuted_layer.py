import pytest
import torch

from sparse_rt.formats.base import narrowest_index_dtype
from sparse_rt.formats.permuted import PermutedFormat
from sparse_rt.pruning.permuted import PermutedBlockLinear


def _matrix_by_definition(permutations: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """G = B_{L-1} P_{L-1} ... B_0 P_0 from the spec: z[k] = x[perm[k]], then 2x2 blocks on (2p, 2p+1)."""
    layers, n = permutations.shape
    product = torch.eye(n, dtype=torch.float64)
    for layer in range(layers):
        gather = torch.zeros(n, n, dtype=torch.float64)
        gather[torch.arange(n), permutations[layer].long()] = 1.0
        block_diagonal = torch.block_diag(*blocks[layer].double())
        product = block_diagonal @ gather @ product
    return product


@pytest.mark.parametrize(
    "in_features, out_features, n", [(16, 16, None), (20, 13, None), (7, 30, 34), (9, 9, None)]
)
@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_its_format(in_features, out_features, n, lead, bias):
    layer = PermutedBlockLinear(
        in_features, out_features, depth=5, n=n, bias=bias, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        layer.blocks.add_(0.2 * torch.randn_like(layer.blocks))
        if bias:
            layer.bias.normal_()
    expected_n = n or max(in_features, out_features) + max(in_features, out_features) % 2
    assert layer.n == expected_n and layer.permutations.dtype == narrowest_index_dtype(expected_n - 1)
    fmt = layer.to_format()
    assert isinstance(fmt, PermutedFormat) and fmt.shape == (out_features, in_features)
    x = torch.randn(*lead, in_features)
    weight = fmt.to_dense()
    expected = x @ weight.T + (layer.bias if bias else 0.0)
    scale = max(expected.abs().max().item(), 1.0)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-5 * scale)
    reference = _matrix_by_definition(layer.permutations, layer.blocks.detach())[:out_features, :in_features]
    torch.testing.assert_close(weight.double(), reference, rtol=0, atol=1e-5)


def test_generator_fixes_the_permutations_and_blocks_are_orthogonal():
    first = PermutedBlockLinear(32, 32, depth=4, generator=torch.Generator().manual_seed(5))
    again = PermutedBlockLinear(32, 32, depth=4, generator=torch.Generator().manual_seed(5))
    other = PermutedBlockLinear(32, 32, depth=4, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first.permutations, again.permutations) and torch.equal(first.blocks, again.blocks)
    assert not torch.equal(first.permutations, other.permutations)
    assert all(torch.equal(row.sort().values.long(), torch.arange(32)) for row in first.permutations)
    assert "permutations" in dict(first.named_buffers()) and "permutations" not in dict(
        first.named_parameters()
    )
    gram = first.blocks.detach().transpose(-1, -2) @ first.blocks.detach()
    torch.testing.assert_close(gram, torch.eye(2).expand_as(gram), rtol=0, atol=1e-6)
    determinants = torch.linalg.det(first.blocks.detach())
    assert bool((determinants > 0).any()) and bool((determinants < 0).any())
    weight = first.to_format().to_dense().double()
    torch.testing.assert_close(weight @ weight.T, torch.eye(32, dtype=torch.float64), rtol=0, atol=1e-5)


def test_regularizer():
    layer = PermutedBlockLinear(8, 8, depth=3, generator=torch.Generator().manual_seed(0))
    assert layer.regularizer().item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        layer.blocks.mul_(2.0)  # B^T B = 4 I: ||I - 4I||_F^2 = 18 per block
    assert layer.regularizer().item() == pytest.approx(36.0, rel=1e-5)
    with torch.no_grad():
        layer.blocks.zero_()
        layer.blocks[0, 0] = torch.eye(2)  # one orthogonal block among 12 zero ones (||I||_F^2 = 2 each)
    assert layer.regularizer().item() == pytest.approx(2 * 2 * 11 / 12)
    layer.regularizer().backward()
    assert layer.blocks.grad is not None


def test_nonlinear_variant():
    layer = PermutedBlockLinear(
        6, 4, depth=3, bias=True, nonlinear=True, generator=torch.Generator().manual_seed(0)
    )
    assert layer.layer_biases.shape == (2, 6)
    with torch.no_grad():
        layer.layer_biases.normal_()
        layer.bias.normal_()
    x = torch.randn(5, 6)
    z = x
    for index in range(3):
        single = PermutedFormat(
            6, 6, layer.permutations[index : index + 1], layer.blocks.detach()[index : index + 1]
        )
        z = z @ single.to_dense().T
        if index < 2:
            z = torch.tanh(z + layer.layer_biases.detach()[index])
    torch.testing.assert_close(layer(x), z[:, :4] + layer.bias, rtol=1e-5, atol=1e-6)
    with pytest.raises(
        ValueError, match=r"expected the linear variant \(nonlinear=False\), got nonlinear=True"
    ):
        layer.to_format()


def test_validation():
    with pytest.raises(ValueError, match=r"expected n even and >= max\(in, out\) = 10, got 9"):
        PermutedBlockLinear(10, 4, depth=2, n=9)
    with pytest.raises(ValueError, match=r"expected n even and >= max\(in, out\) = 10, got 8"):
        PermutedBlockLinear(10, 4, depth=2, n=8)
    with pytest.raises(ValueError, match=r"PermutedBlockLinear input: expected \[\.\.\., 10\], got \[3, 4\]"):
        PermutedBlockLinear(10, 4, depth=2)(torch.randn(3, 4))
