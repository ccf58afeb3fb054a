"""``hidden_norm_trend``: hidden-state norms rise (or fall) at every step over a range of depths."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import (
    TOP_SHOWN,
    CheckContext,
    Expectation,
    FigureNeeds,
    LayerRange,
    norms,
    resolve_range,
)


class HiddenNormTrend(Expectation):
    property: Literal["hidden_norm_trend"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        (
            "`layers: [a, b]` (hidden-state indices), `direction: increasing\\|decreasing`, `tolerance` (0), "
            "`include_first_position` (false)"
        ),
        "every step k -> k+1 moves in `direction`, allowing a relative move the other way of at most `tolerance`",
    )
    layers: LayerRange
    direction: Literal["increasing", "decreasing"]
    tolerance: float = Field(default=0.0, ge=0.0)
    include_first_position: bool = False

    @field_validator("layers")
    @classmethod
    def _a_step(cls, layers: list[int]) -> list[int]:
        first, last = layers
        if first == last:
            raise ValueError(
                f"[{first}, {last}] is a single index: a trend needs at least one step, "
                "so give two different indices, e.g. [0, -1]"
            )
        return layers

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(hidden_norms=True)

    def check(self, context: CheckContext) -> Outcome:
        values = norms(context.measurements, self.include_first_position)
        first, last = resolve_range(self.layers, len(values), "hidden-state index")
        if first == last:
            raise CheckInputError(
                f"hidden-state range {self.layers} is the single index {first} on this model: a trend needs at "
                f"least one step (indices run 0 to {len(values) - 1})"
            )
        sign = 1.0 if self.direction == "increasing" else -1.0
        breaks = []
        worst = float("inf")  # smallest relative step in the expected direction
        worst_at = first
        for k in range(first, last):
            before, after = values[k], values[k + 1]
            change = sign * (after - before) / abs(before) if before else sign * (after - before)
            if change < worst:
                worst, worst_at = float(change), k
            if change < -self.tolerance:
                breaks.append(f"{k}->{k + 1}: {before:.4g} -> {after:.4g} ({change * sign * 100:+.1f}%)")
        span = f"hidden norms over indices {first}-{last}"
        worst_step = f"{worst_at}->{worst_at + 1} {worst * sign:+.1%}"
        shown = "norms: " + ", ".join(f"{k}:{values[k]:.4g}" for k in range(first, last + 1))
        if breaks:
            headline = (
                f"{span} are not {self.direction} within tolerance {self.tolerance:g}; {len(breaks)} step(s) "
                "break it: " + "; ".join(breaks[:TOP_SHOWN])
            )
            more = f" (+{len(breaks) - 1} more)" if len(breaks) > 1 else ""
            measured: dict[str, float | str] = {"worst_step": worst, "breaks": len(breaks)}
            return Outcome(False, headline, (shown,), measured, value=worst, shown=f"breaks at {worst_step}{more}")
        headline = f"{span} are {self.direction} within tolerance {self.tolerance:g} (smallest step {worst:+.1%})"
        measured = {"worst_step": worst, "breaks": 0}
        return Outcome(True, headline, (shown,), measured, value=worst, shown=f"holds; smallest step {worst_step}")

    def figures(self) -> FigureNeeds:
        first, last = self.layers
        return FigureNeeds(norms=True, span=(first, last))
