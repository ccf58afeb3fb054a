"""``sink_rate``: the fraction of heads that are attention sinks, after Gu et al. 2024
("When attention sink emerges in language models"): a (layer, head) pair counts when its mean
attention to position 0 exceeds ``eps`` (0.3 by default).

The mean attention to position 0 over the query rows that can see it is exactly the
``first_token`` role score, so the rate costs nothing beyond that score.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, FigureNeeds, LayerRange, resolve_range
from interp_assert.properties.findings import DiscoverSettings, Section, score_lower_bound, unique_name


class SinkRate(Bounded):
    property: Literal["sink_rate"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        "`eps` (0.3), `layers: [a, b]` (default all), bounds",
        (
            "the fraction of heads whose mean attention to position 0 exceeds `eps` is within bounds (Gu et al. "
            "2024's sink rate; the mean attention to position 0 is exactly the `first_token` score, so it costs "
            "nothing extra)"
        ),
    )
    eps: float = Field(default=0.3, gt=0.0, lt=1.0)
    layers: LayerRange | None = None  # default: every layer

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(roles=frozenset(["first_token"]))

    def check(self, context: CheckContext) -> Outcome:
        m = context.measurements
        first, last = resolve_range(self.layers or [0, -1], m.n_layers, "layer")
        table = m.role_scores["first_token"][first : last + 1]
        sinks = table > self.eps
        value = float(sinks.mean())
        span = f"layers {first}-{last}" if (first, last) != (0, m.n_layers - 1) else "all layers"
        passed, line = self.within(f"sink rate (first_token > {self.eps:g}) over {span}", value)
        per_layer = ", ".join(f"{first + k}:{int(n)}" for k, n in enumerate(sinks.sum(axis=1)))
        detail = f"sink heads per layer (of {m.n_heads}): {per_layer}"
        measured: dict[str, float | str] = {"sink_heads": int(sinks.sum()), "heads": int(sinks.size)}
        if np.isnan(table).any():
            detail += "; heads whose first_token could not be measured count as non-sinks"
        return Outcome(passed, line, (detail,), measured, value=value)

    def figures(self) -> FigureNeeds:
        return FigureNeeds(roles=("first_token",))


# ---- what discover writes ----


def findings(prompt_name: str, first_token: np.ndarray, settings: DiscoverSettings, used_names: set[str]) -> Section:
    """Gu et al. 2024's sink rate (heads whose mean attention to position 0 exceeds 0.3), overall."""
    section = Section(f"attention sinks ({prompt_name}; a sink attends to position 0 with mean weight > 0.3)")
    sinks = first_token > 0.3
    rate = float(sinks.mean())
    per_layer = ", ".join(f"{layer}:{int(n)}" for layer, n in enumerate(sinks.sum(axis=1)))
    bound = {"at_least": score_lower_bound(rate, settings.keep)} if rate > 0 else {"at_most": 0.0}
    section.expectations.append(
        {
            "name": unique_name("sink_rate", prompt_name, used_names),
            "description": f"measured {rate:.4f} ({int(sinks.sum())} of {sinks.size} heads; per layer {per_layer})",
            "property": "sink_rate",
            "prompts": prompt_name,
            **bound,
        }
    )
    return section
