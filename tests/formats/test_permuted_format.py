import pytest
import torch

from sparse_rt.formats import PermutedFormat, permuted_apply
from tests.helpers import assert_close


def forward_by_loop(x, permutations, blocks, out_features):
    """The spec's forward on one vector, entry by entry (float64 lists)."""
    layers, n = permutations.shape
    values = [float(v) for v in x] + [0.0] * (n - len(x))
    for layer in range(layers):
        gathered = [values[int(k)] for k in permutations[layer]]
        for p in range(n // 2):
            b = blocks[layer, p].tolist()
            z0, z1 = gathered[2 * p], gathered[2 * p + 1]
            gathered[2 * p] = b[0][0] * z0 + b[0][1] * z1
            gathered[2 * p + 1] = b[1][0] * z0 + b[1][1] * z1
        values = gathered
    return torch.tensor(values[:out_features], dtype=torch.float64)


def random_layers(layers, n, seed):
    generator = torch.Generator().manual_seed(seed)
    dtype = torch.int8 if n <= 128 else torch.int16
    permutations = torch.rand(layers, n, generator=generator).argsort(dim=1).to(dtype)
    blocks = torch.randn(layers, n // 2, 2, 2, generator=generator, dtype=torch.float64)
    return permutations, blocks


@pytest.mark.parametrize(
    "in_features, out_features, layers, n", [(8, 8, 3, 8), (5, 7, 2, 8), (7, 3, 4, 10), (1, 1, 1, 2), (6, 6, 0, 6)]
)
def test_to_dense_is_the_forward_applied_to_the_identity(in_features, out_features, layers, n):
    permutations, blocks = random_layers(layers, n, seed=layers * n)
    dense = PermutedFormat(in_features, out_features, permutations, blocks).to_dense()
    assert dense.shape == (out_features, in_features)
    columns = [
        forward_by_loop(torch.eye(in_features)[j], permutations, blocks, out_features) for j in range(in_features)
    ]
    assert_close(dense, torch.stack(columns, dim=1), rtol=1e-12)
    product = torch.eye(n, dtype=torch.float64)
    for layer in range(layers):
        gather = torch.eye(n, dtype=torch.float64)[permutations[layer].long()]  # P[k, perm[k]] = 1
        pairs = torch.block_diag(*blocks[layer])
        product = pairs @ gather @ product
    assert_close(dense, product[:out_features, :in_features], rtol=1e-12)


def test_permuted_apply_on_leading_dims_and_gradients():
    permutations, blocks = random_layers(3, 8, seed=4)
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    y = permuted_apply(x, permutations, blocks)
    for row, y_row in zip(x.reshape(-1, 8), y.reshape(-1, 8)):
        assert_close(y_row, forward_by_loop(row, permutations, blocks, 8), rtol=1e-12)
    assert_close(permuted_apply(x[0, 0], permutations, blocks), y[0, 0], rtol=1e-12)
    blocks.requires_grad_()
    x = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: permuted_apply(x, permutations, b), (x, blocks))


def test_permuted_apply_rejects_mismatched_shapes():
    permutations, blocks = random_layers(2, 8, seed=0)
    with pytest.raises(ValueError, match=r"permuted_apply: expected x \[\.\.\., 8\] and blocks \[2, 4, 2, 2\]"):
        permuted_apply(torch.zeros(6), permutations, blocks)


@pytest.mark.parametrize("n, dtype", [(8, torch.int8), (128, torch.int8), (130, torch.int16)])
def test_permutations_use_the_narrowest_dtype(n, dtype):
    permutations, blocks = random_layers(1, n, seed=1)
    PermutedFormat(n, n, permutations.to(dtype), blocks)
    with pytest.raises(ValueError, match=f"expected permutations of dtype {dtype}, got torch.int64"):
        PermutedFormat(n, n, permutations.long(), blocks)


def test_nbytes_flops_arrays_and_attributes():
    permutations, blocks = random_layers(3, 10, seed=2)
    permuted = PermutedFormat(9, 7, permutations, blocks.float())
    assert permuted.shape == (7, 9)
    assert permuted.nbytes == 3 * 10 * 1 + 3 * 5 * 4 * 4
    assert permuted.flops_per_row == 3 * 5 * 8
    assert permuted.attributes() == {"in_features": 9, "out_features": 7}
    rebuilt = PermutedFormat.from_arrays(permuted.arrays(), permuted.attributes())
    assert torch.equal(rebuilt.to_dense(), permuted.to_dense())


def test_from_dense_points_to_permuted_block_layers():
    with pytest.raises(ValueError, match=r"^permuted format: cannot factorise a dense W \[4, 4\].*PermutedBlockLinear"):
        PermutedFormat.from_dense(torch.eye(4))


def corrupt(permutations=None, blocks=None, in_features=4, out_features=4):
    default_permutations, default_blocks = random_layers(2, 4, seed=3)
    return PermutedFormat(
        in_features,
        out_features,
        default_permutations if permutations is None else permutations,
        default_blocks if blocks is None else blocks,
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"permutations": torch.tensor([[0, 1, 2, 3], [0, 1, 1, 3]], dtype=torch.int8)},
            r"hold each of 0\.\.3 once, got permutations\[1\] without 2",
        ),
        (
            {"permutations": torch.tensor([[0, 1, 2, 3], [0, 1, 4, 3]], dtype=torch.int8)},
            r"expected permutations in \[0, 4\), got 4 at flat position 6",
        ),
        (
            {"permutations": torch.tensor([[0, 1, 2], [0, 1, 2]], dtype=torch.int8)},
            r"expected n \(permutations.shape\[1\]\) even and >= max\(out_features, in_features\) = 4, got 3",
        ),
        (
            {"permutations": torch.tensor([[0, 1, 2, 3]], dtype=torch.int8)},
            r"expected blocks of shape \[1, 2, 2, 2\], got \[2, 2, 2, 2\]",
        ),
        ({"in_features": 5}, r"max\(out_features, in_features\) = 5, got 4"),
        ({"blocks": torch.zeros(2, 2, 2, 2, dtype=torch.int64)}, "expected blocks of a floating dtype"),
        ({"permutations": torch.zeros(2, 4)}, "expected permutations of dtype torch.int8 or torch.int16"),
    ],
)
def test_corrupted_arrays_are_rejected(changes, message):
    with pytest.raises(ValueError, match=f"^permuted format: .*{message}"):
        corrupt(**changes)
