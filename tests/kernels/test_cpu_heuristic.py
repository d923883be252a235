"""The CPU kernel heuristic: deterministic, lossless, and in line with the measured crossovers."""

import pytest
import torch

from sparse_rt.kernels.cpu.heuristic import CSR_MAX_DENSITY, candidate_costs, pick_cpu_kernel
from sparse_rt.kernels.registry import get_kernel
from tests.helpers import assert_close, masked_weight


def _blocks(out_features: int, in_features: int, block: tuple[int, int], density: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    r, c = block
    grid = torch.rand(out_features // r, in_features // c, generator=generator) < density
    keep = grid.repeat_interleave(r, 0).repeat_interleave(c, 1)
    return torch.randn(out_features, in_features, generator=generator) * keep


def _check_runs(weight: torch.Tensor, batch: int):
    """The pick builds, binds and computes x @ W.T; returns (format name, from_dense params)."""
    fmt, kernel_name, config = pick_cpu_kernel(weight, batch)
    again, again_kernel, again_config = pick_cpu_kernel(weight, batch)
    assert (again.name, again.attributes(), again_kernel, again_config) == \
        (fmt.name, fmt.attributes(), kernel_name, config)  # deterministic
    kernel = get_kernel(kernel_name)
    assert kernel.format == fmt.name and kernel.supports(fmt, torch.device("cpu"))
    assert config in kernel.configs(fmt, torch.device("cpu"))
    x = torch.randn(batch, weight.shape[1])
    assert_close(kernel.bind(fmt, None, config, torch.device("cpu"))(x), x @ weight.T, rtol=1e-5)
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in fmt.attributes().items() if k != "shape"}
    return fmt.name, params


@pytest.mark.parametrize("batch", [1, 32])
def test_dense_weight_stays_dense(batch):
    assert _check_runs(torch.randn(256, 320), batch) == ("dense", {})


@pytest.mark.parametrize("batch", [1, 8, 32])
def test_unstructured_sparse_goes_csr(batch):
    assert _check_runs(masked_weight(768, 384, 0.1), batch) == ("csr", {})


@pytest.mark.parametrize("batch", [1, 32])
def test_block_sparse_goes_bsr(batch):
    name, params = _check_runs(_blocks(768, 512, (16, 16), 0.1), batch)
    assert name == "bsr" and params["block_shape"][0] >= 8 and params["block_shape"][1] >= 8


def test_column_blocks_go_bsr():
    name, params = _check_runs(_blocks(768, 512, (8, 1), 0.1), 1)
    assert name == "bsr" and params["block_shape"][1] == 1


def test_two_of_four_goes_csr_at_batch_1_and_dense_batched():
    generator = torch.Generator().manual_seed(2)
    scores = torch.rand(512, 256, 4, generator=generator)
    keep = torch.zeros(512, 256, 4).scatter_(2, scores.topk(2, dim=2).indices, 1.0).reshape(512, 1024)
    weight = torch.randn(512, 1024, generator=generator) * keep
    assert _check_runs(weight, 1) == ("csr", {})  # CSR's sliced kernel outruns the N:M gather
    assert _check_runs(weight, 32) == ("dense", {})


def test_all_zero_weight():
    assert _check_runs(torch.zeros(300, 200), 1) == ("csr", {})


@pytest.mark.parametrize("batch", sorted(CSR_MAX_DENSITY))
def test_model_reproduces_the_measured_crossovers(batch):
    threshold = CSR_MAX_DENSITY[batch]
    for density, sparse_wins in ((threshold - 0.08, True), (threshold + 0.08, False)):
        # the crossovers were measured on an AVX-512 host: batched kernels padded rows to 16 lanes
        weight = masked_weight(768, 3072, density)
        costs = {name: cost for cost, name, params in candidate_costs(weight, batch, width=16) if not params}
        assert (costs["csr"] < costs["dense"]) == sparse_wins, (batch, density, costs)


def test_rejects_bad_batch():
    with pytest.raises(ValueError, match="expected batch an int >= 1"):
        pick_cpu_kernel(torch.randn(4, 4), 0)
