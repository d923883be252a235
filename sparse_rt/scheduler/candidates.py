"""Candidates for a linear layer: every (format, kernel, config) that holds its weight losslessly.

Dense, CSR and bitmask are always candidates; BSR for the block shapes whose fill
makes them worth timing; N:M when the pattern fits; a structured format (butterfly,
permuted) when the layer arrived as one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparse_rt.formats import get_format
from sparse_rt.formats.base import WeightFormat
from sparse_rt.formats.bsr import count_kept_blocks
from sparse_rt.formats.nm import fits_nm
from sparse_rt.kernels.registry import Config, kernels_for

BLOCK_SHAPES = ((1, 4), (4, 1), (1, 8), (8, 1), (4, 4), (8, 8), (16, 16), (32, 32))
# a block shape is timed only if its kept blocks store at most this many values per nonzero
MAX_BLOCK_FILL_OVERHEAD = 2.0
# ... and keep at most this share of the matrix
MAX_BLOCK_DENSITY = 0.5
NM_PATTERNS = ((1, 4), (2, 4), (2, 8), (4, 8))


@dataclass(frozen=True)
class Candidate:
    weight: WeightFormat
    kernel: str
    config: Config

    @property
    def label(self) -> str:
        params = self.weight.attributes()
        detail = ""
        if "block_shape" in params:
            detail = "{}x{}".format(*params["block_shape"])
        elif "n" in params and "m" in params:
            detail = f"{params['n']}:{params['m']}"
        config = ",".join(f"{k}={v}" for k, v in sorted(self.config.items()))
        return f"{self.weight.name}{'[' + detail + ']' if detail else ''}/{self.kernel}{'{' + config + '}' if config else ''}"


def weight_formats(weight: torch.Tensor, structured: WeightFormat | None = None) -> list[WeightFormat]:
    """The formats worth trying for a dense [out, in] weight (dense first)."""
    formats: list[WeightFormat] = [get_format("dense").from_dense(weight)]
    if structured is not None:
        formats.append(structured)
    nonzero = (weight != 0).to(torch.uint8)
    nnz = int(torch.count_nonzero(nonzero))
    formats.append(get_format("csr").from_dense(weight))
    formats.append(get_format("bitmask").from_dense(weight))
    if nnz == 0:
        return formats
    for r, c in BLOCK_SHAPES:
        stored = count_kept_blocks(nonzero, (r, c)) * r * c
        if stored <= MAX_BLOCK_FILL_OVERHEAD * nnz and stored <= MAX_BLOCK_DENSITY * weight.numel():
            formats.append(get_format("bsr").from_dense(weight, block_shape=(r, c)))
    for n, m in NM_PATTERNS:
        if fits_nm(nonzero, n, m):
            formats.append(get_format("nm").from_dense(weight, n=n, m=m))
            break
    return formats


def candidates(weight: torch.Tensor, device: torch.device, structured: WeightFormat | None = None,
               all_configs: bool = True) -> list[Candidate]:
    """Every (format, kernel, config) for the weight on `device`; dense comes first."""
    found = []
    for fmt in weight_formats(weight, structured):
        for kernel in kernels_for(fmt, device):
            configs = kernel.configs(fmt, device)
            for config in configs if all_configs else configs[:1]:
                found.append(Candidate(fmt, kernel.name, config))
    return found
