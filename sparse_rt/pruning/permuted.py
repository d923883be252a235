"""PermutedBlockLinear: a trainable product of fixed permutations and 2x2 blocks.

Liao et al.'s G(theta) = B(theta_{L-1}) P_{L-1} ... B(theta_0) P_0 with fixed
random permutations P_l and block-diagonal B_l of n/2 trainable 2x2 blocks, in
exactly the convention of PermutedFormat: layer l gathers z[k] = x[perm_l[k]],
then maps each pair (z[2p], z[2p+1]) by blocks[l, p]. W = G[:out, :in]; inputs
are zero-padded to n and outputs sliced. It costs 2 n L weights and FLOPs per
row instead of in * out.

The nonlinear variant h_theta adds a bias and tanh after every layer but the
last; it is not a linear map and has no weight format.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sparse_rt.formats.base import narrowest_index_dtype
from sparse_rt.formats.permuted import PermutedFormat, permuted_apply


class PermutedBlockLinear(nn.Module):
    """y = G(x) for x [..., in_features] -> y [..., out_features] (+ bias).

    depth:        number of layers L (each a permutation then n/2 2x2 blocks)
    n:            padded width, even and >= max(in, out); default max(in, out) rounded up to even
    permutations: buffer [L, n] in narrowest_index_dtype(n - 1), drawn with `generator`
    blocks:       Parameter [L, n/2, 2, 2], each a random orthogonal 2x2 matrix
                  (rotation or reflection, Haar distributed), drawn with `generator`
    bias:         Parameter [out_features] (zeros) or None
    nonlinear:    if True, layer_biases Parameter [L - 1, n] (zeros) and tanh after every layer but the last
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        depth: int,
        n: int | None = None,
        bias: bool = False,
        nonlinear: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if in_features < 1 or out_features < 1 or depth < 1:
            raise ValueError(
                f"PermutedBlockLinear: expected in_features, out_features and depth >= 1, "
                f"got {in_features}, {out_features} and {depth}"
            )
        widest = max(in_features, out_features)
        n = widest + widest % 2 if n is None else n
        if n % 2 or n < widest:
            raise ValueError(f"PermutedBlockLinear: expected n even and >= max(in, out) = {widest}, got {n}")
        self.in_features = in_features
        self.out_features = out_features
        self.depth = depth
        self.n = n
        self.nonlinear = nonlinear
        permutations = torch.stack([torch.randperm(n, generator=generator) for _ in range(depth)])
        self.register_buffer("permutations", permutations.to(narrowest_index_dtype(n - 1)))
        self.blocks = nn.Parameter(_random_orthogonal_2x2((depth, n // 2), generator))
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_features)) if bias else None)
        self.register_parameter(
            "layer_biases", nn.Parameter(torch.zeros(depth - 1, n)) if nonlinear else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"PermutedBlockLinear input: expected [..., {self.in_features}], got {list(x.shape)}"
            )
        z = F.pad(x, (0, self.n - self.in_features))  # [..., n]
        if self.nonlinear:
            for layer in range(self.depth):
                z = permuted_apply(z, self.permutations[layer : layer + 1], self.blocks[layer : layer + 1])
                if layer < self.depth - 1:
                    z = torch.tanh(z + self.layer_biases[layer])
        else:
            z = permuted_apply(z, self.permutations, self.blocks)
        y = z[..., : self.out_features]
        return y if self.bias is None else y + self.bias

    def regularizer(self) -> torch.Tensor:
        """Orthogonality penalty: 2 * ||I - B^T B||_F^2 averaged over all L * n/2 blocks (0-d tensor)."""
        gram = self.blocks.transpose(-1, -2) @ self.blocks  # [L, n/2, 2, 2]
        eye = torch.eye(2, dtype=gram.dtype, device=gram.device)
        return 2.0 * (eye - gram).square().sum(dim=(-2, -1)).mean()

    def to_format(self) -> PermutedFormat:
        """The weight as a PermutedFormat (copies); the bias stays in `.bias`. Linear variant only."""
        if self.nonlinear:
            raise ValueError(
                "PermutedBlockLinear.to_format: expected the linear variant (nonlinear=False), "
                "got nonlinear=True (tanh between layers makes it no linear map)"
            )
        return PermutedFormat(
            in_features=self.in_features,
            out_features=self.out_features,
            permutations=self.permutations.cpu().clone(),
            blocks=self.blocks.detach().cpu().clone(),
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, depth={self.depth}, "
            f"n={self.n}, bias={self.bias is not None}, nonlinear={self.nonlinear}"
        )


def _random_orthogonal_2x2(batch: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Haar-random orthogonal 2x2 matrices [*batch, 2, 2]: a rotation, reflected with probability 1/2."""
    angle = torch.rand(batch, generator=generator) * (2 * math.pi)
    cos, sin = torch.cos(angle), torch.sin(angle)
    flip = torch.randint(0, 2, batch, generator=generator).float() * 2 - 1
    # columns (cos, sin) and flip * (-sin, cos)
    return torch.stack([cos, -sin * flip, sin, cos * flip], dim=-1).reshape(*batch, 2, 2)
