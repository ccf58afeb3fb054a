"""``logit_lens``: when the model's answer becomes readable from its residual stream.

Each hidden-state index k is read through the final norm and unembedding (see
:mod:`interp_assert.measure.capture.lens`): ``agreement[k]`` is the fraction of positions whose top-1 token
already is the model's final top-1 token, ``kl[k]`` the mean KL(final || lens_k) in nats.
A spec states any of:

- ``agreement_at_least: x`` with ``by_index: k``: agreement reaches x by index k;
- ``first_reaching: x`` with ``within: [a, b]``: the first index whose agreement reaches x
  lies in [a, b];
- ``kl_non_increasing: [a, b]`` (``tolerance``, relative, default 0): KL never rises over a..b.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure.measurements import CaptureRequest, LogitLens
from interp_assert.outcome import Outcome
from interp_assert.properties.base import (
    CheckContext,
    Expectation,
    LayerRange,
    resolve_index,
    resolve_range,
    resolve_steps,
    single_index_problem,
)
from interp_assert.properties.findings import DiscoverSettings, Section, unique_name

AGREEMENT_LAYER_LEVEL = 0.5  # what discover calls the agreement layer


class LogitLensExpectation(Expectation):
    property: Literal["logit_lens"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        (
            "any of `agreement_at_least: x` + `by_index: k`; `first_reaching: x` + `within: [a, b]`; "
            "`kl_non_increasing: [a, b]` (`tolerance`, relative)"
        ),
        (
            "each hidden-state index k is read through the model's final norm and unembedding (the logit lens); "
            "`agreement[k]` is the fraction of query positions >= 1 whose top-1 token is the model's final top-1 "
            "token, `kl[k]` the mean KL(final \\|\\| lens_k) in nats (at the last index 1 and 0 by construction). "
            "Agreement reaches x by index k; the first index reaching x lies in [a, b]; KL never rises over a..b."
            " Costs one more forward pass and one unembedding per depth (1.7 s for SmolLM2's three prose prompts "
            "on 2 cores)"
        ),
    )
    agreement_at_least: float | None = Field(default=None, ge=0.0, le=1.0)
    by_index: int | None = None
    first_reaching: float | None = Field(default=None, gt=0.0, le=1.0)
    within: LayerRange | None = None
    kl_non_increasing: LayerRange | None = None
    tolerance: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _pairs(self) -> LogitLensExpectation:
        if (self.agreement_at_least is None) != (self.by_index is None):
            raise ValueError("'agreement_at_least' and 'by_index' go together")
        if (self.first_reaching is None) != (self.within is None):
            raise ValueError("'first_reaching' and 'within' go together")
        if self.agreement_at_least is None and self.first_reaching is None and self.kl_non_increasing is None:
            raise ValueError(
                "state something to check: agreement_at_least + by_index, first_reaching + within, "
                "or kl_non_increasing: [a, b]"
            )
        return self

    @field_validator("kl_non_increasing")
    @classmethod
    def _a_step(cls, bounds: list[int] | None) -> list[int] | None:
        problem = single_index_problem(bounds, "kl_non_increasing")
        if problem:
            raise ValueError(problem)
        return bounds

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(logit_lens=True)

    def check(self, context: CheckContext) -> Outcome:
        lens = context.measurements.logit_lens
        if lens is None:
            raise CheckInputError("the logit lens was not captured for this prompt set")
        count = len(lens.agreement)
        failures, said, shown = [], [], []  # shown: the numbers each check decided on (an audit row's cell)
        if self.agreement_at_least is not None and self.by_index is not None:
            k = resolve_index(self.by_index, count, "hidden-state index")
            value = float(lens.agreement[k])
            shown.append(f"agreement {value:.3f} at {k}")
            line = f"agreement at index {k} = {value:.4f}"
            if value < self.agreement_at_least:
                failures.append(f"{line}, expected at least {self.agreement_at_least:g}: short by "
                                f"{self.agreement_at_least - value:.4f}")  # fmt: skip
            said.append(line)
        if self.first_reaching is not None and self.within is not None:
            low, high = resolve_range(self.within, count, "hidden-state index")
            found = next((k for k in range(count) if lens.agreement[k] >= self.first_reaching), None)
            shown.append(f"{self.first_reaching:g} at {found}")
            line = f"agreement first reaches {self.first_reaching:g} at index {found}"
            if found is None or not low <= found <= high:
                failures.append(f"{line}, expected within [{low}, {high}]")
            said.append(line)
        if self.kl_non_increasing is not None:
            first, last = resolve_steps(self.kl_non_increasing, count, "hidden-state index", "kl_non_increasing")
            rises = [
                f"{k}->{k + 1}: {lens.kl[k]:.4g} -> {lens.kl[k + 1]:.4g}"
                for k in range(first, last)
                if lens.kl[k + 1] > lens.kl[k] * (1 + self.tolerance)
            ]
            steps = {k: _relative_step(float(lens.kl[k]), float(lens.kl[k + 1])) for k in range(first, last)}
            worst = max(steps, key=lambda k: steps[k])
            shown.append(f"KL {worst}->{worst + 1} {steps[worst]:+.2%}")
            line = f"KL non-increasing over indices {first}-{last} (tolerance {self.tolerance:g})"
            if rises:
                failures.append(f"KL rises over indices {first}-{last}: " + "; ".join(rises[:5]))
            said.append(line)
        by_index = "by index (agreement/KL): " + ", ".join(
            f"{k}:{lens.agreement[k]:.2f}/{lens.kl[k]:.3g}" for k in range(count)
        )
        first_half = next((k for k in range(count) if lens.agreement[k] >= 0.5), None)
        measured: dict[str, float | str] = {
            "first_index_agreement_0.5": first_half if first_half is not None else "none",
            "agreement_second_to_last": float(lens.agreement[-2]) if count > 1 else float("nan"),
        }
        headline: float | int | None = first_half  # the first index reaching 0.5, unless a depth is named
        if self.by_index is not None:
            headline = float(lens.agreement[resolve_index(self.by_index, count, "hidden-state index")])
        if self.kl_non_increasing is not None:
            measured["kl_largest_relative_step"] = steps[worst]
        cell = "; ".join(shown)
        if failures:
            return Outcome(False, "; ".join(failures), (by_index,), measured, value=headline, shown=cell)
        return Outcome(True, "; ".join(said), (by_index,), measured, value=headline, shown=cell)

    def own_figures(self, context: CheckContext, out_dir: Path) -> list[tuple[str, str]]:
        from interp_assert.figures import heatmaps

        lens = context.measurements.logit_lens
        if lens is None:
            return []
        count = len(lens.agreement)
        outcome = self.check(context)
        within = resolve_range(self.within, count, "hidden-state index") if self.within is not None else None
        kl_span = None
        if self.kl_non_increasing is not None:
            kl_span = resolve_steps(self.kl_non_increasing, count, "hidden-state index", "kl_non_increasing")
        level = self.first_reaching if self.first_reaching is not None else self.agreement_at_least
        if self.by_index is not None:
            at = resolve_index(self.by_index, count, "hidden-state index")
            within = within or (at, at)
        file = f"logit-lens-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}.png"
        title = f"{self.name}: logit lens by depth, prompts {self.prompts!r}"
        heatmaps.lens_plot(
            out_dir / file, lens.agreement, lens.kl, title, passed=outcome.passed, level=level, within=within,
            kl_span=kl_span,
        )  # fmt: skip
        return [(file, f"{self.name}: agreement and KL by depth")]


def _relative_step(before: float, after: float) -> float:
    """KL's change from one index to the next, relative to the first (a rise is positive)."""
    return (after - before) / before if before > 0 else (0.0 if after <= before else float("inf"))


