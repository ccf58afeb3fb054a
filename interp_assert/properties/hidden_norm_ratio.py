"""``hidden_norm_ratio``: the ratio of two depths' mean hidden-state norms within bounds."""

from __future__ import annotations

from typing import ClassVar, Literal

from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, FigureNeeds, norms, resolve_index


class HiddenNormRatio(Bounded):
    property: Literal["hidden_norm_ratio"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        "`numerator` (-1), `denominator` (0), bounds, `include_first_position` (false)",
        "norm[numerator] / norm[denominator] is within bounds",
    )
    numerator: int = -1
    denominator: int = 0
    include_first_position: bool = False

    unit_bounds: ClassVar[bool] = False  # a ratio of norms is any positive number

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(hidden_norms=True)

    def check(self, context: CheckContext) -> Outcome:
        values = norms(context.measurements, self.include_first_position)
        top = resolve_index(self.numerator, len(values), "hidden-state index")
        bottom = resolve_index(self.denominator, len(values), "hidden-state index")
        value = float(values[top] / values[bottom])
        subject = f"hidden norm ratio [{top}]/[{bottom}] ({values[top]:.4g}/{values[bottom]:.4g})"
        passed, line = self.within(subject, value)
        return Outcome(passed, line, (), {"ratio": value}, value=value)

    def figures(self) -> FigureNeeds:
        return FigureNeeds(norms=True)
