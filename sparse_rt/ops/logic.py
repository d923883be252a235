"""Comparisons, boolean logic and Where.

Comparisons take two tensors of one dtype, broadcast numpy-style and return
bool. And/Or/Xor/Not take and return bool. Where(condition, x, y) picks x where
condition is true, broadcasting all three.
"""

from __future__ import annotations

import torch

from sparse_rt.ops.math_ops import widened
from sparse_rt.ops.registry import register_op

_COMPARISONS = {
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
}

_LOGICAL = {
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "Not": torch.logical_not,
    "Where": torch.where,
}


def _bind_to(fn):
    return lambda node, ctx: fn


for _op_type, _fn in _COMPARISONS.items():
    register_op(_op_type, since_version=7)(_bind_to(widened(_fn)))

for _op_type, _fn in _LOGICAL.items():
    register_op(_op_type)(_bind_to(_fn))
