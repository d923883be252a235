import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_rt.formats import BsrFormat

BLOCK_SHAPES = [(1, 4), (4, 1), (8, 1), (1, 8), (4, 4), (16, 16), (32, 32)]


def block_sparse_weight(out_features, in_features, block_shape, block_density, entry_density, seed):
    """Random W whose nonzeros cluster in a random subset of blocks."""
    generator = torch.Generator().manual_seed(seed)
    r, c = block_shape
    grid = (-(-out_features // r), -(-in_features // c))
    blocks_on = torch.rand(grid, generator=generator) < block_density
    mask = blocks_on.repeat_interleave(r, 0).repeat_interleave(c, 1)[:out_features, :in_features]
    mask &= torch.rand(out_features, in_features, generator=generator) < entry_density
    return torch.where(mask, torch.randn(out_features, in_features, generator=generator), torch.zeros(()))


def kept_blocks_by_loop(weight, block_shape):
    """(block row, block column) of every block holding a nonzero, row-major."""
    r, c = block_shape
    out_features, in_features = weight.shape
    return [
        (i, j)
        for i in range(-(-out_features // r))
        for j in range(-(-in_features // c))
        if weight[i * r : (i + 1) * r, j * c : (j + 1) * c].ne(0).any()
    ]


@pytest.mark.parametrize("block_shape", BLOCK_SHAPES)
@pytest.mark.parametrize("shape", [(37, 70), (5, 3), (64, 64), (1, 33)])
@pytest.mark.parametrize("block_density", [0.0, 0.3, 1.0])
def test_round_trip_and_kept_blocks(block_shape, shape, block_density):
    weight = block_sparse_weight(*shape, block_shape, block_density, entry_density=0.5, seed=11)
    bsr = BsrFormat.from_dense(weight, block_shape=block_shape)
    assert torch.equal(bsr.to_dense(), weight)
    expected = kept_blocks_by_loop(weight, block_shape)
    rows = bsr.block_rows_of_blocks().tolist()
    assert list(zip(rows, bsr.block_column_indices.tolist())) == expected
    assert bsr.blocks.shape == (len(expected), *block_shape)
    assert bsr.block_row_offsets.dtype == torch.int32


@settings(max_examples=30, deadline=None)
@given(
    out_features=st.integers(1, 50),
    in_features=st.integers(1, 50),
    block_shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    density=st.sampled_from([0.0, 0.02, 0.2, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_round_trip_is_exact(out_features, in_features, block_shape, density, seed):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(out_features, in_features, generator=generator) < density
    weight = torch.where(mask, torch.randn(out_features, in_features, generator=generator), torch.zeros(()))
    bsr = BsrFormat.from_dense(weight, block_shape=block_shape)
    assert torch.equal(bsr.to_dense(), weight)
    rebuilt = BsrFormat.from_arrays(bsr.arrays(), bsr.attributes())
    assert torch.equal(rebuilt.to_dense(), weight)
    assert rebuilt.block_shape == block_shape


def test_hand_built_bsr_to_dense():
    bsr = BsrFormat(
        shape=(3, 5),
        block_shape=(2, 2),
        block_row_offsets=torch.tensor([0, 1, 2], dtype=torch.int32),
        block_column_indices=torch.tensor([2, 0], dtype=torch.int8),
        blocks=torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[3.0, 4.0], [0.0, 0.0]]]),
    )
    expected = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 2.0], [3.0, 4.0, 0.0, 0.0, 0.0]]
    )
    assert torch.equal(bsr.to_dense(), expected)


def test_nbytes_and_flops_match_hand_count():
    weight = torch.zeros(5, 6)
    weight[0, 0] = 1.0  # block (0, 0)
    weight[4, 5] = 2.0  # block (2, 1), in the padded corner
    weight[3, 4] = 3.0  # block (1, 1)
    bsr = BsrFormat.from_dense(weight, block_shape=(2, 4))
    assert bsr.nblocks == 3
    # block_row_offsets 4 x int32 + block_column_indices 3 x int8 + blocks 3 x 2 x 4 float32
    assert bsr.nbytes == 4 * 4 + 3 * 1 + 3 * 8 * 4
    assert bsr.flops_per_row == 2 * 3 * 8


def test_block_column_indices_use_the_narrowest_dtype():
    weight = torch.zeros(2, 300)
    weight[1, 299] = 1.0
    assert BsrFormat.from_dense(weight, block_shape=(1, 2)).block_column_indices.dtype == torch.int16
    assert BsrFormat.from_dense(weight, block_shape=(1, 4)).block_column_indices.dtype == torch.int8


def test_all_zero_and_fully_dense_weights():
    empty = BsrFormat.from_dense(torch.zeros(9, 9), block_shape=(4, 4))
    assert empty.nblocks == 0 and empty.block_row_offsets.tolist() == [0, 0, 0, 0]
    assert torch.equal(empty.to_dense(), torch.zeros(9, 9))
    full_weight = torch.randn(9, 9).abs() + 1
    full = BsrFormat.from_dense(full_weight, block_shape=(4, 4))
    assert full.nblocks == 9
    assert torch.equal(full.to_dense(), full_weight)


def example_fields(**changes):
    fields = dict(
        shape=(3, 5),
        block_shape=(2, 2),
        block_row_offsets=torch.tensor([0, 2, 3], dtype=torch.int32),
        block_column_indices=torch.tensor([0, 1, 2], dtype=torch.int8),
        blocks=torch.ones(3, 2, 2),
    )
    fields["blocks"][2, 1, :] = 0.0  # block row 1 covers rows 2..3; row 3 is padding
    fields["blocks"][2, :, 1] = 0.0  # block column 2 covers columns 4..5; column 5 is padding
    fields.update(changes)
    return fields


def test_example_fields_are_valid():
    assert BsrFormat(**example_fields()).to_dense().sum() == 4 + 4 + 1


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"blocks": torch.zeros(3, 2, 3)}, r"expected blocks of shape \[\*, 2, 2\], got \[3, 2, 3\]"),
        ({"block_row_offsets": torch.tensor([0, 2, 1], dtype=torch.int32)}, r"block_row_offsets\[-1\] == 3"),
        (
            {"block_row_offsets": torch.tensor([0, 3, 2, 3], dtype=torch.int32)},
            "expected block_row_offsets of length 3, got 4",
        ),
        (
            {"block_row_offsets": torch.tensor([0, 2, 3])},
            "expected block_row_offsets of dtype torch.int32, got torch.int64",
        ),
        (
            {"block_column_indices": torch.tensor([0, 3, 2], dtype=torch.int8)},
            r"expected block_column_indices in \[0, 3\), got 3 at flat position 1",
        ),
        (
            {"block_column_indices": torch.tensor([1, 0, 2], dtype=torch.int8)},
            "strictly ascending within each block row, got 0 after 1 in block row 0",
        ),
        (
            {"block_column_indices": torch.tensor([0, 1], dtype=torch.int8)},
            "expected block_column_indices of length 3, got 2",
        ),
        (
            {"blocks": torch.ones(3, 2, 2)},
            r"expected zeros in blocks beyond shape \[3, 5\].* got a nonzero in blocks\[2\]",
        ),
        ({"block_shape": (0, 2)}, r"expected block_shape\[0\] >= 1, got 0"),
    ],
)
def test_corrupted_arrays_are_rejected(changes, message):
    with pytest.raises(ValueError, match=f"^bsr format: .*{message}"):
        BsrFormat(**example_fields(**changes))


def test_non_monotone_offsets_are_rejected():
    fields = example_fields(
        shape=(6, 5),
        block_row_offsets=torch.tensor([0, 2, 1, 3], dtype=torch.int32),
        blocks=torch.zeros(3, 2, 2),
    )
    with pytest.raises(ValueError, match=r"^bsr format: expected non-decreasing block_row_offsets"):
        BsrFormat(**fields)


def test_from_arrays_rejects_wrong_attributes():
    bsr = BsrFormat(**example_fields())
    message = r"^bsr format: expected attributes \['block_shape', 'shape'\], got \['shape'\]"
    with pytest.raises(ValueError, match=message):
        BsrFormat.from_arrays(bsr.arrays(), {"shape": [3, 5]})
