"""Wanda and SparseGPT against magnitude pruning on a small character-level language model.

The model is trained for a few seconds on the standard library's own source text, so
its activations have real structure (uneven input norms, correlated inputs): at equal
sparsity the layer-wise reconstruction error (each pruned layer against its dense self
on the dense model's held-out inputs to that layer, summed over layers) must order
SparseGPT < Wanda < magnitude, and SparseGPT's logits must be closer to the dense
model's than magnitude's.
"""

from __future__ import annotations

import copy
import functools
import textwrap

import pytest
import torch
from torch import nn

from sparse_rt.formats.nm import NmFormat
from sparse_rt.pruning import finalize, magnitude_prune, nm_prune
from sparse_rt.pruning.sparsegpt import sparsegpt_prune, sparsegpt_reconstruct
from sparse_rt.pruning.wanda import wanda_prune

CONTEXT = 8
LAYERS = ("hidden.0", "hidden.2")
VOCAB = 128


class CharMLP(nn.Module):
    """Next character from the previous CONTEXT: ids [B, CONTEXT] -> logits [B, VOCAB]."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.hidden = nn.Sequential(
            nn.Linear(16 * CONTEXT, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        )
        self.norm = nn.LayerNorm(16 * CONTEXT)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.norm(self.embed(ids).flatten(1))))


def _windows(text: str) -> tuple[torch.Tensor, torch.Tensor]:
    codes = torch.tensor([min(ord(c), VOCAB - 1) for c in text])
    windows = codes.unfold(0, CONTEXT + 1, 1)
    return windows[:, :CONTEXT], windows[:, CONTEXT]


@functools.lru_cache(maxsize=1)
def _trained() -> tuple[CharMLP, torch.Tensor, torch.Tensor]:
    """(model, calibration ids [N, CONTEXT], held-out ids [M, CONTEXT]) from stdlib sources."""
    with open(textwrap.__file__, encoding="utf-8") as f:
        text = f.read()
    ids, targets = _windows(text)
    torch.manual_seed(0)
    model = CharMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        batch = torch.randint(0, ids.shape[0] - 4096, (256,))
        loss = nn.functional.cross_entropy(model(ids[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, ids[:-4096][::7][:2048], ids[-4096:]


def _reconstruction_error(pruned: nn.Module, dense: nn.Module, held_out: torch.Tensor) -> float:
    inputs = {}
    hooks = [dense.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: inputs.__setitem__(name, args[0])) for name in LAYERS]
    with torch.no_grad():
        dense(held_out)
        for hook in hooks:
            hook.remove()
        total = 0.0
        for name, x in inputs.items():  # x: [M, in]
            reference = x @ dense.get_submodule(name).weight.T
            difference = x @ pruned.get_submodule(name).weight.T - reference
            total += float(difference.pow(2).mean() / reference.pow(2).mean())
    return total


def _output_error(pruned: nn.Module, dense: nn.Module, held_out: torch.Tensor) -> float:
    with torch.no_grad():
        reference = dense(held_out)
        return float((pruned(held_out) - reference).pow(2).mean() / reference.pow(2).mean())


def _hidden_only(module: nn.Module, name: str) -> bool:
    return name.startswith("hidden")


@pytest.mark.parametrize("pattern", ["50%", "70%", "2:4"])
def test_reconstruction_error_orders_sparsegpt_wanda_magnitude(pattern):
    dense, calibration, held_out = _trained()
    batches = list(calibration.split(512))
    errors, outputs = {}, {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = copy.deepcopy(dense)
        if pattern == "2:4":
            if method == "magnitude":
                nm_prune(model, 2, 4, filter_fn=_hidden_only)
            elif method == "wanda":
                wanda_prune(model, batches, nm=(2, 4), filter_fn=_hidden_only)
            else:
                sparsegpt_prune(model, batches, nm=(2, 4), filter_fn=_hidden_only)
        else:
            sparsity = float(pattern.rstrip("%")) / 100
            if method == "magnitude":
                magnitude_prune(model, sparsity, filter_fn=_hidden_only)
            elif method == "wanda":
                wanda_prune(model, batches, sparsity, filter_fn=_hidden_only)
            else:
                sparsegpt_prune(model, batches, sparsity, filter_fn=_hidden_only)
        finalize(model)
        for name in LAYERS:
            weight = model.get_submodule(name).weight.detach()
            if pattern == "2:4":
                assert torch.equal(NmFormat.from_dense(weight, n=2, m=4).to_dense(), weight)
                assert int((weight != 0).sum()) == weight.numel() // 2
            else:
                # rounded per row (Wanda) or per block of columns (SparseGPT)
                assert abs(float((weight == 0).float().mean()) - sparsity) < 0.01
        errors[method] = _reconstruction_error(model, dense, held_out)
        outputs[method] = _output_error(model, dense, held_out)
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors
    assert outputs["sparsegpt"] < outputs["magnitude"], outputs


def test_wanda_keeps_equal_counts_per_row_and_prefers_loud_inputs():
    torch.manual_seed(1)
    layer = nn.Linear(8, 4)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    scale = torch.tensor([1.0, 100.0, 1.0, 100.0, 1.0, 100.0, 1.0, 100.0])
    masks = wanda_prune(layer, [torch.randn(32, 8) * scale], 0.5)
    assert torch.equal(masks[""], scale[None, :].expand(4, 8) > 10)


def test_sparsegpt_matches_the_least_squares_optimum_for_one_kept_column():
    # With everything but one input pruned per row, OBS reconstruction is least squares
    # of y on that input alone: w' = (X^T X w)_j / (X^T X)_jj.
    torch.manual_seed(2)
    x = torch.randn(256, 4) @ torch.randn(4, 4)
    weight = torch.randn(3, 4)
    hessian = 2 * x.T @ x / x.shape[0]
    pruned = torch.ones(3, 4, dtype=torch.bool)
    pruned[:, 3] = False
    new, kept = sparsegpt_reconstruct(weight, hessian, 0.0, pruned=pruned, damp=0.0)
    gram = x.T @ x
    expected = (weight @ gram)[:, 3] / gram[3, 3]
    assert torch.equal(kept, ~pruned)
    assert torch.allclose(new[:, 3], expected, rtol=1e-4, atol=1e-5)
    assert torch.count_nonzero(new[:, :3]) == 0


def test_layer_the_calibration_never_reaches_is_an_error():
    class OneUsed(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    model = OneUsed()
    with pytest.raises(ValueError, match="'unused'.*no inputs"):
        wanda_prune(model, [torch.randn(2, 4)], 0.5)
    with pytest.raises(ValueError, match="nm: expected"):
        sparsegpt_prune(model, [torch.randn(2, 4)], nm=(4, 2))


def test_layers_reading_one_input_are_calibrated_by_one_pass():
    from sparse_rt.decoders import build_decoder
    from sparse_rt.pruning.calibration import input_groups
    from sparse_rt.pruning.masks import prunable_layers

    model = build_decoder("llama")
    layers = {n: m for n, m in prunable_layers(model).items() if n != "lm_head"}
    groups = input_groups(model, layers, [torch.randint(0, 256, (1, 8))])
    assert groups[:4] == [
        ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"],
        ["model.layers.0.self_attn.o_proj"],
        ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"],
        ["model.layers.0.mlp.down_proj"],
    ]
    assert sum(len(g) for g in groups) == len(layers)
