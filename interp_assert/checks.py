"""Expectations + measurements -> outcomes with messages. Pure: no model, no I/O.

Each property is one function in :data:`CHECKS`, dispatched by the spec's
``property`` value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from interp_assert import scores
from interp_assert.capture import CaptureRequest, Measurements
from interp_assert.spec import (
    AttentionStatBounds,
    DominantLayer,
    GeneratedText,
    HeadScore,
    HiddenNormRatio,
    HiddenNormTrend,
    LayerScore,
    RoleFraction,
    Snapshot,
    TopHeads,
    _Bounded,
    _Expectation,
)
from interp_assert.vocab import POSITIONAL_LABELS, Role, parse_head

TOP_SHOWN = 5


class CheckInputError(ValueError):
    """The expectation names something the model does not have (a head or layer out of range)."""


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


def requirements(expectation: _Expectation) -> CaptureRequest:
    """What capture must compute for this expectation."""
    if isinstance(expectation, HeadScore | TopHeads | LayerScore | DominantLayer):
        return CaptureRequest(roles=frozenset([expectation.role]))
    if isinstance(expectation, RoleFraction):
        return CaptureRequest(roles=frozenset([*POSITIONAL_LABELS, "focus"]))
    if isinstance(expectation, HiddenNormTrend | HiddenNormRatio):
        return CaptureRequest(hidden_norms=True)
    if isinstance(expectation, AttentionStatBounds):
        if expectation.stat in ("focus", "breadth"):
            return CaptureRequest(roles=frozenset([expectation.stat]))
        return CaptureRequest(attention_stats=True)
    if isinstance(expectation, GeneratedText):
        return CaptureRequest()  # generation happens for the prompt set itself
    if isinstance(expectation, Snapshot):
        roles: set[Role] = set()
        if "role_scores" in expectation.covers:
            roles |= set(expectation.roles)
        if "role_labels" in expectation.covers:
            roles |= {*POSITIONAL_LABELS, "focus"}
        if "layer_stats" in expectation.covers:
            roles |= {"focus", "breadth"}
        return CaptureRequest(
            roles=frozenset(roles),
            attention_stats="layer_stats" in expectation.covers,
            hidden_norms="hidden_norms" in expectation.covers,
        )
    raise TypeError(f"no requirements known for {type(expectation).__name__}")


def evaluate(expectation: _Expectation, measurements: Measurements) -> Outcome:
    check = CHECKS[expectation.property]
    outcome = check(expectation, measurements)
    shown = outcome.shown or _format_value(outcome.value)
    return replace(
        outcome,
        shown=shown,
        bound_low=getattr(expectation, "at_least", None),
        bound_high=getattr(expectation, "at_most", None),
    )


def _format_value(value: float | int | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if np.isnan(value) else f"{value:.4f}"
    return str(value)


# ---- helpers ----


def _bounds_outcome(expectation: _Bounded, subject: str, value: float) -> tuple[bool, str]:
    """Compare ``value`` to the expectation's bounds; the message says by how much."""
    low, high = expectation.at_least, expectation.at_most
    wanted = " and ".join(
        part
        for part in (
            f"at_least {low:g}" if low is not None else "",
            f"at_most {high:g}" if high is not None else "",
        )
        if part
    )
    if np.isnan(value):
        return False, f"{subject} could not be measured (no query row had a target); expected {wanted}"
    if low is not None and value < low:
        return False, f"{subject} = {value:.4f}, expected {wanted}: short by {low - value:.4f}"
    if high is not None and value > high:
        return False, f"{subject} = {value:.4f}, expected {wanted}: over by {value - high:.4f}"
    margins = [
        m
        for m in (value - low if low is not None else None, high - value if high is not None else None)
        if m is not None
    ]
    return True, f"{subject} = {value:.4f}, expected {wanted} (margin {min(margins):.4f})"


def _role_table(measurements: Measurements, role: Role) -> np.ndarray:
    return measurements.role_scores[role]


