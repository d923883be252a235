"""Tuning spaces of the Triton kernels: built from the weight, JSON-clean, parsed back strictly."""

import os

import torch

# The kernels run compiled where CUDA is present, else under triton's interpreter; the
# variable must be set before triton is first imported (see sparse_rt.kernels.triton._launch).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import json

import pytest

from sparse_rt.formats import (
    BitmaskFormat,
    BsrFormat,
    ButterflyFormat,
    CsrFormat,
    DenseFormat,
    NmFormat,
    PermutedFormat,
)
from sparse_rt.formats.bsr_int8 import BsrInt8Format
from sparse_rt.formats.csr_int8 import CsrInt8Format
from sparse_rt.formats.dense_int8 import DenseInt8Format
from sparse_rt.kernels.triton import KERNELS
from sparse_rt.kernels.triton.configs import (
    MAX_ELEMENTS_PER_THREAD,
    BsrOptions,
    CsrOptions,
    FusedOptions,
    NmOptions,
    StagedOptions,
    bsr_configs,
    csr_configs,
    nm_configs,
    parse_options,
    parse_schedule,
)

CPU = torch.device("cpu")


def _weights() -> dict:
    generator = torch.Generator().manual_seed(0)
    masked = torch.randn(64, 48, generator=generator) * (torch.rand(64, 48, generator=generator) < 0.3)
    two_of_four = torch.randn(64, 48, generator=generator) * torch.tensor([1.0, 0.0, 1.0, 0.0]).repeat(12)
    return {
        "dense": DenseFormat.from_dense(masked),
        "csr": CsrFormat.from_dense(masked),
        "csr_int8": CsrInt8Format.from_dense(masked),
        "bsr_int8": BsrInt8Format.from_dense(masked),
        "dense_int8": DenseInt8Format.from_dense(masked),
        "bsr": BsrFormat.from_dense(masked, block_shape=(16, 16)),
        "nm": NmFormat.from_dense(two_of_four, n=2, m=4),
        "bitmask": BitmaskFormat.from_dense(masked),
        "butterfly": ButterflyFormat(in_features=48, out_features=64, twiddles=torch.randn(6, 32, 2, 2)),
        "permuted": PermutedFormat(
            in_features=48,
            out_features=64,
            permutations=torch.stack([torch.randperm(64, generator=generator) for _ in range(2)]).to(torch.int8),
            blocks=torch.randn(2, 32, 2, 2),
        ),
    }


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: k.name)
def test_space_is_json_clean_unique_and_binds(kernel):
    weight = _weights()[kernel.format]
    space = kernel.configs(weight, CPU)
    assert len(space) >= 2
    assert json.loads(json.dumps(space)) == space
    assert len({json.dumps(c, sort_keys=True) for c in space}) == len(space)
    assert all(isinstance(v, (int, str)) for config in space for v in config.values())
    for config in space:
        kernel.bind(weight, None, config, CPU)  # every point parses and packs


def test_csr_space_stops_at_the_longest_row():
    weight = torch.zeros(64, 48)
    weight[:, :20] = 1.0
    space = [parse_options(CsrOptions, c) for c in csr_configs(CsrFormat.from_dense(weight), CPU)]
    assert max(o.BLOCK_K for o in space) == 32


def test_bsr_split_k_stops_at_the_longest_block_row():
    one_block_per_row = BsrFormat.from_dense(torch.eye(64), block_shape=(16, 16))
    assert {parse_options(BsrOptions, c).SPLIT_K for c in bsr_configs(one_block_per_row, CPU)} == {1}


def test_spaces_keep_tiles_within_the_register_budget():
    for config in nm_configs(_weights()["nm"], CPU)[1:]:
        options = parse_options(NmOptions, config)
        per_thread = options.BLOCK_B * options.BLOCK_O * options.BLOCK_K / (32 * options.num_warps)
        assert 1 <= per_thread <= MAX_ELEMENTS_PER_THREAD


def test_parse_rejects_bad_configs():
    good = {"BLOCK_M": 16, "SPLIT_K": 1, "num_warps": 4, "num_stages": 2}
    assert parse_options(BsrOptions, good) == BsrOptions(**good)
    with pytest.raises(ValueError, match=r"BsrOptions: expected config keys \['BLOCK_M', 'SPLIT_K', 'num_stages', 'num_warps'\], got \['BLOCK_M', 'SPLIT_K', 'extra', 'num_stages', 'num_warps'\]"):
        parse_options(BsrOptions, {**good, "extra": 1})
    with pytest.raises(ValueError, match=r"BsrOptions: expected BLOCK_M a power of two in \[16, 256\], got 24"):
        parse_options(BsrOptions, {**good, "BLOCK_M": 24})
    with pytest.raises(ValueError, match=r"BsrOptions: expected num_stages in \[1, 8\], got 0"):
        parse_options(BsrOptions, {**good, "num_stages": 0})
    with pytest.raises(ValueError, match=r"expected config\['schedule'\] 'fused' or 'staged', got 'both'"):
        parse_schedule({"schedule": "both", "BLOCK_M": 1, "num_warps": 4})
    assert parse_schedule({"schedule": "fused", "BLOCK_M": 2, "num_warps": 4}) == FusedOptions("fused", 2, 4)
    staged = {"schedule": "staged", "BLOCK_M": 2, "BLOCK_P": 64, "num_warps": 4}
    assert parse_schedule(staged) == StagedOptions(**staged)
