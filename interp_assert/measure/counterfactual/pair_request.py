"""The measurement ``logit_diff`` and ``patching`` bring to capture (a
:class:`~interp_assert.measure.measurements.MeasureRequest`): torch-free; its :meth:`PairRequest.run`
imports :mod:`interp_assert.measure.counterfactual.patching`, which runs the model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from interp_assert.measure.pair_requests import Component, Direction, Effect, PairResult


@dataclass(frozen=True, kw_only=True)
class PairRequest:
    """Logit differences of a pair set's clean and corrupt prompts, and the patched logit
    difference of each component set in ``sets`` (each set patched jointly), and, with
    ``all_heads``, of every head alone (at ``head_positions``)."""

    direction: Direction = "denoise"
    effect: Effect = "total"
    sets: tuple[tuple[Component, ...], ...] = ()
    all_heads: bool = False
    head_positions: tuple[int, ...] | None = None
    controls: int = 0  # random head sets like sets[0] (heads only), drawn per layer from the other heads
    seed: int = 0

    def run(self, loaded: Any, batches: list[Any]) -> PairResult:
        from interp_assert.measure.counterfactual import patching

        return patching.run(self, loaded, batches)
