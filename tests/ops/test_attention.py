"""The fused ScaledDotProductAttention op against a float64 softmax(q kT s + mask) v, with the
strided views of q, kT and v the graph hands it."""

from __future__ import annotations

import pytest
import torch

from sparse_rt.ir.graph import SPARSE_DOMAIN, Node
from sparse_rt.ops import fused

SCALE = 0.125


def _bound(nan_to_zero: bool = False):
    node = Node("ScaledDotProductAttention", ["q", "kT", "v", "mask"], ["y"],
                {"scale": SCALE, "nan_to_zero": int(nan_to_zero)}, domain=SPARSE_DOMAIN)
    return fused.bind_attention(node, None)


def _expected(q, k_t, v, mask):
    scores = (q.double() @ k_t.double()) * SCALE
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    return (torch.softmax(scores, dim=-1) @ v.double()).float()


def _inputs(batch: int, heads: int, length: int, keys: int):
    g = torch.Generator().manual_seed(batch * 100 + length)
    q = torch.randn(batch, length, heads, 16, generator=g).transpose(1, 2)  # views, as the graph gives them
    k_t = torch.randn(batch, keys, heads, 16, generator=g).permute(0, 2, 3, 1)
    v = torch.randn(batch, keys, heads, 8, generator=g).transpose(1, 2)
    return q, k_t, v


MASKS = {
    "none": lambda b, h, l, s: None,
    "additive_per_key": lambda b, h, l, s: torch.where(torch.arange(s) % 3 == 0, -10000.0, 0.0).expand(b, 1, 1, s),
    "additive_full": lambda b, h, l, s: torch.randn(b, h, l, s),
    "boolean_causal": lambda b, h, l, s: torch.ones(l, s, dtype=torch.bool).tril(s - l),
}


@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("shape", [(1, 3, 7, 7), (2, 2, 1, 9), (3, 1, 5, 12)])
def test_attention_matches_the_reference(shape, mask_name):
    q, k_t, v = _inputs(*shape)
    mask = MASKS[mask_name](*shape)
    out = _bound()(q, k_t, v, mask)
    expected = _expected(q, k_t, v, mask)
    assert out.shape == expected.shape
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_fully_masked_rows_are_zero_with_nan_to_zero():
    q, k_t, v = _inputs(1, 2, 4, 6)
    mask = torch.zeros(1, 1, 4, 6)
    mask[..., 2, :] = float("-inf")
    out = _bound(nan_to_zero=True)(q, k_t, v, mask)
    assert bool((out[..., 2, :] == 0).all())
    keep = [0, 1, 3]
    assert torch.allclose(out[..., keep, :], _expected(q, k_t, v, mask)[..., keep, :], rtol=1e-5, atol=1e-5)
