"""ButterflyLinear: a trainable linear layer whose weight is a butterfly matrix.

W = (B_{L-1} ... B_0)[:out, :in] with n = 2**L the smallest power of two >=
max(in, out) (at least 2), exactly the convention of ButterflyFormat: stage s
mixes the pairs (i, i + 2**s) with 2x2 twiddles. It costs 2 n log2(n) weights and
FLOPs per row instead of in * out, and converts without loss by `to_format()`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparse_rt.formats.butterfly import ButterflyFormat, butterfly_apply

BUTTERFLY_INITS = ("orthogonal", "fjlt")


class ButterflyLinear(nn.Module):
    """y = x @ W.T + b for x [..., in_features] -> y [..., out_features], W a butterfly.

    twiddles: Parameter [L, n/2, 2, 2]; inputs are zero-padded to n, outputs sliced.
    init "orthogonal": every twiddle a random 2x2 rotation, so B_{L-1} ... B_0 is orthogonal.
    init "fjlt": random signs D, then the Hadamard butterfly H (every twiddle
      [[1, 1], [1, -1]] / sqrt 2), the signs folded into stage 0: H D is orthogonal,
      the fast Johnson-Lindenstrauss transform's mixing step.
    bias: Parameter [out_features] initialised like nn.Linear's, or None.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init: str = "orthogonal",
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"ButterflyLinear: expected in_features and out_features >= 1, "
                f"got {in_features} and {out_features}"
            )
        if init not in BUTTERFLY_INITS:
            raise ValueError(f"ButterflyLinear init: expected one of {BUTTERFLY_INITS}, got {init!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.n = max(2, 1 << (max(in_features, out_features) - 1).bit_length())
        stages = self.n.bit_length() - 1
        if init == "orthogonal":
            twiddles = _random_rotations((stages, self.n // 2), generator)
        else:
            twiddles = _fjlt_twiddles(stages, self.n, generator)
        self.twiddles = nn.Parameter(twiddles)
        if bias:
            bound = 1.0 / math.sqrt(in_features)
            self.bias = nn.Parameter(torch.rand(out_features, generator=generator) * 2 * bound - bound)
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"ButterflyLinear input: expected [..., {self.in_features}], got {list(x.shape)}"
            )
        # x: [..., in] -> [..., n] -> [..., out]
        y = butterfly_apply(F.pad(x, (0, self.n - self.in_features)), self.twiddles)[..., : self.out_features]
        return y if self.bias is None else y + self.bias

    def to_format(self) -> ButterflyFormat:
        """The weight as a ButterflyFormat (a copy of the twiddles); the bias stays in `.bias`."""
        return ButterflyFormat(
            in_features=self.in_features,
            out_features=self.out_features,
            twiddles=self.twiddles.detach().cpu().clone(),
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, n={self.n}, "
            f"bias={self.bias is not None}"
        )


def _random_rotations(batch: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Rotations [[cos t, -sin t], [sin t, cos t]] with t uniform in [0, 2 pi): [*batch, 2, 2]."""
    angle = torch.rand(batch, generator=generator) * (2 * math.pi)
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([cos, -sin, sin, cos], dim=-1).reshape(*batch, 2, 2)


def _fjlt_twiddles(stages: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """Twiddles [L, n/2, 2, 2] of H_n D with D = diag of random signs."""
    hadamard = torch.tensor([[1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2.0)
    twiddles = hadamard.expand(stages, n // 2, 2, 2).clone()
    signs = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1
    # stage 0 pairs (2p, 2p + 1); D scales the inputs, i.e. the columns of each twiddle
    twiddles[0] *= signs.reshape(n // 2, 1, 2)
    return twiddles
