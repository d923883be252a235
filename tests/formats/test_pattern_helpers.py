"""count_kept_blocks and fits_nm agree with what from_dense does, on odd shapes."""

import pytest
import torch

from sparse_rt.formats import BsrFormat, NmFormat
from sparse_rt.formats.bsr import count_kept_blocks
from sparse_rt.formats.nm import fits_nm


@pytest.mark.parametrize("block_shape", [(1, 4), (4, 1), (3, 5), (8, 8)])
@pytest.mark.parametrize("as_float", [False, True])
def test_count_kept_blocks_matches_bsr(block_shape, as_float):
    torch.manual_seed(0)
    w = torch.randn(37, 29) * (torch.rand(37, 29) < 0.05)
    mask = (w != 0).float() if as_float else w != 0
    assert count_kept_blocks(mask, block_shape) == BsrFormat.from_dense(w, block_shape=block_shape).nblocks


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_fits_nm_matches_nm_from_dense(n, m):
    torch.manual_seed(1)
    w = torch.randn(11, 30)
    keep = torch.zeros_like(w, dtype=torch.bool)
    keep.view(11, -1)[:, ::m] = True  # one nonzero per group: fits every pattern
    fitting = w * keep
    assert fits_nm(fitting != 0, n, m)
    NmFormat.from_dense(fitting, n=n, m=m)
    crowded = fitting.clone()
    crowded[3, : n + 1] = 1.0  # n + 1 nonzeros in row 3's first group
    assert not fits_nm(crowded != 0, n, m)
    with pytest.raises(ValueError):
        NmFormat.from_dense(crowded, n=n, m=m)
