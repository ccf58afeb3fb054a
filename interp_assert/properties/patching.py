"""``patching``: patch components from one run of a prompt pair into the other and measure how
much of the logit difference moves (see :mod:`interp_assert.measure.counterfactual.patching`).

Normalised over the means of the pairs, as TransformerLens does (``P`` the mean patched, ``C``
the mean clean, ``K`` the mean corrupt logit difference): ``denoise`` (clean components into the
corrupt run) ``(P - K) / (C - K)``, 1 = fully restored; ``noise`` (corrupt components into the
clean run) ``(P - C) / (C - K)``, -1 = fully destroyed. The per-pair values are shown as spread.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure.counterfactual.pair_request import PairRequest
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.measure.pair_requests import Component, PairResult
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, HeadName, head_index
from interp_assert.properties.findings import DiscoverSettings, Section, lower_bound, unique_name
from interp_assert.properties.logit_diff import pair_result, spread_line
from interp_assert.strict import Strict
from interp_assert.vocab import head_name, parse_head

MIN_GAP = 1e-3  # nats: clean and corrupt means closer than this leave the normalisation undefined
TOP_SHOWN = 5


class ResidSite(Strict):
    layer: int = Field(ge=0)  # the residual stream entering block `layer` (0: the embeddings)
    position: int


class PatchTop(Strict):
    k: int = Field(ge=1)
    include: list[HeadName] | None = Field(default=None, min_length=1)
    equals: list[HeadName] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_set(self) -> PatchTop:
        if (self.include is None) == (self.equals is None):
            raise ValueError("give exactly one of 'include' or 'equals'")
        listed = self.include or self.equals or []
        if len(set(listed)) != len(listed):
            raise ValueError("a head is listed twice")
        if len(listed) > self.k:
            raise ValueError(f"{len(listed)} heads listed but k is {self.k}; they cannot all be in the top {self.k}")
        if self.equals is not None and len(self.equals) != self.k:
            raise ValueError(f"'equals' lists {len(self.equals)} heads; it must list exactly k={self.k}")
        return self


class PatchControl(Strict):
    samples: int = Field(default=5, ge=1, le=100)
    seed: int = Field(default=0, ge=0)
    at_least_times: float | None = Field(default=None, gt=0.0)


class Patching(Bounded):
    property: Literal["patching"]
    reference: ClassVar[tuple[str, str]] = (
        (
            "`heads: [heads]` (with `positions: [ints]`, default all), `resid: [{layer, position}]`, `mlp: [layers]`, "
            "`direction: denoise\\|noise`, `effect: total\\|direct`, bounds (normalised), "
            "`top: {k, include\\|equals}`, `control: {samples (5), seed (0), at_least_times}`; a pair set"
        ),
        (
            "patching the named components from the other run of each pair moves the mean logit difference by a "
            "normalised effect within bounds (`denoise`: (P - K)/(C - K), 1 = restored; `noise`: (P - C)/(C - K), "
            "-1 = destroyed); `top`: the k heads with the largest single-head effect (denoise: highest, noise: "
            "lowest) include / are the listed ones; `control`: random head sets from the same layers, and "
            "`at_least_times: k` asserts the named effect is at least k x theirs (see Patching)"
        ),
    )
    heads: list[HeadName] | None = Field(default=None, min_length=1)
    positions: list[int] | None = Field(default=None, min_length=1)
    resid: list[ResidSite] | None = Field(default=None, min_length=1)
    mlp: list[int] | None = Field(default=None, min_length=1)
    direction: Literal["denoise", "noise"] = "denoise"
    effect: Literal["total", "direct"] = "total"
    top: PatchTop | None = None
    control: PatchControl | None = None

    unit_bounds: ClassVar[bool] = False
    bounds_required: ClassVar[bool] = False
    needs_pairs: ClassVar[bool] = True  # the spec loader refuses a prompt set without pairs

    @model_validator(mode="after")
    def _states_something(self) -> Patching:
        named = self.components()
        if self.heads is not None and len(set(self.heads)) != len(self.heads):
            raise ValueError("heads lists a head twice")
        if self.mlp is not None and len(set(self.mlp)) != len(self.mlp):
            raise ValueError("mlp lists a layer twice")
        if self.effect == "direct" and self.resid is not None:
            raise ValueError("effect: direct is defined for heads and MLPs, not the residual stream (use total)")
        if self.positions is not None and self.heads is None and self.top is None:
            raise ValueError("positions apply to heads: give 'heads' (or 'top')")
        has_bounds = self.at_least is not None or self.at_most is not None
        has_ratio = self.control is not None and self.control.at_least_times is not None
        if (has_bounds or self.control is not None) and not named:
            raise ValueError("bounds and control need a named set: 'heads', 'resid' and/or 'mlp'")
        if self.control is not None and (self.heads is None or self.resid is not None or self.mlp is not None):
            raise ValueError("control draws random heads: name only 'heads' with it")
        if not (has_bounds or has_ratio or self.top is not None):
            raise ValueError(
                "state something to check: 'at_least' and/or 'at_most' (normalised effect), "
                "'top' or control.at_least_times"
            )
        return self

    def components(self) -> tuple[Component, ...]:
        positions = tuple(self.positions) if self.positions is not None else None
        found = [Component("head", *parse_head(name), positions) for name in self.heads or []]
        found += [Component("resid", site.layer, 0, (site.position,)) for site in self.resid or []]
        found += [Component("mlp", layer) for layer in self.mlp or []]
        return tuple(found)

    def request(self, effect: str | None = None) -> PairRequest:
        own = effect is None or effect == self.effect
        return PairRequest(
            direction=self.direction,
            effect=effect or self.effect,  # type: ignore[arg-type]
            sets=(self.components(),) if self.components() else (),
            all_heads=self.top is not None and own,
            head_positions=tuple(self.positions) if self.positions is not None else None,
            controls=self.control.samples if self.control is not None and own else 0,
            seed=self.control.seed if self.control is not None and own else 0,
        )

    def requirements(self) -> CaptureRequest:
        extras = {self.request(), PairRequest()}
        if self.resid is None and self.components() and self.effect == "total":
            extras.add(self.request("direct"))  # shown side by side: closed form, no forward
        return CaptureRequest(extras=frozenset(extras))

    def check(self, context: CheckContext) -> Outcome:
        m = context.measurements
        for name in self.heads or []:
            head_index(name, m)
        for layer in [site.layer for site in self.resid or []] + list(self.mlp or []):
            if not 0 <= layer < m.n_layers:
                raise CheckInputError(f"layer {layer} is out of range: this model has layers 0-{m.n_layers - 1}")
        base = pair_result(m, PairRequest())
        _check_positions(self, base)
        clean, corrupt = float(base.clean.mean()), float(base.corrupt.mean())
        gap = clean - corrupt
        if abs(gap) < MIN_GAP:
            raise CheckInputError(
                f"the clean and corrupt mean logit differences are {clean:.6f} and {corrupt:.6f} (apart by {gap:.2e} "
                f"nats, less than {MIN_GAP:g}): the normalisation (patched - corrupt) / (clean - corrupt) is "
                "undefined; choose pairs whose corruption changes the answer"
            )
        measured: dict[str, float | str] = {"clean_mean": clean, "corrupt_mean": corrupt}
        details: list[str] = [f"mean logit difference: clean {clean:.4f}, corrupt {corrupt:.4f} nats"]
        passed, line, value = True, "", None
        if self.components():
            result = pair_result(m, self.request())
            patched = result.patched[0]
            if patched is None:
                raise CheckInputError("the named components are outside this model or its prompts")
            value = self.normalise(float(patched.mean()), clean, corrupt)
            what = self.describe()
            passed, line = self.within(f"{self.direction} {self.effect} effect of {what}", value)
            per_pair = self.per_pair(patched, base)
            details.append(spread_line("per pair", per_pair) if len(per_pair) else "no pair has a usable gap")
            measured |= {"effect": value, "patched_mean": float(patched.mean())}
            other_effect = "direct" if self.effect == "total" else "total"
            other = m.extras.get(self.request(other_effect))
            if isinstance(other, PairResult) and other.patched and other.patched[0] is not None:
                other_value = self.normalise(float(other.patched[0].mean()), clean, corrupt)
                total, direct = (value, other_value) if self.effect == "total" else (other_value, value)
                details.append(f"side by side: total {total:.4f}, direct {direct:.4f}")
                measured[f"{other_effect}_effect"] = other_value
            if self.control is not None:
                ok, control_line, control_measured = self._control(m, value, clean, corrupt)
                passed = passed and ok
                details.append(control_line)
                measured |= control_measured
                if not ok and self.at_least is None and self.at_most is None:
                    line = f"{self.direction} {self.effect} effect of {what} = {value:.4f}; {control_line}"
        if self.top is not None:
            ok, top_line, top_measured, top_heads = self._top(m, clean, corrupt)
            measured |= top_measured
            if not ok:
                line = f"{line}; {top_line}" if line and not passed else top_line
            elif not line:
                line = top_line
            else:
                details.insert(0, top_line)
            passed = passed and ok
            if value is None:
                return Outcome(passed, line, tuple(details), measured, tuple(top_heads), value=" ".join(top_heads))
        return Outcome(passed, line, tuple(details), measured, tuple(self.heads or ()), value=value)

    def own_figures(self, context: CheckContext, out_dir: Path) -> list[tuple[str, str]]:
        """With ``top``: the layers x heads map of single-head effects (this direction and effect)."""
        if self.top is None:
            return []
        from interp_assert.figures import heatmaps

        base = pair_result(context.measurements, PairRequest())
        clean, corrupt = float(base.clean.mean()), float(base.corrupt.mean())
        if abs(clean - corrupt) < MIN_GAP:
            return []
        effects = self.single_head_effects(context, clean, corrupt)
        outcome = self.check(context)
        wanted = self.top.include or self.top.equals or []
        file = f"patching-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}.png"
        title = f"{self.name}: single-head {self.direction} {self.effect} effects (normalised)"
        failed = [] if outcome.passed else [name for name in wanted if name not in outcome.heads]
        heatmaps.effect_heatmap(out_dir / file, effects, title, named=wanted, failed=failed)
        return [(file, f"{self.name}: every head patched alone, {self.direction}, {self.effect} effect")]

    def normalise(self, patched: float, clean: float, corrupt: float) -> float:
        reference = corrupt if self.direction == "denoise" else clean
        return (patched - reference) / (clean - corrupt)

    def per_pair(self, patched: np.ndarray, base: PairResult) -> np.ndarray:
        gaps = base.clean - base.corrupt
        usable = np.abs(gaps) >= MIN_GAP
        reference = base.corrupt if self.direction == "denoise" else base.clean
        recovered: np.ndarray = ((patched - reference) / np.where(usable, gaps, 1.0))[usable]
        return recovered

    def describe(self) -> str:
        parts = list(self.heads or [])
        if self.positions is not None:
            parts = [f"{', '.join(parts)} at positions {self.positions}"]
        parts += [f"resid L{site.layer}@{site.position}" for site in self.resid or []]
        parts += [f"MLP L{layer}" for layer in self.mlp or []]
        return ", ".join(parts)

    def single_head_effects(self, m: CheckContext | object, clean: float, corrupt: float) -> np.ndarray:
        measurements = m.measurements if isinstance(m, CheckContext) else m
        result = pair_result(measurements, self.request())  # type: ignore[arg-type]
        if result.heads is None:
            raise CheckInputError("the single-head sweep was not captured for this prompt set")
        baseline = corrupt if self.direction == "denoise" else clean
        recovered: np.ndarray = (result.heads.mean(axis=-1) - baseline) / (clean - corrupt)
        return recovered

    def _top(self, m: object, clean: float, corrupt: float) -> tuple[bool, str, dict[str, float | str], list[str]]:
        assert self.top is not None
        effects = self.single_head_effects(m, clean, corrupt)
        ranked = ranked_heads(effects, self.direction)
        total = effects.size
        if self.top.k > total:
            raise CheckInputError(f"k is {self.top.k} but this model has only {total} heads; k must be 1 to {total}")
        wanted = self.top.include or self.top.equals or []
        for name in wanted:
            head_index(name, m)  # type: ignore[arg-type]
        top = [name for name, _ in ranked[: self.top.k]]
        values = dict(ranked)
        order = [name for name, _ in ranked]
        missing = [name for name in wanted if name not in top]
        passed = not missing if self.top.include else set(top) == set(wanted)
        relation = "include" if self.top.include else "equal"
        shown = ", ".join(f"{name} {value:+.4f}" for name, value in ranked[: max(self.top.k, TOP_SHOWN)])
        what = f"top {self.top.k} single-head {self.direction} {self.effect} effects"
        if passed:
            line = f"{what} {relation} {', '.join(wanted)} ({shown})"
        else:
            lost = ", ".join(f"{n} {values[n]:+.4f} (rank {order.index(n) + 1})" for n in missing)
            line = f"{what} do not {relation} the expected set; missing: {lost}; top: {shown}"
            extra = [n for n in top if n not in wanted]
            if self.top.equals and extra:
                line += f"; unexpected: {', '.join(extra)}"
        measured: dict[str, float | str] = {f"top{self.top.k}": ",".join(top), "top_effect": ranked[0][1]}
        return passed, line, measured, top

    def _control(
        self, m: object, value: float, clean: float, corrupt: float
    ) -> tuple[bool, str, dict[str, float | str]]:
        assert self.control is not None
        found = pair_result(m, self.request())  # type: ignore[arg-type]
        if found.control_problem:
            raise CheckInputError(f"no random control: {found.control_problem}")
        effects = [self.normalise(float(s.mean()), clean, corrupt) for s in found.control_patched]
        sign = 1.0 if self.direction == "denoise" else -1.0
        control_mean = float(np.mean(effects))
        signed, signed_control = sign * value, sign * control_mean
        times = signed / signed_control if signed_control > 0 else float("inf") if signed > 0 else float("nan")
        line = (
            f"random control ({len(effects)} sets from the same layers, seed {self.control.seed}): mean effect "
            f"{control_mean:+.4f}; the named heads' effect is {times:.3g}x that ("
            + "; ".join(
                f"{' '.join(head_name(*h) for h in heads)} {e:+.4f}"
                for heads, e in zip(found.control_sets, effects, strict=True)
            )
            + ")"
        )
        wanted = self.control.at_least_times
        ok = wanted is None or (signed > 0 and (signed_control <= 0 or signed >= wanted * signed_control))
        if not ok:
            line = f"{line}; expected at least {wanted:g}x"
        return ok, line, {"control_mean_effect": control_mean, "times_control": times}


def ranked_heads(effects: np.ndarray, direction: str) -> list[tuple[str, float]]:
    """Heads by single-head effect, the strongest first: highest for denoise, lowest for noise."""
    flat = effects.ravel()
    order = np.argsort(-flat if direction == "denoise" else flat, kind="stable")
    n_heads = effects.shape[1]
    return [(head_name(int(i) // n_heads, int(i) % n_heads), float(flat[i])) for i in order]


def _check_positions(expectation: Patching, result: PairResult) -> None:
    shortest = min(result.lengths)
    wanted = list(expectation.positions or []) + [site.position for site in expectation.resid or []]
    for position in wanted:
        if not -shortest <= position < shortest:
            raise CheckInputError(
                f"position {position} is out of range: the shortest prompt of this set is {shortest} tokens "
                f"(positions {-shortest} to {shortest - 1})"
            )


# ---- what discover writes ----

SCREENED = 8  # heads per direction whose exact total effect discover measures (attribution's top)
SMALLEST_EFFECT = 0.05  # a normalised single-head effect smaller than this is not written as a finding


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties broken by order; enough for continuous effects)."""
    ranks_a = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    ranks_b = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return float("nan")
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def findings(
    prompt_name: str,
    base: PairResult,
    direction: str,
    attribution: np.ndarray,
    direct: np.ndarray,
    exact: dict[tuple[int, int], float],
    joint_effect: Callable[[tuple[tuple[int, int], ...]], float],
    settings: DiscoverSettings,
    used_names: set[str],
) -> Section:
    """One direction's patching findings from normalised effects: ``attribution[L, H]`` (the
    screen), ``direct[L, H]`` (closed form, every head) and ``exact`` total effects of the
    screened heads; ``joint_effect`` measures a head set patched together (exactly). Writes the
    largest-direct-effect heads and the strongest screened heads' joint patch."""
    sign = 1.0 if direction == "denoise" else -1.0
    section = Section(f"patching, {direction} ({prompt_name}; normalised by clean - corrupt)")
    heads = sorted(exact)
    exact_values = np.array([exact[h] for h in heads])
    screen = np.array([attribution[h] for h in heads])
    rho = rank_correlation(screen, exact_values)
    section.notes.append(
        f"attribution vs exact total effect over the {len(heads)} screened heads: rank correlation {rho:.3f}"
    )
    attribution_order = [head for head, _ in ranked_heads(attribution, direction)]
    strong = [h for h in heads if sign * exact[h] >= SMALLEST_EFFECT]
    missed = [h for h in strong if attribution_order.index(head_name(*h)) >= SCREENED]
    if missed:
        section.notes.append(
            "attribution missed (exact effect large, attribution rank beyond its top "
            f"{SCREENED}): " + ", ".join(f"{head_name(*h)} {exact[h]:+.3f}" for h in missed)
        )
    ranked_direct = ranked_heads(direct, direction)
    top = [name for name, value in ranked_direct[:3] if sign * value >= SMALLEST_EFFECT]
    if top:
        k = len(top)
        following = ranked_direct[k][1] if k < len(ranked_direct) else float("nan")
        if abs(ranked_direct[k - 1][1] - following) >= settings.tie_gap:
            section.expectations.append(
                {
                    "name": unique_name(f"largest_direct_effect_{direction}", prompt_name, used_names),
                    "description": "single-head direct effects (closed form): "
                    + ", ".join(f"{n} {v:+.4f}" for n, v in ranked_direct[: k + 2]),
                    "property": "patching",
                    "prompts": prompt_name,
                    "direction": direction,
                    "effect": "direct",
                    "top": {"k": k, "include": top},
                }
            )
        else:
            section.notes.append(f"no top set: rank {k} and {k + 1} direct effects are within {settings.tie_gap:g}")
    if not strong:
        section.notes.append(f"no screened head moves the logit difference by {SMALLEST_EFFECT:g} or more: no finding")
        return section
    chosen = sorted(strong, key=lambda h: -sign * exact[h])[:3]
    names = [head_name(*h) for h in chosen]
    measured = joint_effect(tuple(chosen))
    expectation: dict[str, Any] = {
        "name": unique_name(f"{direction}_{'_'.join(n.lower() for n in names)}", prompt_name, used_names),
        "description": "single-head total effects (exact): "
        + ", ".join(f"{head_name(*h)} {exact[h]:+.4f}" for h in chosen)
        + f"; patched together: {measured:+.4f}",
        "property": "patching",
        "prompts": prompt_name,
        "heads": names,
        "direction": direction,
        "effect": "total",
    }
    if direction == "denoise":
        expectation["at_least"] = lower_bound(measured, settings.keep)
    else:
        expectation["at_most"] = -lower_bound(-measured, settings.keep)
    section.expectations.append(expectation)
    return section


def logit_diff_findings(prompt_name: str, base: PairResult, settings: DiscoverSettings, used: set[str]) -> Section:
    section = Section(f"logit difference ({prompt_name}; nats)")
    mean = float(base.clean.mean())
    below = float((base.clean < 0).mean())
    expectation: dict[str, Any] = {
        "name": unique_name("logit_diff", prompt_name, used),
        "description": f"mean {mean:.4f} over {len(base.clean)} pairs, smallest {float(base.clean.min()):.4f}, "
        f"{int((base.clean < 0).sum())} below 0; corrupt prompts {float(base.corrupt.mean()):.4f}",
        "property": "logit_diff",
        "prompts": prompt_name,
        "below_zero_at_most": round(below, 4),
    }
    if mean > 0:
        expectation["at_least"] = lower_bound(mean, settings.keep)
    section.expectations.append(expectation)
    return section
