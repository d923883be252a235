import numpy as np
import pytest
import torch

from sparse_rt.formats import DenseFormat


def test_round_trip_keeps_the_weight():
    weight = torch.randn(5, 3)
    weight[1] = 0.0
    dense = DenseFormat.from_dense(weight)
    assert dense.shape == (5, 3)
    assert torch.equal(dense.to_dense(), weight)
    assert torch.equal(DenseFormat.from_arrays(dense.arrays(), dense.attributes()).to_dense(), weight)


def test_from_dense_takes_numpy_and_makes_the_weight_contiguous():
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert torch.equal(DenseFormat.from_dense(weight).to_dense(), torch.from_numpy(weight))
    transposed = torch.randn(4, 6).T
    assert DenseFormat.from_dense(transposed).weight.is_contiguous()


def test_nbytes_and_flops_match_hand_count():
    dense = DenseFormat.from_dense(torch.zeros(7, 9, dtype=torch.float16))
    assert dense.nbytes == 7 * 9 * 2
    assert dense.flops_per_row == 2 * 7 * 9
    assert dense.attributes() == {}


@pytest.mark.parametrize(
    "weight, message",
    [
        (torch.zeros(3), r"expected weight of shape \[\*, \*\], got \[3\]"),
        (torch.zeros(3, 3, dtype=torch.int64), "expected weight of a floating dtype, got torch.int64"),
        (torch.zeros(0, 3), r"expected a non-empty weight, got shape \[0, 3\]"),
    ],
)
def test_invalid_weights_are_rejected(weight, message):
    with pytest.raises(ValueError, match=f"^dense format: {message}"):
        DenseFormat(weight)


def test_from_arrays_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"^dense format: expected arrays \['weight'\], got \['values'\]"):
        DenseFormat.from_arrays({"values": torch.zeros(2, 2)}, {})
