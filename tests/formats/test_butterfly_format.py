import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_rt.formats import ButterflyFormat, butterfly_apply
from tests.helpers import assert_close


def forward_by_loop(x, twiddles, out_features):
    """The spec's forward on one vector, entry by entry (float64 lists)."""
    stages = twiddles.shape[0]
    n = 2**stages
    values = [float(v) for v in x] + [0.0] * (n - len(x))
    for s in range(stages):
        h = 2**s
        for p in range(n // 2):
            i = (p // h) * 2 * h + p % h
            j = i + h
            t = twiddles[s, p].tolist()
            values[i], values[j] = (
                t[0][0] * values[i] + t[0][1] * values[j],
                t[1][0] * values[i] + t[1][1] * values[j],
            )
    return torch.tensor(values[:out_features], dtype=torch.float64)


def stage_matrix(twiddles, s):
    """B_s as an explicit [n, n] matrix."""
    n = 2 ** twiddles.shape[0]
    h = 2**s
    matrix = torch.zeros(n, n, dtype=twiddles.dtype)
    for p in range(n // 2):
        i = (p // h) * 2 * h + p % h
        j = i + h
        matrix[i, i], matrix[i, j] = twiddles[s, p, 0]
        matrix[j, i], matrix[j, j] = twiddles[s, p, 1]
    return matrix


def random_twiddles(stages, seed, zero_fraction=0.0):
    generator = torch.Generator().manual_seed(seed)
    twiddles = torch.randn(stages, 2**stages // 2, 2, 2, generator=generator, dtype=torch.float64)
    zero = torch.rand(twiddles.shape, generator=generator, dtype=torch.float64) < zero_fraction
    return torch.where(zero, 0.0, twiddles)


@pytest.mark.parametrize(
    "in_features, out_features, stages", [(8, 8, 3), (5, 7, 3), (7, 3, 4), (1, 1, 0), (1, 2, 1), (16, 9, 5)]
)
def test_to_dense_is_the_forward_applied_to_the_identity(in_features, out_features, stages):
    twiddles = random_twiddles(stages, seed=stages)
    dense = ButterflyFormat(in_features, out_features, twiddles).to_dense()
    assert dense.shape == (out_features, in_features)
    columns = [forward_by_loop(torch.eye(in_features)[j], twiddles, out_features) for j in range(in_features)]
    assert_close(dense, torch.stack(columns, dim=1), rtol=1e-12)
    product = torch.eye(2**stages, dtype=torch.float64)
    for s in range(stages):
        product = stage_matrix(twiddles, s) @ product
    assert_close(dense, product[:out_features, :in_features], rtol=1e-12)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_butterfly_apply_matches_the_loop_on_any_leading_dims(lead):
    twiddles = random_twiddles(4, seed=1)
    x = torch.randn(*lead, 16, dtype=torch.float64)
    y = butterfly_apply(x, twiddles)
    assert y.shape == x.shape
    for row, y_row in zip(x.reshape(-1, 16), y.reshape(-1, 16)):
        assert_close(y_row, forward_by_loop(row, twiddles, 16), rtol=1e-12)


def test_butterfly_apply_is_differentiable():
    twiddles = random_twiddles(3, seed=2).requires_grad_()
    x = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(butterfly_apply, (x, twiddles))


def test_butterfly_apply_rejects_a_wrong_width():
    message = r"butterfly_apply: expected x \[\.\.\., 8\] for 3 stages of twiddles, got \[2, 6\]"
    with pytest.raises(ValueError, match=message):
        butterfly_apply(torch.zeros(2, 6), random_twiddles(3, seed=0))


@settings(max_examples=25, deadline=None)
@given(
    stages=st.integers(0, 7),
    zero_fraction=st.sampled_from([0.0, 0.3, 0.7]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_from_dense_recovers_a_butterfly(stages, zero_fraction, dtype, seed):
    n = 2**stages
    weight = ButterflyFormat(n, n, random_twiddles(stages, seed, zero_fraction).to(dtype)).to_dense()
    recovered = ButterflyFormat.from_dense(weight)
    assert recovered.twiddles.shape == (stages, n // 2, 2, 2)
    assert recovered.twiddles.dtype == dtype
    assert_close(recovered.to_dense(), weight, rtol=50 * (stages + 1) * torch.finfo(dtype).eps)


def test_from_dense_recovers_an_orthogonal_butterfly_in_float32():
    angles = torch.rand(8, 128, generator=torch.Generator().manual_seed(5)) * 6.3
    cos, sin = angles.cos(), angles.sin()
    twiddles = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    weight = ButterflyFormat(256, 256, twiddles).to_dense()
    assert_close(ButterflyFormat.from_dense(weight).to_dense(), weight, rtol=1e-5)


def test_from_dense_rejects_matrices_that_are_not_butterflies():
    with pytest.raises(ValueError, match=r"^butterfly format: W \[8, 8\] is not a butterfly matrix"):
        ButterflyFormat.from_dense(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))
    for dtype in (torch.float32, torch.float64):
        weight = ButterflyFormat(16, 16, random_twiddles(4, seed=3).to(dtype)).to_dense()
        weight[3, 5] += 1e-3 * weight.abs().max()
        with pytest.raises(ValueError, match="is not a butterfly matrix"):
            ButterflyFormat.from_dense(weight)
    with pytest.raises(ValueError, match="is not a butterfly matrix"):
        ButterflyFormat.from_dense(torch.full((1, 1), 2.0))
    weight[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"expected a finite W, got nan at \[3, 5\]"):
        ButterflyFormat.from_dense(weight)


@pytest.mark.parametrize("shape", [(8, 4), (6, 6), (3, 5)])
def test_from_dense_points_other_shapes_to_butterfly_layers(shape):
    with pytest.raises(ValueError, match=r"square W of power-of-two size.*ButterflyLinear"):
        ButterflyFormat.from_dense(torch.zeros(shape))


def test_nbytes_flops_arrays_and_attributes():
    butterfly = ButterflyFormat(5, 7, torch.zeros(3, 4, 2, 2))
    assert butterfly.shape == (7, 5)
    assert butterfly.n == 8
    assert butterfly.nbytes == 3 * 4 * 4 * 4
    assert butterfly.flops_per_row == 3 * 4 * 8
    assert butterfly.attributes() == {"in_features": 5, "out_features": 7}
    rebuilt = ButterflyFormat.from_arrays(butterfly.arrays(), butterfly.attributes())
    assert torch.equal(rebuilt.twiddles, butterfly.twiddles)
    assert rebuilt.shape == (7, 5)


@pytest.mark.parametrize(
    "fields, message",
    [
        ((8, 8, torch.zeros(3, 3, 2, 2)), r"expected twiddles of shape \[3, 4, 2, 2\], got \[3, 3, 2, 2\]"),
        ((8, 8, torch.zeros(3, 4, 2, 3)), r"expected twiddles of shape \[\*, \*, 2, 2\], got \[3, 4, 2, 3\]"),
        (
            (9, 8, torch.zeros(3, 4, 2, 2)),
            r"expected n = 2\*\*L >= max\(out_features, in_features\) = 9, got L = 3",
        ),
        ((8, 8, torch.zeros(3, 4, 2, 2, dtype=torch.int32)), "expected twiddles of a floating dtype"),
        ((0, 8, torch.zeros(3, 4, 2, 2)), "expected in_features >= 1, got 0"),
    ],
)
def test_invalid_fields_are_rejected(fields, message):
    with pytest.raises(ValueError, match=f"^butterfly format: {message}"):
        ButterflyFormat(*fields)
