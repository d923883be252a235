"""Permuted-block weight format: L layers, each a permutation then n/2 independent 2x2 blocks.

Layer l gathers z[k] = x[permutations[l, k]] and maps each pair (z[2p], z[2p+1]) by
blocks[l, p] (rows = outputs). The padded weight is G = B_{L-1} P_{L-1} ... B_0 P_0
and W = G[:out, :in].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats._checks import check_index_range, check_int, check_keys, check_tensor
from sparse_rt.formats.base import WeightFormat, as_dense_weight, narrowest_index_dtype, register_format


def permuted_apply(x: torch.Tensor, permutations: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """y = G x on the last dim: x [..., n] -> y [..., n].

    permutations: integer [L, n]; blocks: float [L, n/2, 2, 2]. Plain torch ops
    (differentiable in x and blocks), vectorised over pairs, one step per layer.
    """
    layers, n = permutations.shape
    if x.shape[-1] != n or blocks.shape != (layers, n // 2, 2, 2):
        raise ValueError(
            f"permuted_apply: expected x [..., {n}] and blocks [{layers}, {n // 2}, 2, 2] for "
            f"permutations [{layers}, {n}], got x {list(x.shape)} and blocks {list(blocks.shape)}"
        )
    lead = x.shape[:-1]
    gathers = permutations.long()
    for layer in range(layers):
        pairs = x.index_select(-1, gathers[layer]).reshape(*lead, n // 2, 2)
        z0, z1 = pairs[..., 0], pairs[..., 1]
        block = blocks[layer]
        y0 = block[:, 0, 0] * z0 + block[:, 0, 1] * z1
        y1 = block[:, 1, 0] * z0 + block[:, 1, 1] * z1
        x = torch.stack([y0, y1], dim=-1).reshape(*lead, n)
    return x


@register_format
@dataclass(eq=False)
class PermutedFormat(WeightFormat):
    """W = (B_{L-1} P_{L-1} ... B_0 P_0)[:out, :in] held as permutations and 2x2 blocks.

    in_features, out_features: W is [out_features, in_features]
    permutations: [L, n] in narrowest_index_dtype(n - 1); each row holds 0..n-1 once;
                  n even >= max(in, out); x is zero-padded to n
    blocks:       float [L, n/2, 2, 2]
    """

    name = "permuted"

    in_features: int
    out_features: int
    permutations: torch.Tensor
    blocks: torch.Tensor

    def __post_init__(self) -> None:
        self.in_features = check_int(self.name, "in_features", self.in_features, 1)
        self.out_features = check_int(self.name, "out_features", self.out_features, 1)
        integer_dtypes = (torch.int8, torch.int16, torch.int32, torch.int64)
        check_tensor(self.name, "permutations", self.permutations, [None, None], integer_dtypes)
        layers, n = self.permutations.shape
        if n % 2 or n < max(self.shape):
            raise ValueError(
                f"permuted format: expected n (permutations.shape[1]) even and >= "
                f"max(out_features, in_features) = {max(self.shape)}, got {n}"
            )
        check_tensor(self.name, "permutations", self.permutations, [layers, n], [narrowest_index_dtype(n - 1)])
        check_tensor(self.name, "blocks", self.blocks, [layers, n // 2, 2, 2])
        check_index_range(self.name, "permutations", self.permutations, n)
        missing = (self.permutations.sort(dim=1).values != torch.arange(n)).nonzero()
        if missing.numel():
            layer, index = missing[0].tolist()
            raise ValueError(
                f"permuted format: expected every permutations[l] to hold each of 0..{n - 1} once, "
                f"got permutations[{layer}] without {index}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def n(self) -> int:
        return self.permutations.shape[1]

    @classmethod
    def from_dense(cls, weight: torch.Tensor, **params) -> PermutedFormat:
        """Always raises: a dense W has no defined factorisation into permuted blocks."""
        weight = as_dense_weight(weight)
        raise ValueError(
            f"permuted format: cannot factorise a dense W {list(weight.shape)}; permuted-block "
            f"weights come from PermutedBlockLinear layers or from their permutations and blocks "
            f"(PermutedFormat(in_features, out_features, permutations, blocks))"
        )

    def to_dense(self) -> torch.Tensor:
        eye = torch.eye(self.n, dtype=self.blocks.dtype)[: self.in_features]
        # rows of eye -> rows of W^T (padded to n outputs)
        return permuted_apply(eye, self.permutations, self.blocks)[:, : self.out_features].T.contiguous()

    @property
    def flops_per_row(self) -> int:
        """Eight per block per layer (a 2x2 block is four multiply-adds; gathers are free)."""
        return 4 * self.blocks.shape[0] * self.n

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"permutations": self.permutations, "blocks": self.blocks}

    def attributes(self) -> dict[str, int | list[int]]:
        return {"in_features": self.in_features, "out_features": self.out_features}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, torch.Tensor], attributes: dict[str, int | list[int]]
    ) -> PermutedFormat:
        check_keys(cls.name, "arrays", arrays, ["permutations", "blocks"])
        check_keys(cls.name, "attributes", attributes, ["in_features", "out_features"])
        return cls(
            in_features=attributes["in_features"],
            out_features=attributes["out_features"],
            permutations=arrays["permutations"],
            blocks=arrays["blocks"],
        )
