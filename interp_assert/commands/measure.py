"""``interp-assert measure MODEL``: a model's numbers without writing a spec or a placeholder bound.

Per prompt set: the top heads of each role with their scores, layer means, the scores of
heads asked for by name, hidden norms by depth, and a flag on any top head whose score comes
mostly from one frequent token (see :mod:`interp_assert.measure.capture.attribution`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from interp_assert.measure.capture import attribution, scores
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.runner import measure_named
from interp_assert.spec import PromptSet
from interp_assert.vocab import ROLES, TARGET_ROLES, Role, parse_head

Progress = Callable[[str], None]
FLAG_MIN_SCORE = 0.2  # heads below this are no one's finding; their token mix is not worth a flag


@dataclass
class SetMeasurement:
    name: str
    top: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    layer_means: dict[str, list[float]] = field(default_factory=dict)
    heads: dict[str, dict[str, float]] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    norms_with_first: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class MeasureResult:
    model: str
    shape: str
    sets: tuple[SetMeasurement, ...]


def roles_for(asked: tuple[Role, ...]) -> tuple[Role, ...]:
    if asked:
        return asked
    return ROLES  # texts may repeat tokens too; a role with no target row is reported as not measurable


def measure_model(
    loaded: Any,
    prompt_sets: dict[str, PromptSet],
    *,
    roles: tuple[Role, ...] = (),
    heads: tuple[str, ...] = (),
    top: int = 5,
    progress: Progress = lambda _: None,
) -> MeasureResult:
    config = loaded.config
    n_layers, n_heads = int(config.num_hidden_layers), int(config.num_attention_heads)
    for head in heads:
        layer, index = parse_head(head)
        if not (0 <= layer < n_layers and 0 <= index < n_heads):
            from interp_assert.errors import InterpAssertError

            raise InterpAssertError(f"--head {head}: this model has layers 0-{n_layers - 1} and heads 0-{n_heads - 1}")
    results = []
    for name, prompt_set in prompt_sets.items():
        progress(f"measuring {name!r}")
        wanted = roles_for(roles)
        request = CaptureRequest(roles=frozenset(wanted), hidden_norms=True)
        measured = measure_named(loaded, name, prompt_set, request)
        result = SetMeasurement(name)
        for role in wanted:
            table = measured.role_scores[role]
            ranked = [(h, v) for h, v in scores.ranked_heads(table) if not math.isnan(v)]
            result.top[role] = ranked[:top]
            result.layer_means[role] = [float(v) for v in scores.layer_means(table)]
        for head in heads:
            layer, index = parse_head(head)
            result.heads[head] = {role: float(measured.role_scores[role][layer, index]) for role in wanted}
        assert measured.hidden_norms is not None and measured.hidden_norms_without_first is not None
        result.norms = [float(v) for v in measured.hidden_norms_without_first]
        result.norms_with_first = [float(v) for v in measured.hidden_norms]
        result.flags = _token_flags(loaded, name, prompt_set, result, wanted)
        results.append(result)
    shape = f"{type(loaded.model).__name__}: {n_layers} layers x {n_heads} heads"
    return MeasureResult(loaded.reference, shape, tuple(results))


def _token_flags(
    loaded: Any, name: str, prompt_set: PromptSet, result: SetMeasurement, roles: tuple[Role, ...]
) -> list[str]:
    """One more capture, of the top heads' patterns on the first sequence, to see what their scores come from."""
    candidates = {
        (head, role)
        for role in roles
        if role in TARGET_ROLES
        for head, value in result.top.get(role, [])[:3]
        if value >= FLAG_MIN_SCORE
    }
    if not candidates:
        return []
    request = CaptureRequest(patterns=frozenset(parse_head(head) for head, _ in candidates))
    measured = measure_named(loaded, name, prompt_set, request)
    flags = []
    for head, role in sorted(candidates):
        pattern = measured.patterns[parse_head(head)]
        rows = attribution.row_scores(pattern, measured.pattern_tokens, role)
        found = attribution.dominant_token(rows, measured.pattern_tokens)
        if found is not None:
            flags.append(attribution.describe(head, role, found))
    return flags


def print_measurements(result: MeasureResult, out: TextIO) -> None:
    out.write(f"{result.model} ({result.shape})\n")
    for measured in result.sets:
        out.write(f"\nprompt set {measured.name!r}\n")
        for role, ranked in measured.top.items():
            if not ranked:
                out.write(f"  {role}: not measurable on this prompt set (no query row has a target)\n")
                continue
            means = measured.layer_means[role]
            best = int(np.nanargmax(means)) if not all(math.isnan(v) for v in means) else None
            layer = f"; top layer {best} (mean {means[best]:.4f})" if best is not None else ""
            out.write(f"  {role}: " + ", ".join(f"{h} {v:.4f}" for h, v in ranked) + layer + "\n")
        for head, by_role in measured.heads.items():
            out.write(f"  {head}: " + ", ".join(f"{r} {_number(v)}" for r, v in by_role.items()) + "\n")
        for flag in measured.flags:
            out.write(f"  flag: {flag}\n")
        if measured.norms:
            shown = ", ".join(f"{k}:{v:.4g}" for k, v in enumerate(measured.norms))
            out.write(f"  hidden norms (positions >= 1), index 0 = embeddings: {shown}\n")


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def to_json(result: MeasureResult) -> dict[str, Any]:
    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return {
        "model": result.model,
        "shape": result.shape,
        "prompt_sets": [
            {
                "name": m.name,
                "top_heads": {role: [[h, finite(v)] for h, v in ranked] for role, ranked in m.top.items()},
                "layer_means": {role: [finite(v) for v in means] for role, means in m.layer_means.items()},
                "heads": {h: {r: finite(v) for r, v in by_role.items()} for h, by_role in m.heads.items()},
                "flags": m.flags,
                "hidden_norms": [finite(v) for v in m.norms],
                "hidden_norms_with_first": [finite(v) for v in m.norms_with_first],
            }
            for m in result.sets
        ],
    }
