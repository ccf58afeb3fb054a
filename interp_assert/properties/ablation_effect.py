"""``ablation_effect``: how much the next-token loss rises when a set of heads is ablated.

The effect is ``mean loss with the heads ablated - mean loss of the clean model``, in nats, over
the next-token losses at ``positions`` (token positions t whose loss ``-log p(token t | tokens
before t)`` counts; Python-style, negative from the end, default ``[1, -1]``: every token that
has a predecessor). ``mode: zero`` sets the heads' inputs to the attention output projection to
0, ``mode: mean`` to their mean over the prompt set's positions (see
:mod:`interp_assert.measure.counterfactual.ablation`). With ``control``, the same number of heads per layer is drawn
at random (seeded) from the other heads of the same layers, ``samples`` times, and
``at_least_times: k`` asserts that the named heads' effect is at least k times the mean
control effect (and positive).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure.measurements import AblatedLosses, AblationRequest, CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, FigureNeeds, HeadName, LayerRange, head_index
from interp_assert.properties.findings import DiscoverSettings, Section, lower_bound, unique_name
from interp_assert.strict import Strict
from interp_assert.vocab import head_name, parse_head


class AblationControl(Strict):
    samples: int = Field(default=5, ge=1, le=100)
    seed: int = Field(default=0, ge=0)
    at_least_times: float | None = Field(default=None, gt=0.0)


class AblationEffect(Bounded):
    property: Literal["ablation_effect"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        (
            "`heads: [heads]`, `mode: zero\\|mean` (zero), `positions: [a, b]` (default `[1, -1]`), bounds (nats), "
            "`control: {samples (5), seed (0), at_least_times}`"
        ),
        (
            "the mean next-token loss over token positions a..b rises by an amount within bounds when the heads "
            "are ablated: their slice of the attention output projection's input set to 0 (`zero`) or to its mean"
            " over the prompt set's positions (`mean`); with `control`, `samples` random sets of as many heads "
            "per layer from the same layers' other heads are ablated too, and `at_least_times: k` asserts the "
            "named heads' effect is at least k x the controls' mean effect (see Ablation)"
        ),
    )
    heads: list[HeadName] = Field(min_length=1)
    mode: Literal["zero", "mean"] = "zero"
    positions: LayerRange | None = None
    control: AblationControl | None = None

    unit_bounds: ClassVar[bool] = False  # nats, any sign
    bounds_required: ClassVar[bool] = False

    @model_validator(mode="after")
    def _states_something(self) -> AblationEffect:
        if len(set(self.heads)) != len(self.heads):
            raise ValueError("heads lists a head twice")
        has_ratio = self.control is not None and self.control.at_least_times is not None
        if self.at_least is None and self.at_most is None and not has_ratio:
            raise ValueError("state something to check: 'at_least' and/or 'at_most' (nats), or control.at_least_times")
        return self

    def ablation(self) -> AblationRequest:
        heads = tuple(sorted(parse_head(name) for name in self.heads))
        control = self.control
        return AblationRequest(
            heads=heads,
            mode=self.mode,
            controls=control.samples if control is not None else 0,
            seed=control.seed if control is not None else 0,
        )

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(ablations=frozenset([self.ablation()]))

    def check(self, context: CheckContext) -> Outcome:
        m = context.measurements
        for name in self.heads:
            head_index(name, m)
        found = m.ablations.get(self.ablation())
        if found is None or m.token_losses is None:
            raise CheckInputError("this ablation was not captured for this prompt set")
        clean = mean_loss(m.token_losses, self.positions)
        ablated = mean_loss(found.losses, self.positions)
        effect = ablated - clean
        span = span_words(self.positions)
        subject = f"ablating {', '.join(self.heads)} ({self.mode}): loss on {span} {clean:.4f} -> {ablated:.4f} nats"
        passed, line = self.within(f"{subject}, effect", effect)
        measured: dict[str, float | str] = {"clean_loss": clean, "ablated_loss": ablated}
        details: list[str] = []
        if self.control is not None:
            ok, control_line, control_measured = self._control(found, clean, effect)
            passed = passed and ok
            details.append(control_line)
            measured |= control_measured
            if not ok and self.at_least is None and self.at_most is None:
                line = f"{subject}, effect = {effect:.4f}"
        return Outcome(passed, line, tuple(details), measured, heads=tuple(self.heads), value=effect)

    def _control(self, found: AblatedLosses, clean: float, effect: float) -> tuple[bool, str, dict[str, float | str]]:
        assert self.control is not None
        if found.control_problem:
            raise CheckInputError(f"no random control: {found.control_problem}")
        effects = [mean_loss(losses, self.positions) - clean for losses in found.control_losses]
        control_mean = float(np.mean(effects))
        times = effect / control_mean if control_mean > 0 else float("inf") if effect > 0 else float("nan")
        sets = "; ".join(
            f"{' '.join(head_name(*h) for h in heads)} {value:+.4f}"
            for heads, value in zip(found.control_heads, effects, strict=True)
        )
        line = (
            f"random control ({self.control.samples} sets drawn from the same layers, seed {self.control.seed}): "
            f"mean effect {control_mean:+.4f} nats; the named heads' effect is {times:.3g}x that ({sets})"
        )
        wanted = self.control.at_least_times
        ok = wanted is None or (effect > 0 and (control_mean <= 0 or effect >= wanted * control_mean))
        if not ok:
            line = f"{line}; expected at least {wanted:g}x"
        return ok, line, {"control_mean_effect": control_mean, "times_control": times}

    def figures(self) -> FigureNeeds:
        return FigureNeeds(heads=tuple(self.heads[:2]))

    def own_figures(self, context: CheckContext, out_dir: Path) -> list[tuple[str, str]]:
        from interp_assert.figures import heatmaps

        m = context.measurements
        found = m.ablations.get(self.ablation())
        if found is None or m.token_losses is None:
            return []
        outcome = self.check(context)
        clean = mean_loss(m.token_losses, self.positions)
        controls = [
            (" ".join(head_name(*h) for h in heads), mean_loss(losses, self.positions) - clean)
            for heads, losses in zip(found.control_heads, found.control_losses, strict=True)
        ]
        file = f"ablation-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}.png"
        title = f"{self.name}: ablating {' '.join(self.heads)} ({self.mode}), {span_words(self.positions)}"
        effect = float(outcome.value) if isinstance(outcome.value, float) else float("nan")
        heatmaps.ablation_plot(out_dir / file, " ".join(self.heads), effect, controls, title, passed=outcome.passed)
        return [(file, f"{self.name}: loss change, named heads vs random ones")]


def mean_loss(losses: tuple[np.ndarray, ...], positions: list[int] | None) -> float:
    """The mean of per-batch ``[B, T - 1]`` next-token losses over token positions ``positions``."""
    total, count = 0.0, 0
    for batch in losses:
        n_tokens = batch.shape[1] + 1
        first, last = _resolve_positions(positions or [1, -1], n_tokens)
        chosen = batch[:, first - 1 : last]
        total += float(chosen.sum())
        count += chosen.size
    return total / count


def _resolve_positions(bounds: list[int], n_tokens: int) -> tuple[int, int]:
    first, last = (b + n_tokens if b < 0 else b for b in bounds)
    if not (0 <= first < n_tokens and 0 <= last < n_tokens):
        raise CheckInputError(
            f"positions {bounds} are out of range for a prompt of {n_tokens} tokens ({-n_tokens} to {n_tokens - 1})"
        )
    if first < 1:
        raise CheckInputError(f"positions {bounds} include position 0, which has no next-token loss: start at 1")
    if first > last:
        raise CheckInputError(f"positions {bounds} are empty for a prompt of {n_tokens} tokens")
    return first, last


def span_words(positions: list[int] | None) -> str:
    return "every position" if positions is None else f"positions {positions[0]}..{positions[1]}"


# ---- what discover writes ----

DISCOVER_CONTROLS = 5
SMALLEST_EFFECT = 0.1  # nats: a smaller change is not written as a finding
LARGEST_RATIO_CLAIM = 10.0  # a ratio over a near-zero control mean is noise: claim at most this


def findings(
    prompt_name: str,
    request: AblationRequest,
    clean: tuple[np.ndarray, ...],
    found: AblatedLosses,
    positions: list[int],
    settings: DiscoverSettings,
    used_names: set[str],
) -> Section:
    """What zeroing a set of heads (discover: the induction heads it found) does to the loss."""
    heads = [head_name(*head) for head in request.heads]
    section = Section(f"ablation ({prompt_name}; loss on positions {positions[0]}..{positions[1]}, in nats)")
    base = mean_loss(clean, positions)
    effect = mean_loss(found.losses, positions) - base
    if effect < SMALLEST_EFFECT:
        section.notes.append(f"zeroing {' '.join(heads)} changes the loss by only {effect:+.4f} nats: no finding")
        return section
    controls = [mean_loss(losses, positions) - base for losses in found.control_losses]
    control_mean = float(np.mean(controls)) if controls else float("nan")
    expectation: dict[str, Any] = {
        "name": unique_name("ablation_" + "_".join(h.lower() for h in heads), prompt_name, used_names),
        "description": f"zeroing {', '.join(heads)} measured {base:.4f} -> {base + effect:.4f} nats ({effect:+.4f}); "
        f"{len(controls)} random sets of as many heads from the same layers (seed {request.seed}): mean "
        f"{control_mean:+.4f}, at most {max(controls, default=float('nan')):+.4f}",
        "property": "ablation_effect",
        "heads": heads,
        "prompts": prompt_name,
        "positions": positions,
        "at_least": lower_bound(effect, settings.keep),
    }
    control: dict[str, Any] = {"samples": len(controls), "seed": request.seed}
    if controls and control_mean > 0 and effect / control_mean >= 2:
        control["at_least_times"] = min(lower_bound(effect / control_mean, settings.keep), LARGEST_RATIO_CLAIM)
    elif controls:
        section.notes.append(f"random heads matter about as much ({control_mean:+.4f}): no ratio claimed")
    if found.control_problem:
        section.notes.append(f"no random control: {found.control_problem}")
    else:
        expectation["control"] = control
    section.expectations.append(expectation)
    return section