# ---- what discover writes ----


def findings(prompt_name: str, lens: LogitLens, settings: DiscoverSettings, used_names: set[str]) -> Section:
    """The agreement layer: the first hidden-state index whose top-1 token agrees with the final
    prediction at half the positions, allowed to move by a tenth of the depth (at least 1)."""
    section = Section(f"logit lens ({prompt_name}; each depth read through the final norm and unembedding)")
    count = len(lens.agreement)
    found = next((k for k in range(count - 1) if lens.agreement[k] >= AGREEMENT_LAYER_LEVEL), None)
    if found is None:
        section.notes.append(
            f"agreement reaches {AGREEMENT_LAYER_LEVEL:g} only at the last index (second to last: "
            f"{lens.agreement[-2]:.3f}): the answer forms in the last block"
        )
        return section
    slack = max(1, round(0.1 * count))
    before = f", {lens.agreement[found - 1]:.3f} at index {found - 1}" if found > 0 else ""
    section.expectations.append(
        {
            "name": unique_name("agreement_layer", prompt_name, used_names),
            "description": f"agreement with the final prediction measured {lens.agreement[found]:.3f} at index "
            f"{found}{before}; KL there {lens.kl[found]:.3g} nats",
            "property": "logit_lens",
            "prompts": prompt_name,
            "first_reaching": AGREEMENT_LAYER_LEVEL,
            "within": [max(0, found - slack), min(count - 1, found + slack)],
        }
    )
    return section
