"""What checking an expectation gives: pass or fail, the one-line headline, and the numbers behind it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Outcome:
    passed: bool
    headline: str
    details: tuple[str, ...] = ()
    measured: dict[str, float | str] = field(default_factory=dict)
    heads: tuple[str, ...] = ()  # the heads this outcome is about, most relevant first
    notes: tuple[str, ...] = ()  # said even when the outcome passes (e.g. loosened tolerances)
    # The one number (or text) a reviewer compares between models, and how a table shows it:
    # a head list for top_heads, the breaking step for trends, the generated text.
    value: float | int | str | None = None
    shown: str = ""
    bound_low: float | None = None
    bound_high: float | None = None
    written: tuple[str, str] | None = None  # (written | updated, file) when a snapshot was stored
    # The value's curve, where it has one: a probe's held-out AUROC at every block (track --report draws it)
    series: tuple[float, ...] = ()


def format_value(value: float | int | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)
