"""Butterfly weight format: L = log2(n) stages of n/2 2x2 twiddles (FFT-style mixing).

Stage s (stride h = 2**s) mixes the pairs (i, i + h), i = (p // h) * 2h + p % h for
p = 0..n/2-1, with the 2x2 twiddle T[s, p] (rows = outputs). The padded weight is
M = B_{L-1} ... B_0 and W = M[:out, :in].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats._checks import check_int, check_keys, check_tensor
from sparse_rt.formats.base import WeightFormat, as_dense_weight, register_format


def butterfly_apply(x: torch.Tensor, twiddles: torch.Tensor) -> torch.Tensor:
    """y = M x on the last dim: x [..., n] -> y [..., n], twiddles [L, n/2, 2, 2], n = 2**L.

    Plain torch ops (differentiable), vectorised over pairs, one step per stage.
    """
    stages = twiddles.shape[0]
    n = x.shape[-1]
    if n != 2**stages:
        raise ValueError(
            f"butterfly_apply: expected x [..., {2**stages}] for {stages} stages of twiddles, "
            f"got {list(x.shape)}"
        )
    return butterfly_stages(x, twiddles, stages)


def butterfly_stages(x: torch.Tensor, twiddles: torch.Tensor, count: int) -> torch.Tensor:
    """Stages 0..count-1 of the butterfly on the last dim of x [..., n] (twiddles [L, n/2, 2, 2])."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    for s in range(count):
        h = 2**s
        # pairs as [blocks, h]: element t of block b pairs index b*2h + t with b*2h + t + h
        twiddle = twiddles[s].reshape(n // (2 * h), h, 2, 2)
        pairs = x.reshape(*lead, n // (2 * h), 2, h)
        x0, x1 = pairs[..., 0, :], pairs[..., 1, :]
        y0 = twiddle[..., 0, 0] * x0 + twiddle[..., 0, 1] * x1
        y1 = twiddle[..., 1, 0] * x0 + twiddle[..., 1, 1] * x1
        x = torch.stack([y0, y1], dim=-2).reshape(*lead, n)
    return x


def _butterfly_matrix(twiddles: torch.Tensor) -> torch.Tensor:
    """The full [n, n] matrix M = B_{L-1} ... B_0 of twiddles [L, n/2, 2, 2]."""
    n = 2 ** twiddles.shape[0]
    # rows of eye(n) map to rows of M^T
    return butterfly_apply(torch.eye(n, dtype=twiddles.dtype), twiddles).T


def _split_rows(upper: torch.Tensor, lower: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write row p of upper and lower ([G, h, h]) as d_upper[p] * r_p and d_lower[p] * r_p.

    r_p is the larger of the two rows (exact copy); d_* are least-squares coefficients
    ([G, h] each; 1 for the row picked, 0 for both when both rows are zero).
    """
    take_upper = upper.square().sum(-1, keepdim=True) >= lower.square().sum(-1, keepdim=True)
    rows = torch.where(take_upper, upper, lower)
    norm = rows.square().sum(-1)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    d_upper = torch.where(norm > 0, (upper * rows).sum(-1) / safe, torch.zeros_like(norm))
    d_lower = torch.where(norm > 0, (lower * rows).sum(-1) / safe, torch.zeros_like(norm))
    return rows, d_upper, d_lower


def _factorise(matrix: torch.Tensor) -> torch.Tensor:
    """Twiddles [L, n/2, 2, 2] whose butterfly equals `matrix` [n, n] if it is one.

    Peels stages from the top: M = [[D00 M1, D01 M2], [D10 M1, D11 M2]] with D_ab
    the diagonals of the stride-n/2 stage and M1, M2 the butterflies of the halves.
    Row p of M1 is parallel to rows p and p + n/2 of the left half (rank one per
    pair), which fixes M1's rows up to a scale absorbed by M1's own top stage.
    Every sub-butterfly of size k at stage s = log2(k) - 1 is handled in one batch.
    """
    n = matrix.shape[0]
    stages = n.bit_length() - 1
    twiddles = matrix.new_zeros(stages, n // 2, 2, 2)
    blocks = matrix.reshape(1, n, n)  # [G, k, k], sub-butterfly g covers indices g*k:(g+1)*k
    for s in range(stages - 1, 0, -1):
        h = 2**s
        left, d00, d10 = _split_rows(blocks[:, :h, :h], blocks[:, h:, :h])
        right, d01, d11 = _split_rows(blocks[:, :h, h:], blocks[:, h:, h:])
        twiddles[s] = torch.stack([d00, d01, d10, d11], dim=-1).reshape(n // 2, 2, 2)
        blocks = torch.stack([left, right], dim=1).reshape(-1, h, h)
    if stages:
        twiddles[0] = blocks.reshape(n // 2, 2, 2)
    return twiddles


@register_format
@dataclass(eq=False)
class ButterflyFormat(WeightFormat):
    """W = (B_{L-1} ... B_0)[:out, :in] held as its twiddles.

    in_features, out_features: W is [out_features, in_features]
    twiddles: float [L, n/2, 2, 2], n = 2**L >= max(in, out); x is zero-padded to n
    """

    name = "butterfly"

    in_features: int
    out_features: int
    twiddles: torch.Tensor

    def __post_init__(self) -> None:
        self.in_features = check_int(self.name, "in_features", self.in_features, 1)
        self.out_features = check_int(self.name, "out_features", self.out_features, 1)
        check_tensor(self.name, "twiddles", self.twiddles, [None, None, 2, 2])
        stages = self.twiddles.shape[0]
        check_tensor(self.name, "twiddles", self.twiddles, [stages, 2**stages // 2, 2, 2])
        if 2**stages < max(self.shape):
            raise ValueError(
                f"butterfly format: expected n = 2**L >= max(out_features, in_features) = "
                f"{max(self.shape)}, got L = {stages} (n = {2**stages})"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def n(self) -> int:
        return 2 ** self.twiddles.shape[0]

    @classmethod
    def from_dense(cls, weight: torch.Tensor) -> ButterflyFormat:
        """Factorise a square W ([n, n], n a power of two) into twiddles.

        Exact up to floating-point rounding: raises ValueError if W is not a butterfly
        matrix (to within a few ulps of its magnitudes), and for any other shape.
        """
        weight = as_dense_weight(weight)
        out_features, in_features = weight.shape
        n = out_features
        if in_features != out_features or n & (n - 1):
            raise ValueError(
                f"butterfly format: from_dense factorises only a square W of power-of-two size, "
                f"got [{out_features}, {in_features}]; butterfly weights of other shapes come "
                f"from ButterflyLinear layers or from their twiddles (ButterflyFormat(in_features, "
                f"out_features, twiddles))"
            )
        bad = (~weight.isfinite()).nonzero()
        if bad.numel():
            i, j = bad[0].tolist()
            raise ValueError(f"butterfly format: expected a finite W, got {float(weight[i, j])} at [{i}, {j}]")
        twiddles = _factorise(weight.double()).to(weight.dtype)
        compute = torch.promote_types(weight.dtype, torch.float32)
        rebuilt = _butterfly_matrix(twiddles.to(compute))
        # rounding of a product of L stages is bounded by the product of their magnitudes;
        # the absolute term covers values rounded to subnormals
        bound = _butterfly_matrix(twiddles.to(compute).abs())
        info = torch.finfo(weight.dtype)
        subnormal_spacing = info.smallest_normal * info.eps
        floor = subnormal_spacing * max(1.0, float(bound.max()))
        tolerance = 16 * (twiddles.shape[0] + 1) * (info.eps * bound + floor)
        bad = (~((rebuilt - weight.to(compute)).abs() <= tolerance)).nonzero()
        if bad.numel():
            i, j = bad[0].tolist()
            raise ValueError(
                f"butterfly format: W [{n}, {n}] is not a butterfly matrix: the factorisation "
                f"rebuilds W[{i}, {j}] = {float(rebuilt[i, j]):.6g}, expected {float(weight[i, j]):.6g}"
            )
        return cls(in_features=in_features, out_features=out_features, twiddles=twiddles)

    def to_dense(self) -> torch.Tensor:
        eye = torch.eye(self.n, dtype=self.twiddles.dtype)[: self.in_features]
        # rows of eye -> rows of W^T (padded to n outputs)
        return butterfly_apply(eye, self.twiddles)[:, : self.out_features].T.contiguous()

    @property
    def flops_per_row(self) -> int:
        """Eight per pair per stage (a 2x2 twiddle is four multiply-adds)."""
        return 4 * self.twiddles.shape[0] * self.n

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"twiddles": self.twiddles}

    def attributes(self) -> dict[str, int | list[int]]:
        return {"in_features": self.in_features, "out_features": self.out_features}

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, torch.Tensor], attributes: dict[str, int | list[int]]
    ) -> ButterflyFormat:
        check_keys(cls.name, "arrays", arrays, ["twiddles"])
        check_keys(cls.name, "attributes", attributes, ["in_features", "out_features"])
        return cls(
            in_features=attributes["in_features"],
            out_features=attributes["out_features"],
            twiddles=arrays["twiddles"],
        )
