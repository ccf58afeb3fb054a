"""Measurements -> expectations for ``interp-assert discover``, each bound a margin inside the measured value.

Pure: numbers in, expectation mappings out (in the order they are written).
Bounds are rounded outward, so a written bound never passes its measured value;
sets and dominant layers are only claimed where no near-tie makes them fragile.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import numpy as np

from interp_assert.vocab import Role


@dataclass(frozen=True, kw_only=True)
class DiscoverSettings:
    threshold: float = 0.5  # a head is a finding when its role score reaches this
    max_heads: int = 3  # strongest heads written per role
    keep: float = 0.85  # at_least bounds sit at this fraction of the measured value
    tie_gap: float = 0.02  # scores closer than this are a near-tie: no set boundary drawn between them
    min_trend_steps: int = 2  # shortest monotone run of hidden norms written as a trend
    trend_tolerance: float = 0.01


@dataclass
class Section:
    """A group of expectations under one comment header."""

    title: str
    expectations: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def round_outward(value: float, direction: str, digits: int = 2) -> float:
    """``value`` to ``digits`` significant digits, rounded down (``"down"``) or up."""
    if value == 0 or not math.isfinite(value):
        return 0.0
    exponent = math.floor(math.log10(abs(value))) - (digits - 1)
    step = Decimal(1).scaleb(exponent)
    rounding = ROUND_FLOOR if direction == "down" else ROUND_CEILING
    return float((Decimal(repr(value)) / step).to_integral_value(rounding=rounding) * step)


def lower_bound(value: float, keep: float) -> float:
    return round_outward(value * keep, "down")


SCORE_SLACK = 0.05  # the most a score in [0, 1] may fall below its measured value in a discovered bound


def score_lower_bound(value: float, keep: float) -> float:
    """``at_least`` for a score in [0, 1] (head role scores, sink rate, attention statistics): it may
    fall by ``1 - keep`` of itself or by ``SCORE_SLACK``, whichever is less, so a near-certain head
    (0.99999) keeps a bound that says so (0.94, not 0.84); rounded down to two significant digits."""
    return round_outward(max(value * keep, value - SCORE_SLACK), "down")


def upper_bound(value: float, keep: float) -> float:
    return round_outward(value / keep, "up")


# ---- findings ----


def robust_top_set(ranked: list[tuple[str, float]], wanted: int, gap: float) -> tuple[list[str], int] | None:
    """Heads to require in the top k, and k, such that no near-tie straddles rank k.

    Tries the ``wanted`` strongest heads first, then fewer; for each, the smallest
    k (at most 4 past them) whose k-th and (k+1)-th scores are ``gap`` apart.
    """
    values = [score for _, score in ranked]
    for count in range(min(wanted, len(ranked)), 0, -1):
        for k in range(count, min(count + 4, len(values) - 1) + 1):
            if values[k - 1] - values[k] >= gap:
                return [name for name, _ in ranked[:count]], k
    return None


def head_findings(
    prompt_name: str, role: Role, table: np.ndarray, settings: DiscoverSettings, used_names: set[str]
) -> Section:
    from interp_assert.measure import head_tables as scores

    section = Section(f"{role} heads ({prompt_name})")
    ranked = [(name, value) for name, value in scores.ranked_heads(table) if not np.isnan(value)]
    total = table.size
    strong = [(name, value) for name, value in ranked if value >= settings.threshold][: settings.max_heads]
    if not ranked:
        section.notes.append(f"{role} cannot be measured on {prompt_name!r} (no query row has a target)")
        return section
    if not strong:
        best, value = ranked[0]
        section.notes.append(f"no {role} head reaches {settings.threshold:g} (best: {best} {shown_score(value)})")
    for rank, (name, value) in enumerate(strong, start=1):
        section.expectations.append(
            {
                "name": unique_name(f"{name.lower()}_{role}", prompt_name, used_names),
                "description": f"measured {shown_score(value)} on {prompt_name} (rank {rank} of {total})",
                "property": "head_score",
                "head": name,
                "role": role,
                "prompts": prompt_name,
                "at_least": score_lower_bound(value, settings.keep),
            }
        )
    top = robust_top_set(ranked, len(strong), settings.tie_gap) if strong else None
    if strong and top is None:
        section.notes.append(f"no top_heads set: the top {role} scores are within {settings.tie_gap:g} of each other")
    if top is not None:
        heads, k = top
        shown = ", ".join(f"{n} {shown_score(v)}" for n, v in ranked[: k + 1])
        section.expectations.append(
            {
                "name": unique_name(f"{role}_top{k}", prompt_name, used_names),
                "description": f"measured top {k + 1}: {shown}",
                "property": "top_heads",
                "role": role,
                "k": k,
                "include": heads,
                "prompts": prompt_name,
            }
        )
    dominant = dominant_layer_finding(prompt_name, role, table, settings, used_names)
    if isinstance(dominant, str):
        section.notes.append(dominant)
    else:
        section.expectations.append(dominant)
    return section


def dominant_layer_finding(
    prompt_name: str, role: Role, table: np.ndarray, settings: DiscoverSettings, used_names: set[str]
) -> dict[str, Any] | str:
    """A dominant_layer expectation, or a note when the lead is too narrow to rely on."""
    means = np.nan_to_num(table.mean(axis=1), nan=-1.0)
    order = np.argsort(-means, kind="stable")
    shown = ", ".join(f"layer {int(i)} {means[i]:.4f}" for i in order[:3])
    best = int(order[0])
    lead = float(means[best] - means[order[1]]) if len(order) > 1 else math.inf
    if lead < max(settings.tie_gap, 0.05 * float(means[best])):
        return f"no dominant_layer for {role}: the lead is too narrow ({shown})"
    return {
        "name": unique_name(f"{role}_dominant_layer", prompt_name, used_names),
        "description": f"layer means measured {shown}",
        "property": "dominant_layer",
        "role": role,
        "layer": best,
        "prompts": prompt_name,
    }


def monotone_runs(values: np.ndarray) -> list[tuple[int, int, str]]:
    """Maximal strictly monotone runs ``(first, last, direction)``; neighbouring runs share an end."""
    runs: list[tuple[int, int, str]] = []
    start = 0
    for index in range(1, len(values)):
        step = values[index] - values[index - 1]
        direction = "increasing" if step > 0 else "decreasing" if step < 0 else "flat"
        if runs and runs[-1][1] == index - 1 and runs[-1][2] == direction:
            runs[-1] = (runs[-1][0], index, direction)
        else:
            start = index - 1
            runs.append((start, index, direction))
    return [run for run in runs if run[2] != "flat"]


def norm_findings(prompt_name: str, norms: np.ndarray, settings: DiscoverSettings, used_names: set[str]) -> Section:
    section = Section(f"hidden-state norms ({prompt_name}, positions >= 1)")
    final = len(norms) - 1
    section.notes.append(f"index k: residual stream after k blocks; 0 = embeddings, {final} = last block (pre-norm)")
    for first, last, direction in monotone_runs(norms):
        if last - first < settings.min_trend_steps:
            continue
        steps = [(norms[k + 1] - norms[k]) / abs(norms[k]) for k in range(first, last) if norms[k]]
        smallest = min(abs(s) for s in steps) if steps else 0.0
        verb = "grow" if direction == "increasing" else "fall"
        section.expectations.append(
            {
                "name": unique_name(f"norms_{verb}_{first}_to_{last}", prompt_name, used_names),
                "description": f"measured {norms[first]:.4g} (index {first}) -> {norms[last]:.4g} (index {last}), "
                f"{direction} at every step (smallest step {smallest * 100:.1f}%)",
                "property": "hidden_norm_trend",
                "layers": [first, last],
                "direction": direction,
                "tolerance": settings.trend_tolerance,
                "prompts": prompt_name,
            }
        )
    if norms[0] > 0:
        ratio = float(norms[-1] / norms[0])
        bound = (
            {"at_least": lower_bound(ratio, settings.keep)}
            if ratio >= 1
            else {"at_most": upper_bound(ratio, settings.keep)}
        )
        section.expectations.append(
            {
                "name": unique_name("norm_ratio_last_to_first", prompt_name, used_names),
                "description": f"measured {norms[-1]:.4g} / {norms[0]:.4g} = {ratio:.4g}",
                "property": "hidden_norm_ratio",
                "numerator": -1,
                "denominator": 0,
                "prompts": prompt_name,
                **bound,
            }
        )
    return section


def depth_bands(n_layers: int) -> list[tuple[int, int]]:
    """Early, middle and late layers (fewer bands for models with fewer layers)."""
    count = min(3, n_layers)
    edges = [round(i * n_layers / count) for i in range(count + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(count)]


def sharpness_findings(
    prompt_name: str, per_layer: dict[str, np.ndarray], settings: DiscoverSettings, used_names: set[str]
) -> Section:
    """attention_stat bounds per depth band; neighbouring bands with the same bound are merged."""
    section = Section(f"attention sharpness ({prompt_name}; per layer: max = largest weight, focus = mean row peak)")
    for stat, values in per_layer.items():
        bands: list[tuple[int, int, float]] = []
        for first, last in depth_bands(len(values)):
            bound = score_lower_bound(float(values[first : last + 1].min()), settings.keep)
            if bands and bands[-1][2] == bound:
                bands[-1] = (bands[-1][0], last, bound)
            else:
                bands.append((first, last, bound))
        for first, last, bound in bands:
            band = values[first : last + 1]
            if bound <= 0:
                continue
            section.expectations.append(
                {
                    "name": unique_name(f"attention_{stat}_{_layer_span(first, last)}", prompt_name, used_names),
                    "description": f"measured {band.min():.4f} to {band.max():.4f} per layer",
                    "property": "attention_stat",
                    "stat": stat,
                    "layers": [first, last],
                    "prompts": prompt_name,
                    "at_least": bound,
                }
            )
    return section


def shown_score(value: float) -> str:
    """Four decimals, or enough to tell a near-1 score (an attention sink at 0.99999) from 1."""
    return f"{value:.6f}" if 0.9999 < value < 1.0 else f"{value:.4f}"


def _layer_span(first: int, last: int) -> str:
    return f"layer_{first}" if first == last else f"layers_{first}_to_{last}"


def unique_name(base: str, prompt_name: str, used: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", base)
    if name in used:
        name = f"{name}_{prompt_name}"
    suffix = 2
    candidate = name
    while candidate in used:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    used.add(candidate)
    return candidate
