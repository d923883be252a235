import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_rt.formats import CsrFormat
from tests.helpers import masked_weight


def example() -> CsrFormat:
    # W = [[0, 2, 0], [0, 0, 0], [1, 0, 3]]
    return CsrFormat(
        shape=(3, 3),
        row_offsets=torch.tensor([0, 1, 1, 3], dtype=torch.int32),
        column_indices=torch.tensor([1, 0, 2], dtype=torch.int8),
        values=torch.tensor([2.0, 1.0, 3.0]),
    )


def test_from_dense_builds_the_expected_arrays():
    csr = CsrFormat.from_dense(torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0]]))
    expected = example()
    assert csr.shape == (3, 3)
    for name, array in expected.arrays().items():
        assert torch.equal(csr.arrays()[name], array), name
        assert csr.arrays()[name].dtype == array.dtype, name


def test_to_dense_of_hand_built_csr():
    assert torch.equal(example().to_dense(), torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 3.0]]))


@settings(max_examples=40, deadline=None)
@given(
    out_features=st.integers(1, 40),
    in_features=st.integers(1, 300),
    density=st.sampled_from([0.0, 0.05, 0.3, 0.9, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_round_trip_is_exact(out_features, in_features, density, seed):
    weight = masked_weight(out_features, in_features, density, seed)
    csr = CsrFormat.from_dense(weight)
    assert torch.equal(csr.to_dense(), weight)
    assert csr.nnz == int((weight != 0).sum())
    rebuilt = CsrFormat.from_arrays(csr.arrays(), csr.attributes())
    assert torch.equal(rebuilt.to_dense(), weight)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_round_trip_keeps_dtype(dtype):
    weight = masked_weight(9, 17, 0.4, seed=3, dtype=dtype)
    dense = CsrFormat.from_dense(weight).to_dense()
    assert dense.dtype == dtype
    assert torch.equal(dense, weight)


def test_empty_rows_and_columns_and_special_values_survive():
    weight = torch.zeros(6, 10)
    weight[1, 3] = -0.5
    weight[1, 9] = float("nan")
    weight[4, 0] = float("inf")
    weight[5, 9] = 1e-30
    csr = CsrFormat.from_dense(weight)
    assert csr.row_offsets.tolist() == [0, 0, 2, 2, 2, 3, 4]
    assert csr.column_indices.tolist() == [3, 9, 0, 9]
    torch.testing.assert_close(csr.to_dense(), weight, rtol=0, atol=0, equal_nan=True)


def test_all_zero_weight_has_no_entries():
    csr = CsrFormat.from_dense(torch.zeros(4, 5))
    assert csr.nnz == 0
    assert csr.row_offsets.tolist() == [0] * 5
    assert torch.equal(csr.to_dense(), torch.zeros(4, 5))
    assert csr.flops_per_row == 0


@pytest.mark.parametrize(
    "in_features, dtype",
    [(1, torch.int8), (128, torch.int8), (129, torch.int16), (32768, torch.int16), (32769, torch.int32)],
)
def test_column_indices_use_the_narrowest_dtype(in_features, dtype):
    weight = torch.zeros(1, in_features)
    weight[0, -1] = 1.0
    csr = CsrFormat.from_dense(weight)
    assert csr.column_indices.dtype == dtype
    assert csr.column_indices.tolist() == [in_features - 1]
    assert csr.row_offsets.dtype == torch.int32


def test_nbytes_and_flops_match_hand_count():
    weight = torch.zeros(3, 200)
    weight[0, [1, 150]] = 1.0
    weight[2, [0, 7, 199]] = 2.0
    csr = CsrFormat.from_dense(weight)
    # row_offsets 4 x int32 + column_indices 5 x int16 + values 5 x float32
    assert csr.nbytes == 4 * 4 + 5 * 2 + 5 * 4
    assert csr.flops_per_row == 2 * 5


def test_attributes_are_plain_ints():
    assert example().attributes() == {"shape": [3, 3]}


def corrupt(**changes):
    fields = dict(example().arrays(), shape=(3, 3))
    fields.update(changes)
    return fields


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"column_indices": torch.tensor([1, 0], dtype=torch.int8)},
            "expected column_indices of length 3, got 2",
        ),
        (
            {"column_indices": torch.tensor([1, 0, 3], dtype=torch.int8)},
            r"expected column_indices in \[0, 3\), got 3",
        ),
        (
            {"column_indices": torch.tensor([1, 2, 0], dtype=torch.int8)},
            "strictly ascending within each row, got 0 after 2 in row 2",
        ),
        (
            {"column_indices": torch.tensor([1, 0, 2], dtype=torch.int32)},
            "expected column_indices of dtype torch.int8, got torch.int32",
        ),
        (
            {"row_offsets": torch.tensor([0, 2, 1, 3], dtype=torch.int32)},
            r"non-decreasing row_offsets, got row_offsets\[1\]=2 > row_offsets\[2\]=1",
        ),
        ({"row_offsets": torch.tensor([0, 1, 1, 2], dtype=torch.int32)}, r"row_offsets\[-1\] == 3"),
        ({"row_offsets": torch.tensor([1, 1, 1, 3], dtype=torch.int32)}, r"row_offsets\[0\] == 0, got 1"),
        (
            {"row_offsets": torch.tensor([0, 1, 3], dtype=torch.int32)},
            "expected row_offsets of length 4, got 3",
        ),
        (
            {"row_offsets": torch.tensor([0.0, 1.0, 1.0, 3.0])},
            "expected row_offsets of dtype torch.int32 or torch.int64",
        ),
        ({"values": torch.tensor([2, 1, 3])}, "expected values of a floating dtype, got torch.int64"),
        ({"shape": (3, 0)}, r"expected shape\[1\] >= 1, got 0"),
        ({"shape": (3,)}, "expected shape to be a pair of ints"),
    ],
)
def test_corrupted_arrays_are_rejected(changes, message):
    with pytest.raises(ValueError, match=f"^csr format: .*{message}"):
        CsrFormat(**corrupt(**changes))


def test_from_arrays_rejects_missing_and_extra_names():
    csr = example()
    arrays = csr.arrays()
    del arrays["values"]
    with pytest.raises(ValueError, match=r"csr format: expected arrays \['column_indices', 'row_offsets', 'values'\]"):
        CsrFormat.from_arrays(arrays, csr.attributes())
    with pytest.raises(ValueError, match=r"csr format: expected attributes \['shape'\], got \['n', 'shape'\]"):
        CsrFormat.from_arrays(csr.arrays(), {"shape": [3, 3], "n": 2})


def test_from_dense_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        CsrFormat.from_dense(torch.ones(3))
    with pytest.raises(ValueError, match="floating"):
        CsrFormat.from_dense(torch.ones(3, 3, dtype=torch.int32))
