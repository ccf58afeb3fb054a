"""``attention_stat``: a per-layer attention statistic within bounds in every layer of a range."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import numpy as np

from interp_assert.measure import head_tables
from interp_assert.measure.measurements import CaptureRequest, Measurements
from interp_assert.outcome import Outcome
from interp_assert.properties.base import TOP_SHOWN, Bounded, CheckContext, FigureNeeds, LayerRange, resolve_range
from interp_assert.vocab import Role

AttentionStat = Literal["max", "mean", "focus", "breadth"]


def _max(m: Measurements) -> np.ndarray:
    assert m.max_weight is not None
    found: np.ndarray = m.max_weight.max(axis=1)  # largest weight of any head
    return found


def _mean(m: Measurements) -> np.ndarray:
    assert m.mean_weight is not None
    found: np.ndarray = m.mean_weight.mean(axis=1)  # mean visible weight, averaged over heads
    return found


# Per layer, ``[L]``; focus and breadth are the role scores averaged over the layer's heads.
STAT_BY_LAYER: dict[str, Callable[[Measurements], np.ndarray]] = {
    "max": _max,
    "mean": _mean,
    "focus": lambda m: head_tables.layer_means(m.role_scores["focus"]),
    "breadth": lambda m: head_tables.layer_means(m.role_scores["breadth"]),
}


class AttentionStatBounds(Bounded):
    property: Literal["attention_stat"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        "`stat: max\\|mean\\|focus\\|breadth`, `layers: [a, b]`, bounds",
        "every layer in range is within bounds",
    )
    stat: AttentionStat
    layers: LayerRange

    def requirements(self) -> CaptureRequest:
        if self.stat in ("focus", "breadth"):
            return CaptureRequest(roles=frozenset([self.stat]))
        return CaptureRequest(attention_stats=True)

    def check(self, context: CheckContext) -> Outcome:
        m = context.measurements
        first, last = resolve_range(self.layers, m.n_layers, "layer")
        per_layer = STAT_BY_LAYER[self.stat](m)
        failing = []
        for layer in range(first, last + 1):
            ok, line = self.within(f"layer {layer} {self.stat}", float(per_layer[layer]))
            if not ok:
                failing.append(line)
        shown = f"{self.stat} by layer: " + ", ".join(f"{k}:{per_layer[k]:.4f}" for k in range(first, last + 1))
        in_range = per_layer[first : last + 1]
        # the layer closest to breaking its bound: the lowest under at_least, else the highest
        worst_layer = first + int(in_range.argmin() if self.at_least is not None else in_range.argmax())
        worst = float(per_layer[worst_layer])
        measured: dict[str, float | str] = {f"{self.stat}_worst_layer": worst, "failing_layers": len(failing)}
        if failing:
            headline = f"{len(failing)} of {last - first + 1} layers out of bounds: " + "; ".join(failing[:TOP_SHOWN])
            table = f"layer {worst_layer} {worst:.4f}" + (f" +{len(failing) - 1} more" if len(failing) > 1 else "")
            return Outcome(False, headline, (shown,), measured, value=worst, shown=table)
        headline = f"attention {self.stat} within bounds in layers {first}-{last} (worst layer {worst:.4f})"
        return Outcome(True, headline, (shown,), measured, value=worst, shown=f"worst layer {worst_layer} {worst:.4f}")

    def figures(self) -> FigureNeeds:
        roles: tuple[Role, ...] = (self.stat,) if self.stat in ("focus", "breadth") else ()
        first, last = self.layers
        return FigureNeeds(roles=roles, stats=True, span=(first, last), series=self.stat)
