import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_rt.formats import NmFormat


def nm_weight(out_features, in_features, n, m, seed, fill=1.0):
    """Random W with at most n nonzeros per group of m inputs (about `fill` of the n slots used)."""
    generator = torch.Generator().manual_seed(seed)
    groups = -(-in_features // m)
    scores = torch.rand(out_features, groups, m, generator=generator)
    kept = torch.zeros(out_features, groups, m, dtype=torch.bool)
    kept.scatter_(2, scores.topk(n, dim=2).indices, True)
    kept &= torch.rand(out_features, groups, m, generator=generator) < fill
    mask = kept.reshape(out_features, groups * m)[:, :in_features]
    return torch.where(mask, torch.randn(out_features, in_features, generator=generator), torch.zeros(()))


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (3, 7), (1, 1), (4, 4), (1, 128)])
@pytest.mark.parametrize("in_features", [1, 6, 16, 129])
@pytest.mark.parametrize("fill", [0.0, 0.6, 1.0])
def test_round_trip_is_exact(n, m, in_features, fill):
    weight = nm_weight(7, in_features, n, m, seed=n * 100 + m, fill=fill)
    nm = NmFormat.from_dense(weight, n=n, m=m)
    groups = -(-in_features // m)
    assert nm.values.shape == nm.indices.shape == (7, groups * n)
    assert nm.indices.dtype == torch.int8
    assert torch.equal(nm.to_dense(), weight)
    rebuilt = NmFormat.from_arrays(nm.arrays(), nm.attributes())
    assert torch.equal(rebuilt.to_dense(), weight)


@settings(max_examples=30, deadline=None)
@given(
    out_features=st.integers(1, 20),
    in_features=st.integers(1, 70),
    nm=st.integers(1, 16).flatmap(lambda m: st.tuples(st.integers(1, m), st.just(m))),
    fill=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(out_features, in_features, nm, fill, seed):
    n, m = nm
    weight = nm_weight(out_features, in_features, n, m, seed, fill)
    fmt = NmFormat.from_dense(weight, n=n, m=m)
    assert torch.equal(fmt.to_dense(), weight)
    grouped = fmt.indices.reshape(out_features, -1, n)
    assert bool((grouped[:, :, 1:] > grouped[:, :, :-1]).all())


def test_from_dense_builds_the_expected_arrays():
    weight = torch.tensor(
        [[0.0, 5.0, 0.0, 7.0, 3.0, 0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 4.0]]
    )
    nm = NmFormat.from_dense(weight, n=2, m=4)
    assert nm.values.tolist() == [[5.0, 7.0, 3.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.0, 9.0, 4.0, 0.0]]
    assert nm.indices.tolist() == [[1, 3, 0, 1, 0, 1], [0, 1, 0, 3, 0, 1]]
    assert nm.attributes() == {"shape": [2, 9], "n": 2, "m": 4}


def test_default_is_two_four():
    nm = NmFormat.from_dense(nm_weight(3, 8, 2, 4, seed=0))
    assert (nm.n, nm.m) == (2, 4)


def test_too_many_nonzeros_in_a_group_is_rejected():
    weight = nm_weight(4, 10, 2, 4, seed=1)
    weight[2, 8:10] = 1.0
    weight[2, 4:8] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    message = r"^nm format: expected at most 2 nonzeros in every group of 4 inputs, got 3 in row 2, columns 4:8"
    with pytest.raises(ValueError, match=message):
        NmFormat.from_dense(weight, n=2, m=4)
    with pytest.raises(ValueError, match="got 4 in row 0"):
        NmFormat.from_dense(torch.ones(1, 4), n=2, m=4)


def test_nbytes_and_flops_match_hand_count():
    nm = NmFormat.from_dense(nm_weight(6, 10, 2, 4, seed=2), n=2, m=4)
    # values and indices: 6 rows x 3 groups x 2 kept, float32 + int8
    assert nm.nbytes == 6 * 3 * 2 * (4 + 1)
    assert nm.flops_per_row == 2 * 6 * 3 * 2


def example_fields(**changes):
    # W = [[0, 5, 0, 7, 3]] in 2:4
    fields = dict(
        shape=(1, 5),
        n=2,
        m=4,
        values=torch.tensor([[5.0, 7.0, 3.0, 0.0]]),
        indices=torch.tensor([[1, 3, 0, 1]], dtype=torch.int8),
    )
    fields.update(changes)
    return fields


def test_example_fields_are_valid():
    assert NmFormat(**example_fields()).to_dense().tolist() == [[0.0, 5.0, 0.0, 7.0, 3.0]]


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"indices": torch.tensor([[1, 4, 0, 1]], dtype=torch.int8)},
            r"expected indices in \[0, 4\), got 4 at flat position 1",
        ),
        (
            {"indices": torch.tensor([[3, 1, 0, 1]], dtype=torch.int8)},
            r"strictly ascending within each group of 2, got \[3, 1\] at indices\[0, 0:2\]",
        ),
        ({"indices": torch.tensor([[1, 3, 1, 1]], dtype=torch.int8)}, r"got \[1, 1\] at indices\[0, 2:4\]"),
        (
            {"indices": torch.tensor([[1, 3, 0, 1]], dtype=torch.int32)},
            "expected indices of dtype torch.int8, got torch.int32",
        ),
        ({"values": torch.tensor([[5.0, 7.0, 3.0]])}, r"expected values of shape \[1, 4\], got \[1, 3\]"),
        (
            {"values": torch.tensor([[5.0, 7.0, 3.0, 2.0]])},
            r"zero values in the padding beyond in_features=5, got 2.0 at values\[0, 3\]",
        ),
        ({"n": 5}, r"expected n in \[1, 4\], got 5"),
        ({"m": 129}, r"expected m in \[1, 128\], got 129"),
    ],
)
def test_corrupted_arrays_are_rejected(changes, message):
    with pytest.raises(ValueError, match=f"^nm format: .*{message}"):
        NmFormat(**example_fields(**changes))


def test_largest_group_has_no_padding_false_alarm():
    weight = torch.zeros(2, 256)
    weight[:, 127] = 1.0
    weight[:, 255] = 2.0
    nm = NmFormat.from_dense(weight, n=1, m=128)
    assert nm.indices.tolist() == [[127, 127], [127, 127]]
    assert torch.equal(nm.to_dense(), weight)
