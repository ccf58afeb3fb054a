"""``dominant_layer``: the named layer has the highest mean role score ("layer 8 dominates first_token")."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np

from interp_assert.measure import head_tables
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import CheckContext, Expectation, FigureNeeds, layer_line, resolve_index
from interp_assert.vocab import Role


class DominantLayer(Expectation):
    property: Literal["dominant_layer"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        "`role`, `layer`",
        "that layer has the highest mean role score",
    )
    role: Role
    layer: int

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(roles=frozenset([self.role]))

    def check(self, context: CheckContext) -> Outcome:
        m = context.measurements
        layer = resolve_index(self.layer, m.n_layers, "layer")
        table = m.role_scores[self.role]
        means = head_tables.layer_means(table)
        best = head_tables.dominant_layer(table)
        passed = best == layer
        if passed:
            runner_up = float(np.sort(means)[-2]) if len(means) > 1 else float("nan")
            headline = f"layer {layer} dominates {self.role} (mean {means[layer]:.4f}; next best {runner_up:.4f})"
        else:
            headline = (
                f"layer {best} dominates {self.role} (mean {means[best]:.4f}), not layer {layer} "
                f"(mean {means[layer]:.4f}, short by {means[best] - means[layer]:.4f})"
            )
        return Outcome(
            passed,
            headline,
            (layer_line(table, self.role),),
            {"dominant_layer": best, f"layer{layer}": float(means[layer])},
            value=best,
            shown=f"layer {best} ({means[best]:.4f})",
        )

    def figures(self) -> FigureNeeds:
        return FigureNeeds(roles=(self.role,))
