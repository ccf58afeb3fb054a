"""``role_fraction``: the fraction of heads in a layer range carrying a label (the seed's layer progression)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from interp_assert.measure import head_tables
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, FigureNeeds, LayerRange, resolve_range
from interp_assert.vocab import POSITIONAL_LABELS, Label


class RoleFraction(Bounded):
    property: Literal["role_fraction"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        "`label`, `layers: [a, b]`, bounds, `label_threshold` (0.5)",
        'the fraction of heads in layers a..b carrying `label` is within bounds (the seed\'s "layer progression")',
    )
    label: Label
    layers: LayerRange
    label_threshold: float = Field(default=0.5, ge=0.0, le=1.0)

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(roles=frozenset([*POSITIONAL_LABELS, "focus"]))

    def check(self, context: CheckContext) -> Outcome:
        m = context.measurements
        first, last = resolve_range(self.layers, m.n_layers, "layer")
        labels = head_tables.head_labels(m.role_scores, self.label_threshold)
        value = head_tables.label_fraction(labels, self.label, first, last)
        passed, line = self.within(f"fraction of {self.label} heads in layers {first}-{last}", value)
        chosen = labels[first : last + 1]
        counts = {label: int((chosen == label).sum()) for label in sorted(set(chosen.ravel()))}
        detail = f"labels in layers {first}-{last} (threshold {self.label_threshold:g}): " + ", ".join(
            f"{label} {n}" for label, n in counts.items()
        )
        return Outcome(passed, line, (detail,), {"fraction": value}, value=value)

    def figures(self) -> FigureNeeds:
        first, last = self.layers
        return FigureNeeds(fractions=True, span=(first, last), label_threshold=self.label_threshold)
