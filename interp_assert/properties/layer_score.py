"""``layer_score``: the mean role score over one layer's heads within bounds."""

from __future__ import annotations

from typing import ClassVar, Literal

from interp_assert.measure import head_tables
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, FigureNeeds, layer_line, resolve_index
from interp_assert.vocab import Role


class LayerScore(Bounded):
    property: Literal["layer_score"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        "`role`, `layer`, bounds",
        "the mean role score over the layer's heads is within bounds",
    )
    role: Role
    layer: int

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(roles=frozenset([self.role]))

    def check(self, context: CheckContext) -> Outcome:
        m = context.measurements
        layer = resolve_index(self.layer, m.n_layers, "layer")
        table = m.role_scores[self.role]
        value = float(head_tables.layer_means(table)[layer])
        passed, line = self.within(f"layer {layer} mean {self.role}", value)
        return Outcome(passed, line, (layer_line(table, self.role),), {f"layer{layer}": value}, value=value)

    def figures(self) -> FigureNeeds:
        return FigureNeeds(roles=(self.role,))
