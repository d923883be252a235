"""BitmaskFormat: lossless round trips, the arrays it builds, bytes, and rejection of corrupt arrays."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_rt.formats import BitmaskFormat, get_format
from sparse_rt.formats.bitmask import VALUE_PADDING, mask_bytes
from tests.helpers import masked_weight


def two_of_four(out_features: int, in_features: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    groups = -(-in_features // 4)
    scores = torch.rand(out_features, groups, 4, generator=generator)
    keep = torch.zeros(out_features, groups, 4).scatter_(2, scores.topk(2, dim=2).indices, 1.0)
    keep = keep.reshape(out_features, groups * 4)[:, :in_features]
    return torch.randn(out_features, in_features, generator=generator) * keep


@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (1, 70), (5, 64), (9, 65), (13, 129), (2, 200)])
@pytest.mark.parametrize("density", [0.0, 0.3, 0.5, 1.0])
def test_round_trip_is_exact(shape, density):
    weight = masked_weight(*shape, density, seed=shape[0] * 1000 + shape[1])
    fmt = BitmaskFormat.from_dense(weight)
    nnz = int((weight != 0).sum())
    assert fmt.mask.shape == (shape[0], mask_bytes(shape[1])) and fmt.mask.dtype == torch.uint8
    assert fmt.mask.shape[1] % 8 == 0  # whole 64-bit words
    assert fmt.nnz == nnz and fmt.values.shape == (nnz + VALUE_PADDING,)
    assert torch.equal(fmt.to_dense(), weight)
    assert torch.equal(BitmaskFormat.from_arrays(fmt.arrays(), fmt.attributes()).to_dense(), weight)


@settings(max_examples=40, deadline=None)
@given(
    out_features=st.integers(1, 20),
    in_features=st.integers(1, 140),
    density=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]),
)
def test_round_trip_property(out_features, in_features, density, seed, dtype):
    weight = masked_weight(out_features, in_features, density, seed=seed, dtype=dtype)
    weight[seed % out_features] = 0  # an empty row
    fmt = BitmaskFormat.from_dense(weight)
    assert fmt.values.dtype == dtype
    rebuilt = fmt.to_dense()
    assert rebuilt.dtype == dtype and torch.equal(rebuilt, weight)
    again = BitmaskFormat.from_dense(rebuilt)
    assert torch.equal(again.mask, fmt.mask) and torch.equal(again.values, fmt.values)


def test_from_dense_builds_the_expected_arrays():
    weight = torch.zeros(3, 10)
    weight[0, [0, 3, 9]] = torch.tensor([1.0, 2.0, 3.0])
    weight[2, [7, 8]] = torch.tensor([4.0, 5.0])
    fmt = BitmaskFormat.from_dense(weight)
    expected_mask = torch.zeros(3, 8, dtype=torch.uint8)
    expected_mask[0, 0], expected_mask[0, 1] = 0b1001, 0b10  # columns 0, 3 | 9
    expected_mask[2, 0], expected_mask[2, 1] = 0b10000000, 0b1  # column 7 | 8
    assert torch.equal(fmt.mask, expected_mask)
    assert fmt.row_offsets.tolist() == [0, 3, 3, 5] and fmt.row_offsets.dtype == torch.int32
    assert fmt.values.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0] + [0.0] * VALUE_PADDING
    assert fmt.attributes() == {"shape": [3, 10]}
    assert get_format("bitmask") is BitmaskFormat


def test_two_of_four_fits_in_fewer_bytes_than_csr_and_nm():
    weight = two_of_four(64, 512, seed=1)
    fmt = BitmaskFormat.from_dense(weight)
    assert torch.equal(fmt.to_dense(), weight)
    # mask: 64 bytes a row; offsets int32 [65]; values 256 a row plus padding
    assert fmt.nbytes == 64 * 64 + 65 * 4 + (64 * 256 + VALUE_PADDING) * 4
    csr, nm = get_format("csr").from_dense(weight), get_format("nm").from_dense(weight, n=2, m=4)
    assert fmt.nbytes < nm.nbytes < csr.nbytes
    assert fmt.flops_per_row == 2 * 64 * 256


def test_bytes_per_dense_element_at_fifty_percent():
    weight = masked_weight(256, 1024, 0.5, seed=2)
    nnz = int((weight != 0).sum())
    fmt = BitmaskFormat.from_dense(weight)
    assert fmt.nbytes == 256 * 128 + 257 * 4 + (nnz + VALUE_PADDING) * 4
    assert 2.0 < fmt.nbytes / weight.numel() < 2.2  # 4 * density + 1/8


def _arrays(weight=None):
    weight = masked_weight(4, 20, 0.5, seed=3) if weight is None else weight
    return BitmaskFormat.from_dense(weight).arrays()


def _build(**changes):
    return BitmaskFormat(shape=(4, 20), **{**_arrays(), **changes})


def test_corrupt_arrays_are_rejected():
    arrays = _arrays()
    mask, offsets, values = arrays["mask"], arrays["row_offsets"], arrays["values"]
    with pytest.raises(ValueError, match=r"^bitmask format: expected mask of dtype torch.uint8, got torch.int8"):
        _build(mask=mask.to(torch.int8))
    with pytest.raises(ValueError, match=r"^bitmask format: expected mask of shape \[4, 8\], got \[4, 3\]"):
        _build(mask=mask[:, :3])
    with pytest.raises(ValueError, match=r"expected row_offsets of length 5, got 4"):
        _build(row_offsets=offsets[:4])
    with pytest.raises(ValueError, match=r"expected row_offsets\[0\] == 0, got 1"):
        _build(row_offsets=offsets + 1)
    bad = offsets.clone()
    bad[2] = bad[3] + 1
    with pytest.raises(ValueError, match=r"expected non-decreasing row_offsets"):
        _build(row_offsets=bad)
    with pytest.raises(ValueError, match=r"expected values of length row_offsets\[-1\] \+ 16 \(the padding\), got 3"):
        _build(values=values[:3])
    with pytest.raises(ValueError, match=r"expected row_offsets\[-1\] == \d+ \(the length of values less its 16"):
        _build(values=values[:-1])
    with pytest.raises(ValueError, match=r"expected the last 16 values \(padding\) to be zero"):
        _build(values=torch.cat([values[:-1], torch.ones(1)]))


def test_offsets_must_agree_with_the_mask_popcounts():
    weight = torch.zeros(4, 20)
    weight[1, :5] = 1.0
    weight[2, 3] = 2.0
    arrays = BitmaskFormat.from_dense(weight).arrays()
    mask = arrays["mask"].clone()
    mask[1, 0] ^= 0b1  # row 1 loses a bit, row 2 keeps its value count
    message = (r"^bitmask format: expected row 1 to hold as many values as its mask has set bits \(4\), "
               r"got row_offsets\[2\] - row_offsets\[1\] = 5")
    with pytest.raises(ValueError, match=message):
        BitmaskFormat(shape=(4, 20), mask=mask, row_offsets=arrays["row_offsets"], values=arrays["values"])
    moved = arrays["mask"].clone()
    moved[1, 0], moved[2, 0] = 0b1111, 0b1001  # same total, split differently
    with pytest.raises(ValueError, match=r"expected row 1 to hold as many values"):
        BitmaskFormat(shape=(4, 20), mask=moved, row_offsets=arrays["row_offsets"], values=arrays["values"])


@pytest.mark.parametrize("byte, bit", [(2, 4), (3, 0), (7, 7)], ids=["same_byte", "next_byte", "last_byte"])
def test_bits_past_in_features_are_rejected(byte, bit):
    weight = torch.zeros(2, 20)  # columns 16..19 live in byte 2, bits 0..3
    weight[0, 19] = 1.0
    arrays = BitmaskFormat.from_dense(weight).arrays()
    mask = arrays["mask"].clone()
    mask[1, byte] |= 1 << bit
    offsets = torch.tensor([0, 1, 2], dtype=torch.int32)
    values = torch.cat([torch.ones(2), torch.zeros(VALUE_PADDING)])
    with pytest.raises(ValueError, match=rf"^bitmask format: expected no mask bits past in_features=20, got mask\[1, {byte}\]"):
        BitmaskFormat(shape=(2, 20), mask=mask, row_offsets=offsets, values=values)


def test_from_arrays_checks_keys():
    fmt = BitmaskFormat.from_dense(masked_weight(3, 9, 0.5, seed=4))
    with pytest.raises(ValueError, match=r"expected arrays \['mask', 'row_offsets', 'values'\]"):
        BitmaskFormat.from_arrays({"mask": fmt.mask, "values": fmt.values}, fmt.attributes())
    with pytest.raises(ValueError, match=r"expected attributes \['shape'\]"):
        BitmaskFormat.from_arrays(fmt.arrays(), {"shape": [3, 9], "n": 2})
    with pytest.raises(ValueError, match=r"expected a 2-D"):
        BitmaskFormat.from_dense(torch.ones(3))