def _top_line(table: np.ndarray, role: str, k: int = TOP_SHOWN) -> str:
    ranked = scores.ranked_heads(table)[:k]
    return f"top {k} {role} heads: " + ", ".join(f"{name} {value:.4f}" for name, value in ranked)


def _layer(index: int, count: int, what: str) -> int:
    resolved = index + count if index < 0 else index
    if not 0 <= resolved < count:
        raise CheckInputError(f"{what} {index} is out of range: this model has {count} ({-count} to {count - 1})")
    return resolved


def _layer_range(bounds: list[int], count: int, what: str) -> tuple[int, int]:
    first, last = (_layer(b, count, what) for b in bounds)
    if first > last:
        raise CheckInputError(f"{what} range {bounds} is empty: the first must not come after the last")
    return first, last


# ---- one function per property ----


def _head_index(name: str, m: Measurements) -> tuple[int, int]:
    layer, head = parse_head(name)
    if not (0 <= layer < m.n_layers and 0 <= head < m.n_heads):
        raise CheckInputError(
            f"head {name} is out of range: this model has layers 0-{m.n_layers - 1} and heads 0-{m.n_heads - 1} "
            f"(L0H0 to L{m.n_layers - 1}H{m.n_heads - 1})"
        )
    return layer, head


def _head_score(e: HeadScore, m: Measurements) -> Outcome:
    layer, head = _head_index(e.head, m)
    table = _role_table(m, e.role)
    value = float(table[layer, head])
    passed, line = _bounds_outcome(e, f"{e.head} {e.role}", value)
    ranked = [name for name, _ in scores.ranked_heads(table)[:TOP_SHOWN]]
    return Outcome(passed, line, (_top_line(table, e.role),), {e.head: value}, (e.head, *ranked), value=value)


def _top_heads(e: TopHeads, m: Measurements) -> Outcome:
    total = m.n_layers * m.n_heads
    if e.k > total:
        raise CheckInputError(
            f"k is {e.k} but this model has only {total} heads ({m.n_layers} layers x {m.n_heads} heads); "
            f"k must be between 1 and {total}"
        )
    table = _role_table(m, e.role)
    ranked = scores.ranked_heads(table)
    top = [name for name, _ in ranked[: e.k]]
    wanted = e.include or e.equals or []
    for name in wanted:
        _head_index(name, m)
    missing = [name for name in wanted if name not in top]
    values = dict(ranked)
    passed = not missing if e.include else set(top) == set(wanted)
    relation = "include" if e.include else "equal"
    if passed:
        headline = f"top {e.k} {e.role} heads {relation} {', '.join(wanted)}"
    else:
        shown = ", ".join(f"{n} {values[n]:.4f} (rank {[r for r, _ in ranked].index(n) + 1})" for n in missing)
        extra = [n for n in top if n not in wanted]
        headline = f"top {e.k} {e.role} heads do not {relation} the expected set; missing: {shown}"
        if e.equals and extra:
            headline += f"; unexpected: {', '.join(extra)}"
    kth = ranked[e.k - 1][1]
    return Outcome(
        passed,
        headline,
        (_top_line(table, e.role, max(e.k, TOP_SHOWN)),),
        {f"top{e.k}": ",".join(top), f"rank{e.k}_score": kth},
        tuple(missing or top),
        value=" ".join(top),
    )


def _layer_score(e: LayerScore, m: Measurements) -> Outcome:
    layer = _layer(e.layer, m.n_layers, "layer")
    table = _role_table(m, e.role)
    value = float(scores.layer_means(table)[layer])
    passed, line = _bounds_outcome(e, f"layer {layer} mean {e.role}", value)
    return Outcome(passed, line, (_layer_line(table, e.role),), {f"layer{layer}": value}, value=value)


def _layer_line(table: np.ndarray, role: str) -> str:
    means = scores.layer_means(table)
    order = np.argsort(-means, kind="stable")[:TOP_SHOWN]
    return f"layers by mean {role}: " + ", ".join(f"{int(i)} {means[i]:.4f}" for i in order)


