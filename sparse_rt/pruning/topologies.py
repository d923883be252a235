"""Fixed sparse topologies chosen before training, and spectral metrics of the network graph.

A layer with n_out outputs and m = n_in inputs is a bipartite graph; a mask
generator `(n_out, n_in, k, seed) -> bool [n_out, n_in]` (True = edge kept) builds
it at degree k, 1 <= k <= m (Bourely et al. 2017, "Sparse neural network
topologies"). The rotating constructions share one rule: output i connects to
the inputs (start_i + o) mod m for every offset o of an offset set O of k
distinct residues mod m, with start_i = floor(i * m / n_out), so the windows
rotate evenly around the inputs whatever n_out / m is. Each generator's
docstring gives its O. Attach a topology with `masks.apply_masks` before
training; it never changes afterwards.

A network's graph stacks its layers into one undirected graph: the nodes are
the neurons of every level (the inputs of the first layer, then each layer's
outputs) and each mask entry is an edge between an input of a layer and one of
its outputs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

MaskGenerator = Callable[[int, int, int, int], torch.Tensor]


def random_edge_mask(n_out: int, n_in: int, k: int, seed: int) -> torch.Tensor:
    """Random edges: each of the n_out * n_in edges is kept independently with probability k / n_in.

    Degrees are k only in expectation (binomial); rows may be empty.
    """
    _check(n_out, n_in, k)
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((n_out, n_in)) < k / n_in)


def random_rotating_mask(n_out: int, n_in: int, k: int, seed: int) -> torch.Tensor:
    """Random rotating edges: O = k distinct residues mod n_in drawn uniformly at random once per layer.

    Every output has degree exactly k; all outputs share the random offsets, rotated by start_i.
    """
    _check(n_out, n_in, k)
    offsets = np.random.default_rng(seed).choice(n_in, size=k, replace=False)
    return _rotating(n_out, n_in, offsets)


def random_regular_mask(n_out: int, n_in: int, k: int, seed: int) -> torch.Tensor:
    """Random (k-regular on the outputs) bipartite expander.

    Outputs are taken in order 0..n_out-1; output i connects to the k inputs of
    currently lowest degree, ties broken by a fresh uniformly random order for
    each output. Every output has degree exactly k and input degrees differ by at
    most one (each of floor or ceil of n_out * k / n_in): the outputs' choices
    form a chain of random partial matchings that covers the inputs evenly, a
    random biregular graph.
    """
    _check(n_out, n_in, k)
    rng = np.random.default_rng(seed)
    mask = np.zeros((n_out, n_in), dtype=bool)
    degree = np.zeros(n_in, dtype=np.int64)
    for i in range(n_out):
        order = rng.permutation(n_in)
        chosen = order[np.argsort(degree[order], kind="stable")[:k]]
        mask[i, chosen] = True
        degree[chosen] += 1
    return torch.from_numpy(mask)


def regular_rotating_mask(n_out: int, n_in: int, k: int, seed: int) -> torch.Tensor:
    """Regular rotating edges: O = {0, 1, ..., k-1}, output i connects to (start_i + j) mod n_in, j < k.

    Deterministic (`seed` is not used); every output has degree exactly k.
    """
    _check(n_out, n_in, k)
    return _rotating(n_out, n_in, np.arange(k))


def long_short_rotating_mask(n_out: int, n_in: int, k: int, seed: int) -> torch.Tensor:
    """Long-short rotating edges: k - k // 2 short consecutive offsets and k // 2 long evenly spread ones.

    With a = k - k // 2 and b = k // 2: O = {0, ..., a-1} ∪ {a + floor(t * (n_in - a) / b) : t < b},
    all distinct. Deterministic (`seed` is not used); every output has degree exactly k.
    """
    _check(n_out, n_in, k)
    short, long = k - k // 2, k // 2
    spread = short + (np.arange(long) * (n_in - short)) // max(long, 1)
    return _rotating(n_out, n_in, np.concatenate([np.arange(short), spread]))


def fibonacci_rotating_mask(n_out: int, n_in: int, k: int, seed: int) -> torch.Tensor:
    """Fibonacci rotating edges: offsets from the Fibonacci numbers.

    O = the first k distinct values of 0, F_1, F_2, F_3, ... mod n_in (F = 1, 1, 2,
    3, 5, 8, ...), taken until the sequence of residues repeats its period; if
    fewer than k were found, the smallest unused residues complete O.
    Deterministic (`seed` is not used); every output has degree exactly k.
    """
    _check(n_out, n_in, k)
    offsets: list[int] = [0]
    seen = {0}
    previous, current = 0, 1 % n_in
    start = (previous, current)
    while len(offsets) < k:
        if current not in seen:
            seen.add(current)
            offsets.append(current)
        previous, current = current, (previous + current) % n_in
        if (previous, current) == start:
            break
    offsets += [r for r in range(n_in) if r not in seen][: k - len(offsets)]
    return _rotating(n_out, n_in, np.asarray(offsets))


TOPOLOGIES: dict[str, MaskGenerator] = {
    "random_edge": random_edge_mask,
    "random_rotating": random_rotating_mask,
    "random_regular": random_regular_mask,
    "regular_rotating": regular_rotating_mask,
    "long_short_rotating": long_short_rotating_mask,
    "fibonacci_rotating": fibonacci_rotating_mask,
}


def topology_mask(name: str, n_out: int, n_in: int, k: int, seed: int) -> torch.Tensor:
    """The mask of construction `name` (a key of TOPOLOGIES): bool [n_out, n_in]."""
    if name not in TOPOLOGIES:
        raise ValueError(f"topology: expected one of {sorted(TOPOLOGIES)}, got {name!r}")
    return TOPOLOGIES[name](n_out, n_in, k, seed)


def network_laplacian(masks: list[torch.Tensor]) -> np.ndarray:
    """Laplacian D - A (float64 [N, N]) of the undirected graph of a stack of layers.

    masks: the layers in order, each bool [n_out, n_in] with n_in equal to the
    previous layer's n_out. Nodes: level 0 (the first layer's inputs), then each
    layer's outputs, N = n_in of the first + the sum of the n_out.
    """
    if not masks:
        raise ValueError("network graph: expected at least one layer mask, got none")
    sizes = [int(masks[0].shape[1])]
    for index, mask in enumerate(masks):
        if mask.dim() != 2 or int(mask.shape[1]) != sizes[-1]:
            raise ValueError(
                f"network graph layer {index}: expected a mask [n_out, {sizes[-1]}], got {list(mask.shape)}"
            )
        sizes.append(int(mask.shape[0]))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    adjacency = np.zeros((starts[-1], starts[-1]))
    for index, mask in enumerate(masks):
        block = mask.detach().cpu().numpy().astype(np.float64)  # [n_out, n_in]
        inputs, outputs = slice(starts[index], starts[index + 1]), slice(starts[index + 1], starts[index + 2])
        adjacency[outputs, inputs] = block
        adjacency[inputs, outputs] = block.T
    return np.diag(adjacency.sum(axis=1)) - adjacency


def graph_metrics(masks: list[torch.Tensor]) -> dict[str, float]:
    """Spectral metrics of the network graph of `masks` (see `network_laplacian`).

    algebraic_connectivity: the second-smallest eigenvalue of the Laplacian
    (Fiedler value; 0 iff the graph is disconnected).
    spectral_gap: lambda_1 - lambda_2, the two largest eigenvalues of the
    adjacency matrix A = D - L (the expander gap; d - lambda_2 for a d-regular graph).
    """
    laplacian = network_laplacian(masks)
    adjacency = np.diag(np.diag(laplacian)) - laplacian
    laplacian_eigenvalues = np.linalg.eigvalsh(laplacian)  # ascending
    adjacency_eigenvalues = np.linalg.eigvalsh(adjacency)
    return {
        "algebraic_connectivity": float(laplacian_eigenvalues[1]) if len(laplacian_eigenvalues) > 1 else 0.0,
        "spectral_gap": float(adjacency_eigenvalues[-1] - adjacency_eigenvalues[-2])
        if len(adjacency_eigenvalues) > 1
        else 0.0,
    }


def _rotating(n_out: int, n_in: int, offsets: np.ndarray) -> torch.Tensor:
    """Output i connects to (floor(i * n_in / n_out) + o) mod n_in for every o in offsets."""
    starts = (np.arange(n_out) * n_in) // n_out  # [n_out]
    columns = (starts[:, None] + offsets[None, :]) % n_in  # [n_out, k]
    mask = np.zeros((n_out, n_in), dtype=bool)
    mask[np.arange(n_out)[:, None], columns] = True
    return torch.from_numpy(mask)


def _check(n_out: int, n_in: int, k: int) -> None:
    if n_out < 1 or n_in < 1:
        raise ValueError(f"topology: expected n_out and n_in >= 1, got {n_out} and {n_in}")
    if not 1 <= k <= n_in:
        raise ValueError(f"topology degree k: expected 1 <= k <= n_in = {n_in}, got {k}")
