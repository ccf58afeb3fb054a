"""``sae_quality``: how well a sparse autoencoder reconstructs the model's activations on a prompt set.

``metric`` picks one number (see :mod:`interp_assert.measure.features.sae_runs` for the definitions):
``l0`` (active latents per token), ``explained_variance``, ``dead_fraction`` (latents never
active on the set) or ``ce_recovered`` (``(CE_zero - CE_sae) / (CE_zero - CE_clean)``, the
reconstruction spliced into the forward pass). Expectations on the same SAE, hook and prompt
set share one measurement. The SAE's identity (folder, format, weights sha256) is recorded with
the numbers. ``audit`` checks them on base and checkpoint: "does the base model's SAE still
reconstruct the fine-tune" is ``ce_recovered`` and ``explained_variance`` on the checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ValidationInfo, field_validator, model_validator

from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, measured_extra
from interp_assert.properties.findings import DiscoverSettings, Section, lower_bound, unique_name
from interp_assert.properties.representation import resolve_sae

Metric = Literal["l0", "explained_variance", "dead_fraction", "ce_recovered"]
UNIT_METRICS = ("dead_fraction",)


@dataclass(frozen=True)
class SaeQualityRequest:
    """Measure an SAE's reconstruction on the prompt set (one pass to read, two spliced passes)."""

    sae: str
    hook: str | None
    skip_first: bool

    def run(self, loaded: Any, batches: list[Any]) -> dict[str, Any]:
        from interp_assert.errors import SaeLoadError
        from interp_assert.measure.features import sae_runs

        try:
            sae = sae_runs.cached_sae(self.sae, self.hook)
            numbers = sae_runs.quality(loaded, sae, batches, self.skip_first)
        except SaeLoadError as exc:
            return {"error": str(exc)}
        return {**numbers, "identity": dict(sae.identity)}


class SaeQuality(Bounded):
    property: Literal["sae_quality"]
    reference: ClassVar[tuple[str, str]] = (
        "`sae: folder or owner/name@revision`, `hook` (default: the SAE's own), "
        "`metric: l0\\|explained_variance\\|dead_fraction\\|ce_recovered`, `skip_first` (true), bounds",
        "the SAE's metric on the prompt set's tokens (position 0 left out when `skip_first`) is within bounds: "
        "L0 = mean active latents per token; explained variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2; "
        "dead fraction = latents never active; CE recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), the "
        "reconstruction (or zeros) spliced in at the hook point (see Sparse autoencoders)",
    )
    sae: str
    hook: str | None = None
    metric: Metric
    skip_first: bool = True

    unit_bounds: ClassVar[bool] = False

    @field_validator("sae")
    @classmethod
    def _where(cls, value: str, info: ValidationInfo) -> str:
        return resolve_sae(value, info)

    @model_validator(mode="after")
    def _range(self) -> SaeQuality:
        for key in ("at_least", "at_most"):
            value = getattr(self, key)
            if value is None:
                continue
            if self.metric in UNIT_METRICS and not 0 <= value <= 1:
                raise ValueError(f"{key}: {value} is outside [0, 1], the range of {self.metric}")
            if self.metric == "l0" and value < 0:
                raise ValueError(f"{key}: {value} is negative; L0 counts latents")
        return self

    def request(self) -> SaeQualityRequest:
        return SaeQualityRequest(self.sae, self.hook, self.skip_first)

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(extras=frozenset([self.request()]))

    def check(self, context: CheckContext) -> Outcome:
        found = measured_extra(context, self.request(), "this SAE")
        value = float(found[self.metric])
        identity = found["identity"]
        passed, line = self.within(f"{self.metric} of SAE {identity['hook']} ({identity['shape']})", value)
        numbers = {k: found[k] for k in ("l0", "explained_variance", "dead_fraction", "ce_recovered")}
        details = (
            "L0 {l0:.2f}, explained variance {explained_variance:.4f}, dead {dead_fraction:.4f}, "
            "CE recovered {ce_recovered:.4f}".format(**numbers),
            f"CE clean {found['ce_clean']:.4f}, with SAE {found['ce_with_sae']:.4f}, zero-ablated "
            f"{found['ce_zero_ablated']:.4f} nats over {found['rows']} tokens",
            f"SAE {identity['path']} ({identity['format']}, {identity['activation']}, "
            f"sha256 {identity['sha256'][:16]})",
        )
        measured: dict[str, float | str] = {
            **{k: float(found[k]) for k in ("ce_clean", "ce_with_sae", "ce_zero_ablated")},
            **{k: float(v) for k, v in numbers.items()},
            **{f"sae_{k}": v for k, v in identity.items()},
        }
        return Outcome(passed, line, details, measured, value=value)

    def audit_figures(self, base: CheckContext, checkpoint: CheckContext, out_dir: Path) -> list[tuple[str, str]]:
        """The SAE's four numbers on both models (the bound drawn on this expectation's metric):
        does the base model's SAE still reconstruct the checkpoint."""
        from interp_assert.figures.representation_figures import Pair, paired_panels

        before, after = base.measurements.extras.get(self.request()), checkpoint.measurements.extras.get(self.request())
        if not before or not after or "error" in before or "error" in after:
            return []
        pairs = [
            Pair(metric, float(before[metric]), float(after[metric]),
                 self.at_least if metric == self.metric else None, self.at_most if metric == self.metric else None)
            for metric in ("ce_recovered", "explained_variance", "l0", "dead_fraction")
        ]  # fmt: skip
        file = f"sae-quality-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}.png"
        identity = after["identity"]
        paired_panels(
            out_dir / file, pairs, f"{self.name}: SAE {identity['hook']} ({identity['shape']}) on {self.prompts}"
        )
        caption = "; ".join(f"{p.label} {p.base:.3f} -> {p.checkpoint:.3f}" for p in pairs)
        return [(file, f"{self.name}: {caption}")]


# ---- what discover writes ----


def findings(
    prompt_name: str, sae: str, written_as: str, found: dict[str, Any], settings: DiscoverSettings, used: set[str]
) -> Section:
    """CE recovered and explained variance (bounds ``keep`` x measured) and L0 (within 0.5 of it)."""
    section = Section(f"SAE quality ({prompt_name}; {written_as})")
    if "error" in found:
        section.notes.append(f"the SAE could not be measured: {found['error']}")
        return section
    identity = found["identity"]
    numbers = (
        f"CE clean {found['ce_clean']:.4f}, with the SAE {found['ce_with_sae']:.4f}, zero-ablated "
        f"{found['ce_zero_ablated']:.4f} nats; sha256 {identity['sha256'][:16]}"
    )
    for metric in ("ce_recovered", "explained_variance", "l0"):
        value = float(found[metric])
        bounds: dict[str, Any]
        if metric == "l0":
            bounds = {"at_least": max(0.0, round(value - 0.5, 2)), "at_most": round(value + 0.5, 2)}
        elif value > 0:
            bounds = {"at_least": lower_bound(value, settings.keep)}
        else:
            section.notes.append(f"{metric} measured {value:.4f}: no lower bound written")
            continue
        section.expectations.append(
            {
                "name": unique_name(f"sae_{metric}", prompt_name, used),
                "description": f"measured {value:.4f} over {found['rows']} tokens ({numbers})",
                "property": "sae_quality",
                "prompts": prompt_name,
                "sae": written_as,
                "metric": metric,
                **bounds,
            }
        )
    return section