def _dominant_layer(e: DominantLayer, m: Measurements) -> Outcome:
    layer = _layer(e.layer, m.n_layers, "layer")
    table = _role_table(m, e.role)
    means = scores.layer_means(table)
    best = scores.dominant_layer(table)
    passed = best == layer
    if passed:
        runner_up = float(np.sort(means)[-2]) if len(means) > 1 else float("nan")
        headline = f"layer {layer} dominates {e.role} (mean {means[layer]:.4f}; next best {runner_up:.4f})"
    else:
        headline = (
            f"layer {best} dominates {e.role} (mean {means[best]:.4f}), not layer {layer} "
            f"(mean {means[layer]:.4f}, short by {means[best] - means[layer]:.4f})"
        )
    return Outcome(
        passed,
        headline,
        (_layer_line(table, e.role),),
        {"dominant_layer": best, f"layer{layer}": float(means[layer])},
        value=best,
        shown=f"layer {best} ({means[best]:.4f})",
    )


def _role_fraction(e: RoleFraction, m: Measurements) -> Outcome:
    first, last = _layer_range(e.layers, m.n_layers, "layer")
    labels = scores.head_labels(m.role_scores, e.label_threshold)
    value = scores.label_fraction(labels, e.label, first, last)
    passed, line = _bounds_outcome(e, f"fraction of {e.label} heads in layers {first}-{last}", value)
    counts = {
        label: int((labels[first : last + 1] == label).sum()) for label in sorted(set(labels[first : last + 1].ravel()))
    }
    detail = f"labels in layers {first}-{last} (threshold {e.label_threshold:g}): " + ", ".join(
        f"{label} {n}" for label, n in counts.items()
    )
    return Outcome(passed, line, (detail,), {"fraction": value}, value=value)


def _norms(m: Measurements, include_first: bool) -> np.ndarray:
    norms = m.hidden_norms if include_first else m.hidden_norms_without_first
    assert norms is not None
    return norms


def _hidden_norm_trend(e: HiddenNormTrend, m: Measurements) -> Outcome:
    norms = _norms(m, e.include_first_position)
    first, last = _layer_range(e.layers, len(norms), "hidden-state index")
    if first == last:
        raise CheckInputError(
            f"hidden-state range {e.layers} is the single index {first} on this model: a trend needs at least "
            f"one step (indices run 0 to {len(norms) - 1})"
        )
    sign = 1.0 if e.direction == "increasing" else -1.0
    breaks = []
    worst = float("inf")  # smallest relative step in the expected direction
    worst_at = first
    for k in range(first, last):
        before, after = norms[k], norms[k + 1]
        change = sign * (after - before) / abs(before) if before else sign * (after - before)
        if change < worst:
            worst, worst_at = float(change), k
        if change < -e.tolerance:
            breaks.append(f"{k}->{k + 1}: {before:.4g} -> {after:.4g} ({change * sign * 100:+.1f}%)")
    span = f"hidden norms over indices {first}-{last}"
    worst_step_text = f"{worst_at}->{worst_at + 1} {worst * sign:+.1%}"
    shown = "norms: " + ", ".join(f"{k}:{norms[k]:.4g}" for k in range(first, last + 1))
    if breaks:
        headline = (
            f"{span} are not {e.direction} within tolerance {e.tolerance:g}; {len(breaks)} step(s) break it: "
            + "; ".join(breaks[:TOP_SHOWN])
        )
        more = f" (+{len(breaks) - 1} more)" if len(breaks) > 1 else ""
        table = f"breaks at {worst_step_text}{more}"
        return Outcome(
            False, headline, (shown,), {"worst_step": worst, "breaks": len(breaks)}, value=worst, shown=table
        )
    headline = f"{span} are {e.direction} within tolerance {e.tolerance:g} (smallest step {worst:+.1%})"
    table = f"holds; smallest step {worst_step_text}"
    return Outcome(True, headline, (shown,), {"worst_step": worst, "breaks": 0}, value=worst, shown=table)


