"""``probe``: a difference-in-means direction separates two labelled prompt sets, and is causal.

The vectors are the residual stream leaving block ``layer`` at token ``position`` (-1: the last
token) of each prompt of ``prompts`` (the positive class) and ``negative`` (the other class).
Each class is split by a seeded permutation into a part to fit and a held-out part (``holdout``
of it); the direction is ``mean(positive) - mean(negative)`` over the fitting parts and
(see :mod:`interp_assert.measure.probe_math`):

- ``at_least`` / ``at_most`` bound the held-out AUROC;
- ``selectivity_at_least``: held-out AUROC minus the mean held-out AUROC of ``controls``
  control tasks (the same vectors with seeded shuffled labels, Hewitt & Liang 2019);
- ``direction`` (a safetensors file, tensor ``key``) with ``cosine_at_least``: the cosine
  between the stored direction and the one fitted on every prompt, so a checkpoint that rotates
  the representation is caught (``interp-assert probe save`` writes the file);
- ``causal``: adding ``alpha`` times the direction (fitted on every prompt, unnormalised) to the
  residual stream at that layer, at every position of the negative prompts, moves the mean logit
  difference ``logit(answers[0]) - logit(answers[1])`` at the last token by at least
  ``at_least``, while ``samples`` random directions of the same norm move it by at most
  ``random_at_most`` in absolute value (see :mod:`interp_assert.measure.features.probes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.measure.probe_math import balance_problem, cosine
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, measured_extra
from interp_assert.properties.representation import load_direction, other_prompts, resolve_file
from interp_assert.strict import Strict


class CausalCheck(Strict):
    answers: list[str] = Field(min_length=2, max_length=2)
    alpha: float = 1.0
    at_least: float
    random_at_most: float = Field(gt=0.0)
    samples: int = Field(default=3, ge=1, le=20)
    seed: int = Field(default=0, ge=0)


@dataclass(frozen=True)
class ProbeRequest:
    negative: tuple[str, ...]
    bos: str
    layer: int
    position: int
    holdout: float
    seed: int
    controls: int
    causal: tuple[tuple[str, str], float, int, int] | None  # answers, alpha, samples, seed

    def run(self, loaded: Any, batches: list[Any]) -> dict[str, Any]:
        from interp_assert.measure.features import probes, sae_runs

        negative = sae_runs.batches_for(loaded, self.negative, self.bos)
        try:
            numbers, direction, by_block = probes.measure(
                loaded, batches, negative, layer=self.layer, position=self.position, holdout=self.holdout,
                seed=self.seed, controls=self.controls,
            )  # fmt: skip
            found: dict[str, Any] = {**numbers, "direction": direction, "auroc_by_block": tuple(by_block)}
            if self.causal is not None:
                answers, alpha, samples, seed = self.causal
                found["causal"] = probes.causal(loaded, negative, direction, self.layer, answers, alpha, samples, seed)
        except CheckInputError as exc:
            return {"error": str(exc)}
        return found


class Probe(Bounded):
    property: Literal["probe"]
    reference: ClassVar[tuple[str, str]] = (
        "`negative: prompt set`, `layer`, `position` (-1), `holdout` (0.5), `seed` (0), `controls` (5), "
        "bounds (held-out AUROC), `selectivity_at_least`, `direction: file.safetensors`, `key` (default: the "
        "name), `cosine_at_least`, `causal: {answers: [a, b], alpha (1), at_least, random_at_most, samples (3), "
        "seed (0)}`",
        "a difference-in-means direction at the residual stream leaving block `layer`, at token `position`, "
        "fitted on part of `prompts` (positive) and `negative`: its held-out AUROC is within bounds; AUROC minus "
        "the label-shuffled control's is at least `selectivity_at_least`; its cosine to the stored direction "
        "is at least `cosine_at_least`; adding alpha x direction moves the answers' logit difference by at "
        "least `causal.at_least` and random directions of the same norm by at most `random_at_most` "
        "(see Linear probes)",
    )
    negative: str
    layer: int = Field(ge=0)
    position: int = -1
    holdout: float = Field(default=0.5, gt=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0)
    controls: int = Field(default=5, ge=1, le=100)
    selectivity_at_least: float | None = Field(default=None, ge=-1.0, le=1.0)
    direction: str | None = None
    key: str | None = None
    cosine_at_least: float | None = Field(default=None, ge=-1.0, le=1.0)
    causal: CausalCheck | None = None

    bounds_required: ClassVar[bool] = False
    _negative_texts: tuple[tuple[str, ...], str] = PrivateAttr(default=((), "none"))

    @field_validator("direction")
    @classmethod
    def _direction(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_file(value, info)

    @model_validator(mode="after")
    def _complete(self, info: ValidationInfo) -> Probe:
        if (self.direction is None) != (self.cosine_at_least is None):
            raise ValueError("give 'direction' (a safetensors file) and 'cosine_at_least' together")
        stated = (self.at_least, self.at_most, self.selectivity_at_least, self.cosine_at_least, self.causal)
        if all(x is None for x in stated):
            raise ValueError("state something to check: AUROC bounds, selectivity_at_least, cosine_at_least or causal")
        if self.negative == self.prompts:
            raise ValueError(f"negative is the same prompt set as prompts ({self.prompts!r}): a probe needs two")
        self._negative_texts = other_prompts(self.negative, info, "negative")
        context = getattr(info, "context", None) or {}
        positive = (context.get("prompt_sets") or {}).get(self.prompts)
        if positive is not None and positive.texts is not None:
            problem = balance_problem(len(positive.texts), len(self._negative_texts[0]), self.holdout)
            if problem:
                raise ValueError(f"{problem} (prompts {self.prompts!r}, negative {self.negative!r})")
        return self

    def request(self) -> ProbeRequest:
        texts, bos = self._negative_texts
        causal = self.causal
        return ProbeRequest(
            texts, bos, self.layer, self.position, self.holdout, self.seed, self.controls,
            None if causal is None else ((causal.answers[0], causal.answers[1]), causal.alpha, causal.samples,
                                         causal.seed),
        )  # fmt: skip

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(extras=frozenset([self.request()]))

    def check(self, context: CheckContext) -> Outcome:
        found = measured_extra(context, self.request(), "this probe")
        auroc = float(found["auroc"])
        where = f"block {self.layer} output, position {self.position}"
        passed, line = self.within(f"held-out AUROC of the {self.prompts}/{self.negative} probe ({where})", auroc)
        details = [
            f"fitted on {found['fit']:.0f} prompts, {found['held_out']:.0f} held out; AUROC on all prompts "
            f"{found['auroc_all']:.4f}; control (shuffled labels, {self.controls} seeds) {found['control_auroc']:.4f}"
        ]
        measured: dict[str, float | str] = {
            k: float(found[k]) for k in ("auroc", "auroc_all", "control_auroc", "selectivity")
        }
        if self.selectivity_at_least is not None:
            ok = found["selectivity"] >= self.selectivity_at_least
            passed = passed and ok
            details.append(self._bound_line("selectivity", found["selectivity"], self.selectivity_at_least, ok))
        if self.direction is not None and self.cosine_at_least is not None:
            stored = load_direction(self.direction, self.key or self.name, len(found["direction"]))
            value = cosine(found["direction"], stored)
            ok = value >= self.cosine_at_least
            passed = passed and ok
            measured["cosine"] = value
            details.append(self._bound_line("cosine to the stored direction", value, self.cosine_at_least, ok))
        if self.causal is not None:
            ok, text, numbers = self._causal(found["causal"])
            passed = passed and ok
            details.append(text)
            measured |= numbers
        curve = tuple(found["auroc_by_block"])
        if curve:  # the block the probe reads, as an index into its curve (a report marks it)
            measured["block"] = float(self.layer + len(curve) if self.layer < 0 else self.layer)
        return Outcome(passed, line, tuple(details), measured, value=auroc, series=curve)

    @staticmethod
    def _bound_line(what: str, value: float, low: float, ok: bool) -> str:
        verdict = f"margin {value - low:.4f}" if ok else f"short by {low - value:.4f}"
        return f"{what} = {value:.4f}, expected at least {low:g} ({verdict})"

    def _causal(self, found: dict[str, Any]) -> tuple[bool, str, dict[str, float | str]]:
        assert self.causal is not None
        c = self.causal
        shift, randoms = float(found["shift"]), [float(r) for r in found["random_shifts"]]
        worst = max(abs(r) for r in randoms)
        ok_shift, ok_random = shift >= c.at_least, worst <= c.random_at_most
        text = (
            f"causal: adding {c.alpha:g} x direction (norm {found['direction_norm']:.2f}) moves "
            f"logit({c.answers[0]!r}) - logit({c.answers[1]!r}) from {found['clean_logit_diff']:.4f} to "
            f"{found['steered_logit_diff']:.4f} ({shift:+.4f}; expected at least {c.at_least:g}"
            f"{'' if ok_shift else ': FAILS'}); {c.samples} random directions of the same norm: "
            f"{', '.join(f'{r:+.4f}' for r in randoms)} (expected |shift| at most {c.random_at_most:g}"
            f"{'' if ok_random else ': FAILS'})"
        )
        return ok_shift and ok_random, text, {"causal_shift": shift, "random_shift_max": worst}

    def audit_figures(self, base: CheckContext, checkpoint: CheckContext, out_dir: Path) -> list[tuple[str, str]]:
        """Held-out AUROC, selectivity, cosine to the stored direction and the causal shift on both
        models; the caption adds the cosine between the two models' fitted directions."""
        from interp_assert.figures.representation_figures import Pair, paired_panels

        before, after = base.measurements.extras.get(self.request()), checkpoint.measurements.extras.get(self.request())
        if not before or not after or "error" in before or "error" in after:
            return []
        pairs = [Pair("held-out AUROC", before["auroc"], after["auroc"], self.at_least, self.at_most)]
        pairs.append(Pair("selectivity", before["selectivity"], after["selectivity"], self.selectivity_at_least))
        if self.direction is not None:
            stored = load_direction(self.direction, self.key or self.name, len(before["direction"]))
            pairs.append(
                Pair(
                    "cosine to stored direction", cosine(before["direction"], stored),
                    cosine(after["direction"], stored), self.cosine_at_least,
                )
            )  # fmt: skip
        if self.causal is not None and "causal" in before and "causal" in after:
            pairs.append(Pair("causal shift (nats)", before["causal"]["shift"], after["causal"]["shift"],
                              self.causal.at_least))  # fmt: skip
            worst = [max(abs(r) for r in side["causal"]["random_shifts"]) for side in (before, after)]
            pairs.append(Pair("random |shift| (nats)", worst[0], worst[1], None, self.causal.random_at_most))
        between = cosine(before["direction"], after["direction"]) if len(before["direction"]) == len(
            after["direction"]
        ) else float("nan")  # fmt: skip
        file = f"probe-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}.png"
        title = (
            f"{self.name}: probe at block {self.layer} output, position {self.position}; cosine between the base's "
            f"and the checkpoint's directions {between:.3f}"
        )
        paired_panels(out_dir / file, pairs, title)
        caption = (
            "; ".join(f"{p.label} {p.base:.3f} -> {p.checkpoint:.3f}" for p in pairs)
            + f"; the two models' directions have cosine {between:.3f}"
        )
        return [(file, f"{self.name}: {caption}")]
