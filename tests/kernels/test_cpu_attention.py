"""The native CPU attention kernel against a float64 softmax(q kT s + mask) v: the layouts the
graph hands it (heads as strided views of one fused projection, kT either way round), odd
sizes, masks broadcast every way, fully masked and NaN rows, and the other instruction sets."""

from __future__ import annotations

import pytest
import torch

from sparse_rt.kernels.cpu.attention import native_attention, native_attention_applies
from tests.helpers import OTHER_INSTRUCTION_SETS, run_built_for

SCALE = 0.3


def _expected(q, k_t, v, mask):
    scores = (q.double() @ k_t.double()) * SCALE
    if mask is not None:
        scores = scores + mask.double()
    return (torch.softmax(scores, dim=-1) @ v.double()).float()


def _fused_projection(batch: int, heads: int, length: int, width: int, seed: int):
    """q, kT, v as the graph gives them: views of one [batch, length, 3 * heads * width] tensor."""
    qkv = torch.randn(batch, length, 3, heads, width, generator=torch.Generator().manual_seed(seed))
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [batch, heads, length, width]
    return q, k.transpose(-1, -2), v


@pytest.mark.parametrize("batch, heads, length, width", [(1, 12, 128, 64), (2, 3, 7, 5), (1, 1, 1, 1), (3, 2, 33, 17)])
@pytest.mark.parametrize("kt_layout", ["view_of_k", "contiguous"])
def test_fused_projection_views(batch, heads, length, width, kt_layout):
    q, k_t, v = _fused_projection(batch, heads, length, width, seed=length)
    if kt_layout == "contiguous":
        k_t = k_t.contiguous()
    mask = torch.where(torch.arange(length) % 4 == 1, -10000.0, 0.0).expand(batch, 1, 1, length)
    assert native_attention_applies(q, k_t, v, mask)
    out = native_attention(q, k_t, v, mask, SCALE)
    assert out.shape == (batch, heads, length, width)
    assert torch.allclose(out, _expected(q, k_t, v, mask), rtol=1e-5, atol=1e-5)
    # two leading dims: the result lies in [batch, length, heads, width] memory
    assert out.transpose(1, 2).is_contiguous()


MASKS = {
    "none": lambda lead, l, s: None,
    "per_query_and_key": lambda lead, l, s: torch.randn(*lead, l, s),
    "shared_by_heads": lambda lead, l, s: torch.randn(lead[0], *[1] * (len(lead) - 1), l, s),
    "one_row_for_all": lambda lead, l, s: torch.randn(s),
    "causal_additive": lambda lead, l, s: torch.full((l, s), float("-inf")).triu(1 + s - l),
}


@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("lead", [(2,), (2, 3), (2, 1, 3)], ids=["1d", "2d", "3d"])
@pytest.mark.parametrize("length, keys, width, value_width", [(5, 9, 8, 8), (40, 70, 16, 33), (1, 1, 3, 2)])
def test_shapes_and_masks(mask_name, lead, length, keys, width, value_width):
    g = torch.Generator().manual_seed(length * keys)
    q, k_t = torch.randn(*lead, length, width, generator=g), torch.randn(*lead, width, keys, generator=g)
    v = torch.randn(*lead, keys, value_width, generator=g)
    mask = MASKS[mask_name](lead, length, keys)
    assert native_attention_applies(q, k_t, v, mask)
    out = native_attention(q, k_t, v, mask, SCALE)
    assert out.shape == (*lead, length, value_width)
    assert torch.allclose(out, _expected(q, k_t, v, mask), rtol=1e-5, atol=1e-5)


def test_fully_masked_and_nan_rows_are_nan():
    q, k_t, v = _fused_projection(1, 2, 6, 8, seed=1)
    mask = torch.zeros(1, 1, 6, 6)
    mask[..., 2, :] = float("-inf")
    q = q.clone()
    q[0, 1, 4, 0] = float("nan")
    out = native_attention(q, k_t, v, mask, SCALE)
    assert bool(out[:, :, 2].isnan().all()) and bool(out[0, 1, 4].isnan().all())
    expected = _expected(q, k_t, v, mask)
    finite = ~expected.isnan()
    assert torch.equal(finite, ~out.isnan())
    assert torch.allclose(out[finite], expected[finite], rtol=1e-5, atol=1e-5)


def test_what_the_kernel_leaves_to_torch():
    q, k_t, v = torch.randn(2, 4, 8), torch.randn(2, 8, 5), torch.randn(2, 5, 3)
    assert native_attention_applies(q, k_t, v, None)
    assert not native_attention_applies(q.double(), k_t.double(), v.double(), None)
    assert not native_attention_applies(q, k_t, v, torch.ones(4, 5, dtype=torch.bool))
    assert not native_attention_applies(q, k_t, v, torch.zeros(3, 4, 5))  # mask not broadcastable
    assert not native_attention_applies(q[None].expand(3, 2, 4, 8), k_t, v, None)  # leading dims differ
    assert not native_attention_applies(q[:, :0], k_t, v, None)  # no queries
    assert not native_attention_applies(q[0], k_t[0], v[0], None)  # no leading dim
    keys = torch.randn(1, 70000, 64)  # a head's packed keys alone past the scratch limit
    assert not native_attention_applies(torch.randn(1, 8, 64), keys.transpose(-1, -2), keys, None)


@pytest.mark.parametrize("heads, length", [(1, 1000), (2, 517), (1, 9)])
def test_few_heads_of_many_queries_split_into_blocks(heads, length):
    """SegFormer's first stage: one head, thousands of queries, a few hundred keys; its queries
    are split into tasks of at most QUERY_ROWS_MAX, the last one partial, each with its mask rows."""
    g = torch.Generator().manual_seed(length)
    q, k_t, v = torch.randn(heads, length, 32, generator=g), torch.randn(heads, 32, 50, generator=g), torch.randn(
        heads, 50, 24, generator=g)
    mask = torch.randn(1, length, 50, generator=g)  # a different mask for every query
    assert native_attention_applies(q, k_t, v, mask)
    assert torch.allclose(native_attention(q, k_t, v, mask, SCALE), _expected(q, k_t, v, mask), rtol=1e-5, atol=1e-5)


OTHER_ISA_SCRIPT = r"""
import torch
from sparse_rt.kernels.cpu.attention import native_attention
g = torch.Generator().manual_seed(0)
for lead, l, s, e, ev in (((1, 12), 128, 128, 64, 64), ((2, 3), 7, 19, 5, 9)):
    q, k_t, v = torch.randn(*lead, l, e, generator=g), torch.randn(*lead, e, s, generator=g), torch.randn(*lead, s, ev, generator=g)
    mask = torch.randn(lead[0], 1, 1, s, generator=g)
    expected = (torch.softmax((q.double() @ k_t.double()) * 0.3 + mask.double(), -1) @ v.double()).float()
    assert torch.allclose(native_attention(q, k_t, v, mask, 0.3), expected, rtol=1e-5, atol=1e-5)
print("ok")
"""


@pytest.mark.parametrize("arch, needs", OTHER_INSTRUCTION_SETS, ids=["avx2", "portable"])
def test_other_instruction_sets(arch, needs, tmp_path):
    run_built_for(arch, needs, OTHER_ISA_SCRIPT, tmp_path)
