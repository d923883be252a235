"""The native gathered product (GatherElements(a @ b, index, axis=-1)) against its torch reference."""

import pytest
import torch

from sparse_rt.kernels.cpu._native import native_available
from sparse_rt.kernels.cpu.gathered_matmul import gathered_matmul, gathered_matmul_applies, gathered_matmul_torch
from tests.helpers import OTHER_INSTRUCTION_SETS, run_built_for

pytestmark = pytest.mark.skipif(not native_available(), reason="no C compiler for the CPU kernels")


def relative_positions(length: int, span: int) -> torch.Tensor:
    """DeBERTa's index: token i keeps relative position clamp(i - j + span) of 2 * span, [length, length]."""
    return (torch.arange(length)[:, None] - torch.arange(length)[None, :] + span).clamp(0, 2 * span - 1)


def check(a, b, index):
    assert gathered_matmul_applies(a, b, index)
    y = gathered_matmul(a, b, index)
    assert y.is_contiguous() and y.shape == index.shape
    expected = gathered_matmul_torch(a.double(), b.double(), index).float()
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads, length, width, span", [(12, 128, 64, 256), (3, 13, 5, 7), (2, 9, 37, 40), (1, 1, 1, 1)])
def test_relative_positions_as_deberta_gathers_them(heads, length, width, span):
    g = torch.Generator().manual_seed(length)
    query = torch.randn(1, length, heads, width, generator=g).transpose(1, 2).reshape(heads, length, width)
    positions = torch.randn(heads, 2 * span, width, generator=g).transpose(1, 2)  # the exporter's transpose: a view
    index = relative_positions(length, span).expand(heads, length, length)  # broadcast over heads: stride 0
    check(query, positions, index)


@pytest.mark.parametrize("lead, m, k, n, j", [((2, 3), 11, 9, 70, 5), ((), 17, 33, 3, 40), ((4,), 8, 16, 64, 1)])
def test_any_index_in_range_negative_ones_counting_from_the_end(lead, m, k, n, j):
    g = torch.Generator().manual_seed(m)
    a, b = torch.randn(*lead, m, k, generator=g), torch.randn(*lead, k, n, generator=g)
    index = torch.randint(-n, n, (*lead, m, j), generator=g)
    check(a, b, index)
    index[..., 0] = n - 1  # the last column, the end of a partial panel
    index[..., -1] = 0
    check(a, b, index)


def test_empty_outputs():
    a, b = torch.randn(2, 4, 3), torch.randn(2, 3, 5)
    assert gathered_matmul(a, b, torch.zeros(2, 4, 0, dtype=torch.int64)).shape == (2, 4, 0)
    assert gathered_matmul(a[:, :0], b, torch.zeros(2, 0, 6, dtype=torch.int64)).shape == (2, 0, 6)


def test_an_index_out_of_range_is_an_error():
    a, b = torch.randn(2, 4, 3), torch.randn(2, 3, 5)
    for bad in (5, -6):
        index = torch.zeros(2, 4, 2, dtype=torch.int64)
        index[1, 3, 1] = bad
        with pytest.raises(ValueError, match=r"indices in \[-5, 5\)"):
            gathered_matmul(a, b, index)


def test_what_it_does_not_take():
    a, b, index = torch.randn(2, 4, 3), torch.randn(2, 3, 5), torch.zeros(2, 4, 6, dtype=torch.int64)
    assert not gathered_matmul_applies(a.double(), b.double(), index)
    assert not gathered_matmul_applies(a, b, index.int())  # the op converts to int64 first
    assert not gathered_matmul_applies(a, b[:1].expand(3, 3, 5), index)  # leading dims differ
    assert not gathered_matmul_applies(a, b, index[:, :3])  # index rows != a's rows
    assert not gathered_matmul_applies(a[:, :, :0], b[:, :0], index)  # k = 0
    big = torch.randn(1, 2, 4096)
    assert not gathered_matmul_applies(big, torch.randn(1, 4096, 4096), torch.zeros(1, 2, 1, dtype=torch.int64))


OTHER_ISA_SCRIPT = r"""
import torch
from sparse_rt.kernels.cpu.gathered_matmul import gathered_matmul, gathered_matmul_torch
g = torch.Generator().manual_seed(0)
for heads, m, k, n, j in ((12, 128, 64, 512, 128), (3, 13, 5, 70, 9)):
    a, b = torch.randn(heads, m, k, generator=g), torch.randn(heads, n, k, generator=g).transpose(1, 2)
    index = torch.randint(-n, n, (1, m, j), generator=g).expand(heads, m, j)
    expected = gathered_matmul_torch(a.double(), b.double(), index).float()
    assert torch.allclose(gathered_matmul(a, b, index), expected, rtol=1e-5, atol=1e-5)
print("ok")
"""


@pytest.mark.parametrize("arch, needs", OTHER_INSTRUCTION_SETS, ids=["avx2", "portable"])
def test_other_instruction_sets(arch, needs, tmp_path):
    run_built_for(arch, needs, OTHER_ISA_SCRIPT, tmp_path)
