"""Test-only ops (domain test.serve) that make a model slow or fail on demand.

Registered on import through the public op registry, so a server subprocess can
import this module too.
"""

import time

import torch

from sparse_rt import register_op

DOMAIN = "test.serve"


@register_op("Sleep", domain=DOMAIN)
def bind_sleep(node, ctx):
    """y = x after sleeping `seconds`."""
    seconds = node.attributes.get("seconds", 0.1)

    def run(x):
        time.sleep(seconds)
        return x.clone()

    return run


@register_op("FailOnNan", domain=DOMAIN)
def bind_fail_on_nan(node, ctx):
    """y = 2 x; raises if x holds a NaN (stands in for a model failing at run time)."""

    def run(x):
        if torch.isnan(x).any():
            raise RuntimeError("input holds NaN")
        return 2 * x

    return run


@register_op("FirstRow", domain=DOMAIN)
def bind_first_row(node, ctx):
    """y = x[:1]: declares a batch dim but mixes rows, so merged runs give the wrong row count."""
    return lambda x: x[:1].clone()
