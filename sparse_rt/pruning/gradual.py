"""Gradual magnitude pruning with the cubic schedule of Zhu & Gupta (2017).

Sparsity rises from `initial_sparsity` at `start_step` to `final_sparsity` at
`end_step`, updated every `frequency` steps:

    s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))**3

Masks are recomputed only at the pruning steps t0, t0 + f, t0 + 2f, ... and
t_end; between them the sparsity is that of the last pruning step, and before
t0 nothing is pruned. Steps count optimizer steps: call `GradualPruner.step()`
right after each `optimizer.step()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sparse_rt.pruning.magnitude import SCOPES, check_sparsity, magnitude_masks
from sparse_rt.pruning.masks import LayerFilter, apply_masks, finalize, require_layers
from sparse_rt.pruning.structured import block_masks


@dataclass(frozen=True)
class CubicSchedule:
    """When and how much to prune: the Zhu & Gupta cubic ramp (steps are optimizer steps)."""

    final_sparsity: float
    start_step: int
    end_step: int
    frequency: int = 100
    initial_sparsity: float = 0.0

    def __post_init__(self):
        check_sparsity(self.initial_sparsity)
        check_sparsity(self.final_sparsity)
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                f"cubic schedule: expected initial_sparsity <= final_sparsity, "
                f"got {self.initial_sparsity} > {self.final_sparsity}"
            )
        if not 0 <= self.start_step <= self.end_step:
            raise ValueError(
                f"cubic schedule: expected 0 <= start_step <= end_step, "
                f"got {self.start_step} and {self.end_step}"
            )
        if self.frequency < 1:
            raise ValueError(f"cubic schedule: expected frequency >= 1, got {self.frequency}")

    def is_pruning_step(self, step: int) -> bool:
        """Whether masks are recomputed after `step` optimizer steps."""
        if not self.start_step <= step <= self.end_step:
            return False
        return step == self.end_step or (step - self.start_step) % self.frequency == 0

    def sparsity(self, step: int) -> float:
        """Target sparsity in force after `step` optimizer steps (0 before start_step)."""
        if step < self.start_step:
            return 0.0
        if step >= self.end_step:
            return self.final_sparsity
        last = self.start_step + (step - self.start_step) // self.frequency * self.frequency
        progress = (last - self.start_step) / (self.end_step - self.start_step)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** 3


class GradualPruner:
    """Prunes a model's layers by magnitude along a CubicSchedule.

    Unstructured by default; with `block_shape=(r, c)` whole blocks are pruned by
    L2 norm (see `structured.block_masks`). Masks only grow sparser: weights
    pruned at one step stay pruned. If the schedule starts at step 0 the model
    is pruned on construction.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: CubicSchedule,
        scope: str = "layer",
        block_shape: tuple[int, int] | None = None,
        filter_fn: LayerFilter | None = None,
    ):
        if scope not in SCOPES:
            raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
        require_layers(model, filter_fn, "gradual pruning")
        self.model = model
        self.schedule = schedule
        self.scope = scope
        self.block_shape = block_shape
        self.filter_fn = filter_fn
        self.step_count = 0
        if schedule.is_pruning_step(0):
            self._prune(schedule.sparsity(0))

    def step(self) -> None:
        """Advance one optimizer step and prune if the schedule says so."""
        self.step_count += 1
        if self.schedule.is_pruning_step(self.step_count):
            self._prune(self.schedule.sparsity(self.step_count))

    @property
    def sparsity(self) -> float:
        """The target sparsity currently in force."""
        return self.schedule.sparsity(self.step_count)

    def finalize(self) -> nn.Module:
        """Bake the masks into the weights and remove them (see `masks.finalize`)."""
        return finalize(self.model)

    def _prune(self, sparsity: float) -> None:
        if self.block_shape is None:
            masks = magnitude_masks(self.model, sparsity, self.scope, self.filter_fn)
        else:
            masks = block_masks(self.model, sparsity, self.block_shape, self.scope, self.filter_fn)
        apply_masks(self.model, masks)
