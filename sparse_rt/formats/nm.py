"""N:M weight format: at most n kept values in every group of m consecutive inputs."""

from __future__ import annotations

import functools

from dataclasses import dataclass

import torch

from sparse_rt.formats._checks import check_index_range, check_int, check_keys, check_pair, check_tensor
from sparse_rt.formats.base import WeightFormat, as_dense_weight, padded_mask, register_format

MAX_M = torch.iinfo(torch.int8).max + 1  # in-group positions 0..m-1 fit int8


def fits_nm(nonzero: torch.Tensor, n: int, m: int) -> bool:
    """Whether a 0/1 (bool, uint8 or float) [out, in] mask has at most n nonzeros in every group
    of m inputs (zero-padded to whole groups): whether `NmFormat.from_dense(W, n=n, m=m)` fits.
    A uint8 mask of whole groups is read in place."""
    out_features, in_features = nonzero.shape
    groups = padded_mask(nonzero, out_features, _groups(in_features, m) * m).view(out_features, -1, m)
    # m strided slices added up (torch sums a short inner axis slowly); uint8 holds up to m <= 255
    count = functools.reduce(torch.add, (groups[:, :, j] for j in range(m)))
    return bool(count.max() <= n)


def _groups(in_features: int, m: int) -> int:
    return -(-in_features // m)


@register_format
@dataclass(eq=False)
class NmFormat(WeightFormat):
    """W with n kept values per group of m inputs (2:4, 1:4, 4:8, ...).

    shape:   (out_features, in_features); the input is zero-padded to groups * m,
             groups = ceil(in / m)
    n, m:    1 <= n <= m <= 128
    values:  float [out, groups * n]; values[o, g*n + k] is the k-th kept value of group g
    indices: int8 [out, groups * n]; its position in the group, 0..m-1, strictly
             ascending within each group. Groups with fewer than n nonzeros hold zero
             values at unused positions; positions in the padding hold zero values.
    """

    name = "nm"

    shape: tuple[int, int]
    n: int
    m: int
    values: torch.Tensor
    indices: torch.Tensor

    def __post_init__(self) -> None:
        self.shape = check_pair(self.name, "shape", self.shape)
        self.m = check_int(self.name, "m", self.m, 1, MAX_M)
        self.n = check_int(self.name, "n", self.n, 1, self.m)
        out_features, in_features = self.shape
        kept = _groups(in_features, self.m) * self.n
        check_tensor(self.name, "values", self.values, [out_features, kept])
        check_tensor(self.name, "indices", self.indices, [out_features, kept], [torch.int8])
        check_index_range(self.name, "indices", self.indices, self.m)
        grouped = self.indices.reshape(out_features, -1, self.n)
        bad = (grouped[:, :, 1:] <= grouped[:, :, :-1]).nonzero()
        if bad.numel():
            o, g, _ = bad[0].tolist()
            raise ValueError(
                f"nm format: expected indices strictly ascending within each group of {self.n}, "
                f"got {grouped[o, g].tolist()} at indices[{o}, {g * self.n}:{(g + 1) * self.n}]"
            )
        padding = grouped.shape[1] * self.m - in_features
        if padding:
            # only the last group reaches into the padding: positions m - padding .. m-1
            bad = ((grouped[:, -1] >= self.m - padding) & self.values[:, -self.n :].ne(0)).nonzero()
            if bad.numel():
                o, k = bad[0].tolist()
                j = kept - self.n + k
                raise ValueError(
                    f"nm format: expected zero values in the padding beyond in_features={in_features}, "
                    f"got {float(self.values[o, j])} at values[{o}, {j}]"
                )

    @property
    def groups(self) -> int:
        return _groups(self.shape[1], self.m)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, *, n: int = 2, m: int = 4) -> NmFormat:
        """Keep every nonzero of W ([out, in]); raises ValueError if a group of m holds more than n.

        Groups with fewer than n nonzeros are filled with their lowest zero positions.
        """
        weight = as_dense_weight(weight)
        m = check_int(cls.name, "m", m, 1, MAX_M)
        n = check_int(cls.name, "n", n, 1, m)
        out_features, in_features = weight.shape
        groups = _groups(in_features, m)
        padded = weight.new_zeros(out_features, groups * m)
        padded[:, :in_features] = weight
        grouped = padded.view(out_features, groups, m)
        zero = grouped.eq(0)
        counts = m - zero.sum(dim=2)
        over = (counts > n).nonzero()
        if over.numel():
            o, g = over[0].tolist()
            raise ValueError(
                f"nm format: expected at most {n} nonzeros in every group of {m} inputs, got "
                f"{int(counts[o, g])} in row {o}, columns {g * m}:{min((g + 1) * m, in_features)}"
            )
        # rank positions: nonzeros first, then zeros, each in ascending position
        rank = zero.to(torch.int32) * m + torch.arange(m, dtype=torch.int32)
        positions = rank.topk(n, dim=2, largest=False, sorted=False).indices.sort(dim=2).values
        return cls(
            shape=(out_features, in_features),
            n=n,
            m=m,
            values=grouped.gather(2, positions).reshape(out_features, groups * n),
            indices=positions.reshape(out_features, groups * n).to(torch.int8),
        )

    def to_dense(self) -> torch.Tensor:
        out_features, in_features = self.shape
        grouped = self.values.new_zeros(out_features, self.groups, self.m)
        grouped.scatter_(
            2,
            self.indices.reshape(out_features, self.groups, self.n).long(),
            self.values.reshape(out_features, self.groups, self.n),
        )
        return grouped.view(out_features, -1)[:, :in_features].contiguous()

    @property
    def flops_per_row(self) -> int:
        """Two per stored value (fill zeros included)."""
        return 2 * self.values.numel()

    def arrays(self) -> dict[str, torch.Tensor]:
        return {"values": self.values, "indices": self.indices}

    def attributes(self) -> dict[str, int | list[int]]:
        return {"shape": list(self.shape), "n": self.n, "m": self.m}

    @classmethod
    def from_arrays(cls, arrays: dict[str, torch.Tensor], attributes: dict[str, int | list[int]]) -> NmFormat:
        check_keys(cls.name, "arrays", arrays, ["values", "indices"])
        check_keys(cls.name, "attributes", attributes, ["shape", "n", "m"])
        return cls(shape=attributes["shape"], n=attributes["n"], m=attributes["m"], **arrays)