def _hidden_norm_ratio(e: HiddenNormRatio, m: Measurements) -> Outcome:
    norms = _norms(m, e.include_first_position)
    top = _layer(e.numerator, len(norms), "hidden-state index")
    bottom = _layer(e.denominator, len(norms), "hidden-state index")
    value = float(norms[top] / norms[bottom])
    passed, line = _bounds_outcome(
        e, f"hidden norm ratio [{top}]/[{bottom}] ({norms[top]:.4g}/{norms[bottom]:.4g})", value
    )
    return Outcome(passed, line, (), {"ratio": value}, value=value)


def _attention_stat(e: AttentionStatBounds, m: Measurements) -> Outcome:
    first, last = _layer_range(e.layers, m.n_layers, "layer")
    per_layer = _stat_by_layer(e.stat, m)
    failing = []
    for layer in range(first, last + 1):
        ok, line = _bounds_outcome(e, f"layer {layer} {e.stat}", float(per_layer[layer]))
        if not ok:
            failing.append(line)
    shown = f"{e.stat} by layer: " + ", ".join(f"{k}:{per_layer[k]:.4f}" for k in range(first, last + 1))
    in_range = per_layer[first : last + 1]
    # the layer closest to breaking its bound: the lowest under at_least, else the highest
    worst_layer = first + int(in_range.argmin() if e.at_least is not None else in_range.argmax())
    worst = float(per_layer[worst_layer])
    measured: dict[str, float | str] = {f"{e.stat}_worst_layer": worst, "failing_layers": len(failing)}
    if failing:
        headline = f"{len(failing)} of {last - first + 1} layers out of bounds: " + "; ".join(failing[:TOP_SHOWN])
        table = f"layer {worst_layer} {worst:.4f}" + (f" +{len(failing) - 1} more" if len(failing) > 1 else "")
        return Outcome(False, headline, (shown,), measured, value=worst, shown=table)
    headline = f"attention {e.stat} within bounds in layers {first}-{last} (worst layer {worst:.4f})"
    return Outcome(True, headline, (shown,), measured, value=worst, shown=f"worst layer {worst_layer} {worst:.4f}")


def _stat_by_layer(stat: str, m: Measurements) -> np.ndarray:
    """Per layer: ``max`` = largest weight of any head; ``mean`` = mean visible weight over heads;
    ``focus``/``breadth`` = the role score averaged over the layer's heads."""
    if stat == "max":
        assert m.max_weight is not None
        return m.max_weight.max(axis=1)
    if stat == "mean":
        assert m.mean_weight is not None
        return m.mean_weight.mean(axis=1)
    return scores.layer_means(m.role_scores[stat])  # type: ignore[index]


def _generated_text(e: GeneratedText, m: Measurements) -> Outcome:
    texts = m.generated_texts
    if not texts:
        raise CheckInputError(f"prompt set {e.prompts!r} generates nothing; give it 'generate: N'")
    indices = range(len(texts)) if e.sequence is None else [_layer(e.sequence, len(texts), "sequence")]
    wanted = f"contain {e.contains!r}" if e.contains is not None else f"equal {e.equals!r}"
    failing = [i for i in indices if (e.contains not in texts[i] if e.contains is not None else texts[i] != e.equals)]
    shown = tuple(f"sequence {i} generated: {texts[i]!r}" for i in indices)
    text = texts[failing[0] if failing else indices[0]]
    measured: dict[str, float | str] = {"failing_sequences": len(failing), "generated_text": text}
    if failing:
        headline = f"{len(failing)} of {len(indices)} generated text(s) do not {wanted}: {text!r}"
        return Outcome(False, headline, shown, measured, value=text, shown=repr(text))
    return Outcome(True, f"generated text(s) {wanted}: {text!r}", shown, measured, value=text, shown=repr(text))


CHECKS: dict[str, Callable[[Any, Measurements], Outcome]] = {
    "head_score": _head_score,
    "top_heads": _top_heads,
    "layer_score": _layer_score,
    "dominant_layer": _dominant_layer,
    "role_fraction": _role_fraction,
    "hidden_norm_trend": _hidden_norm_trend,
    "hidden_norm_ratio": _hidden_norm_ratio,
    "attention_stat": _attention_stat,
    "generated_text": _generated_text,
}
