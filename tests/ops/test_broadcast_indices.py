"""Index inputs that arrive as an Expand's view (stride 0 along broadcast axes, as DeBERTa's
relative positions do) give what the materialized index gives, negative entries included;
Tile with every repeat 1 is the input itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse_rt.ir.graph import Node
from sparse_rt.ops.registry import BindContext, lookup


def bind(op_type: str, inputs: list[str], **attributes):
    node = Node(op_type, inputs, ["y"], attributes=attributes, name=op_type.lower())
    return lookup(op_type, "", 18).bind(node, BindContext(device=torch.device("cpu"), opset=18, constants={}))


def broadcast_index(dtype=torch.int64) -> torch.Tensor:
    """[3, 4, 5] expanded from [1, 4, 5], entries in [-6, 5] (negative ones count from the end)."""
    base = torch.arange(20, dtype=dtype).reshape(1, 4, 5) % 12 - 6
    index = base.expand(3, 4, 5)
    assert index.stride()[0] == 0
    return index


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_gather_elements_with_a_broadcast_index(dtype):
    x = torch.randn(3, 4, 6)
    index = broadcast_index(dtype)
    expected = bind("GatherElements", ["x", "i"], axis=-1)(x, index.contiguous())
    actual = bind("GatherElements", ["x", "i"], axis=-1)(x, index)
    assert torch.equal(actual, expected)
    wrapped = index.contiguous().to(torch.int64) % 6
    assert torch.equal(actual, torch.from_numpy(np.take_along_axis(x.numpy(), wrapped.numpy(), axis=-1)))


def test_scatter_elements_with_a_broadcast_index():
    x, updates = torch.zeros(3, 4, 6), torch.ones(3, 4, 5)
    index = broadcast_index()
    scatter = bind("ScatterElements", ["x", "i", "u"], axis=-1, reduction="add")
    assert torch.equal(scatter(x, index, updates), scatter(x, index.contiguous(), updates))


def test_one_hot_with_a_broadcast_index():
    index, values = broadcast_index(), torch.tensor([0.0, 1.0])
    one_hot = bind("OneHot", ["i", "d", "v"])
    expected = one_hot(index.contiguous(), torch.tensor([6]), values)
    assert torch.equal(one_hot(index, torch.tensor([6]), values), expected)
    assert expected.sum() == index.numel()


def test_tile_with_every_repeat_one_is_the_input():
    tile = bind("Tile", ["x", "r"])
    x = torch.randn(2, 3)
    assert tile(x, torch.tensor([1, 1])) is x
    assert torch.equal(tile(x, torch.tensor([2, 1])), torch.from_numpy(np.tile(x.numpy(), (2, 1))))


@pytest.mark.parametrize("a, b", [((1, 12, 128, 128), (1, 1, 1, 128)), ((3, 1, 5), (4, 1)), ((), (2, 3)),
                                  ((2, 3), (3, 2)), ((0, 1), (1, 4)), ((2, 1, 3), (2, 5, 1, 1))])
def test_broadcast_shape_is_torchs(a, b):
    from sparse_rt.ops.common import broadcast_shape

    try:
        expected = tuple(torch.broadcast_shapes(a, b))
    except RuntimeError:
        expected = None
    assert broadcast_shape(a, b) == expected
