"""The int8 formats: per-channel symmetric quantization, round trips through their arrays, validation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_rt.formats import BsrInt8Format, CsrInt8Format, DenseInt8Format, get_format
from sparse_rt.formats.int8 import quantize_per_channel
from tests.helpers import masked_weight

FORMATS = [CsrInt8Format, BsrInt8Format, DenseInt8Format]


def test_quantize_per_channel_by_hand():
    q, scales = quantize_per_channel(torch.tensor([[0.0, 1.27, -0.635], [0.0, 0.0, 0.0], [254.0, -127.0, 0.9]]))
    assert torch.allclose(scales, torch.tensor([0.01, 0.0, 2.0]))
    assert q.dtype == torch.int8
    assert q.tolist() == [[0, 127, -64], [0, 0, 0], [127, -64, 0]]  # -63.5 and -63.5 round to even, 0.45 to 0


@settings(max_examples=30, deadline=None)
@given(out_features=st.integers(1, 30), in_features=st.integers(1, 200),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), seed=st.integers(0, 2**16))
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_round_trip_within_half_a_step(fmt, out_features, in_features, density, seed):
    weight = masked_weight(out_features, in_features, density, seed)
    packed = fmt.from_dense(weight)
    dense = packed.to_dense()
    assert dense.shape == weight.shape and dense.dtype == torch.float32
    step = packed.scales[:, None]
    # half a step, plus the float32 rounding of W / s and q * s at a tie (a few ulps of W)
    assert bool(((dense - weight).abs() <= step / 2 * (1 + 1e-6) + weight.abs() * 4e-7 + 1e-12).all())
    assert bool((dense[weight == 0] == 0).all())  # zeros stay zeros
    rebuilt = fmt.from_arrays(packed.arrays(), packed.attributes())
    assert torch.equal(rebuilt.to_dense(), dense)
    assert get_format(fmt.name) is fmt


def test_csr_int8_drops_entries_that_quantize_to_zero():
    weight = torch.tensor([[1.0, 0.001, 0.0, -0.5], [0.0, 0.0, 0.0, 0.0]])
    csr = CsrInt8Format.from_dense(weight)
    assert csr.row_offsets.tolist() == [0, 2, 2]
    assert csr.column_indices.tolist() == [0, 3]
    assert csr.values.tolist() == [127, -64]
    assert csr.scales[1] == 0
    assert csr.nbytes == 3 * 4 + 2 * 1 + 2 * 1 + 2 * 4


def test_bsr_int8_keeps_the_quads_holding_a_nonzero():
    weight = torch.zeros(3, 6)
    weight[0, 1], weight[0, 5], weight[2, 4] = 1.0, -0.5, 2.0  # quads (0, 0), (0, 1), (2, 1)
    bsr = BsrInt8Format.from_dense(weight)
    assert bsr.row_offsets.tolist() == [0, 2, 2, 3]
    assert bsr.block_columns.tolist() == [0, 1, 1]
    assert bsr.values.tolist() == [[0, 127, 0, 0], [0, -64, 0, 0], [127, 0, 0, 0]]
    assert torch.equal(bsr.quantized(), torch.round(bsr.to_dense() / torch.tensor([1 / 127, 1, 2 / 127])[:, None]).to(torch.int8))
    assert bsr.nbytes == 4 * 8 + 3 * 1 + 3 * 4 + 3 * 4


def test_bsr_int8_validation_names_the_field():
    bsr = BsrInt8Format.from_dense(torch.randn(4, 6))  # 6 inputs: the second block column holds 2
    arrays = bsr.arrays()
    padded = arrays["values"].clone()
    padded[1, 3] = 5
    with pytest.raises(ValueError, match="bsr_int8 format: expected 0 in the inputs past in_features=6"):
        BsrInt8Format(shape=(4, 6), row_offsets=arrays["row_offsets"], block_columns=arrays["block_columns"],
                      values=padded, scales=arrays["scales"])
    with pytest.raises(ValueError, match=r"bsr_int8 format: expected values of shape \[\*, 4\], got \[8\]"):
        BsrInt8Format(shape=(4, 6), row_offsets=arrays["row_offsets"], block_columns=arrays["block_columns"],
                      values=arrays["values"].reshape(-1)[:8], scales=arrays["scales"])
    with pytest.raises(ValueError, match=r"bsr_int8 format: expected block_columns in \[0, 2\), got 2"):
        BsrInt8Format(shape=(4, 5), row_offsets=arrays["row_offsets"], block_columns=arrays["block_columns"] + 1,
                      values=arrays["values"], scales=arrays["scales"])


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(fmt, bad):
    weight = torch.ones(3, 4)
    weight[2, 1] = bad
    with pytest.raises(ValueError, match=r"expected finite values to quantize, got .* at \[2, 1\]"):
        fmt.from_dense(weight)


def test_validation_names_the_field():
    good = DenseInt8Format.from_dense(torch.randn(4, 5))
    with pytest.raises(ValueError, match="dense_int8 format: expected weight of dtype torch.int8, got torch.float32"):
        DenseInt8Format(weight=torch.randn(4, 5), scales=good.scales)
    with pytest.raises(ValueError, match="dense_int8 format: expected scales of length 4, got 3"):
        DenseInt8Format(weight=good.weight, scales=good.scales[:3])
    with pytest.raises(ValueError, match="expected scales finite and >= 0, got -1.0 at 2"):
        DenseInt8Format(weight=good.weight, scales=torch.tensor([1.0, 1.0, -1.0, 1.0]))
    csr = CsrInt8Format.from_dense(torch.randn(4, 5))
    arrays = csr.arrays()
    with pytest.raises(ValueError, match="csr_int8 format: expected values of dtype torch.int8"):
        CsrInt8Format(shape=(4, 5), row_offsets=arrays["row_offsets"], column_indices=arrays["column_indices"],
                      values=arrays["values"].float(), scales=arrays["scales"])
    with pytest.raises(ValueError, match=r"csr_int8 format: expected arrays \['column_indices', 'row_offsets', 'scales', 'values'\]"):
        CsrInt8Format.from_arrays({k: v for k, v in arrays.items() if k != "scales"}, csr.attributes())
