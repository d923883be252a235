import math

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.csgraph
import torch

from sparse_rt.pruning.topologies import (
    TOPOLOGIES,
    fibonacci_rotating_mask,
    graph_metrics,
    long_short_rotating_mask,
    network_laplacian,
    random_edge_mask,
    random_regular_mask,
    random_rotating_mask,
    regular_rotating_mask,
    topology_mask,
)

EXACT_DEGREE = [name for name in TOPOLOGIES if name != "random_edge"]
ROTATING = {
    "regular_rotating": regular_rotating_mask,
    "long_short_rotating": long_short_rotating_mask,
    "fibonacci_rotating": fibonacci_rotating_mask,
    "random_rotating": random_rotating_mask,
}


@pytest.mark.parametrize("name", EXACT_DEGREE)
@pytest.mark.parametrize("n_out, n_in, k", [(100, 64, 1), (100, 64, 7), (10, 300, 30), (64, 64, 64), (37, 5, 3)])
def test_every_output_has_exactly_degree_k(name, n_out, n_in, k):
    mask = topology_mask(name, n_out, n_in, k, seed=3)
    assert mask.dtype == torch.bool and mask.shape == (n_out, n_in)
    assert (mask.sum(dim=1) == k).all()


@pytest.mark.parametrize("n_out, n_in, k", [(100, 64, 5), (10, 300, 7), (300, 100, 33)])
def test_random_regular_balances_input_degrees(n_out, n_in, k):
    mask = random_regular_mask(n_out, n_in, k, seed=0)
    degrees = mask.sum(dim=0)
    assert int(degrees.max() - degrees.min()) <= 1
    assert int(degrees.sum()) == n_out * k
    assert not torch.equal(mask, random_regular_mask(n_out, n_in, k, seed=1))


def test_random_edge_keeps_each_edge_with_probability_k_over_n_in():
    mask = random_edge_mask(400, 250, 25, seed=0)
    assert mask.shape == (400, 250)
    assert mask.float().mean().item() == pytest.approx(0.1, abs=0.005)  # 100k Bernoulli(0.1): std 0.001
    assert torch.equal(mask, random_edge_mask(400, 250, 25, seed=0))
    assert not torch.equal(mask, random_edge_mask(400, 250, 25, seed=1))


@pytest.mark.parametrize("name", list(ROTATING))
def test_rotating_rows_are_one_offset_set_shifted_by_the_start(name):
    n_out, n_in, k = 40, 64, 6
    mask = ROTATING[name](n_out, n_in, k, seed=5)
    offsets = set(torch.nonzero(mask[0]).flatten().tolist())  # start_0 = 0
    for i in range(n_out):
        start = i * n_in // n_out
        assert set(torch.nonzero(mask[i]).flatten().tolist()) == {(start + o) % n_in for o in offsets}


def test_offset_sets_follow_their_definitions():
    row = lambda mask: torch.nonzero(mask[0]).flatten().tolist()
    assert row(regular_rotating_mask(8, 64, 5, 0)) == [0, 1, 2, 3, 4]
    assert row(fibonacci_rotating_mask(8, 64, 7, 0)) == [0, 1, 2, 3, 5, 8, 13]
    assert row(fibonacci_rotating_mask(8, 100, 11, 0)) == [0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]
    # a = 3 short offsets, b = 2 long ones at 3 + floor(t * 61 / 2)
    assert row(long_short_rotating_mask(8, 64, 5, 0)) == [0, 1, 2, 3, 33]
    # Fibonacci residues mod 5 cover 0..4, so all 5 inputs are reachable
    assert row(fibonacci_rotating_mask(3, 5, 5, 0)) == [0, 1, 2, 3, 4]


def test_regular_rotating_balances_input_degrees_when_windows_tile():
    degrees = regular_rotating_mask(128, 64, 4, 0).sum(dim=0)
    assert bool((degrees == 8).all())


@pytest.mark.parametrize("bad", [0, 65])
def test_degree_out_of_range_is_rejected(bad):
    with pytest.raises(ValueError, match=r"expected 1 <= k <= n_in = 64, got " + str(bad)):
        regular_rotating_mask(10, 64, bad, 0)
    with pytest.raises(ValueError, match="topology: expected one of"):
        topology_mask("ring", 10, 64, 3, 0)


def _random_stack(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(9, 7, generator=generator) < 0.4, torch.rand(4, 9, generator=generator) < 0.5]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_laplacian_and_metrics_match_scipy(seed):
    masks = _random_stack(seed)
    adjacency = np.zeros((20, 20))
    adjacency[7:16, :7] = masks[0].numpy()
    adjacency[16:, 7:16] = masks[1].numpy()
    adjacency = adjacency + adjacency.T
    expected = scipy.sparse.csgraph.laplacian(adjacency)
    np.testing.assert_allclose(network_laplacian(masks), expected)
    laplacian_eigenvalues = scipy.linalg.eigvalsh(expected)
    adjacency_eigenvalues = scipy.linalg.eigvalsh(adjacency)
    metrics = graph_metrics(masks)
    assert metrics["algebraic_connectivity"] == pytest.approx(laplacian_eigenvalues[1], abs=1e-9)
    assert metrics["spectral_gap"] == pytest.approx(adjacency_eigenvalues[-1] - adjacency_eigenvalues[-2], abs=1e-9)


@pytest.mark.parametrize("a, b", [(3, 5), (4, 4), (7, 2)])
def test_complete_bipartite_graph_closed_forms(a, b):
    metrics = graph_metrics([torch.ones(b, a, dtype=torch.bool)])
    assert metrics["algebraic_connectivity"] == pytest.approx(min(a, b))
    assert metrics["spectral_gap"] == pytest.approx(math.sqrt(a * b))


def test_path_graph_and_disconnected_graph():
    path = graph_metrics([torch.ones(1, 1, dtype=torch.bool)] * 5)  # 6 nodes in a line
    assert path["algebraic_connectivity"] == pytest.approx(2 * (1 - math.cos(math.pi / 6)))
    split = graph_metrics([torch.eye(4, dtype=torch.bool)])  # 4 separate edges
    assert split["algebraic_connectivity"] == pytest.approx(0.0, abs=1e-12)


def test_stacked_layers_must_chain():
    with pytest.raises(ValueError, match=r"network graph layer 1: expected a mask \[n_out, 9\], got \[4, 8\]"):
        network_laplacian([torch.ones(9, 7, dtype=torch.bool), torch.ones(4, 8, dtype=torch.bool)])
