"""``sae_feature``: a sparse-autoencoder feature, found by its decoder direction, fires where it should.

Feature indices are not stable when an SAE is retrained, so a feature is named by a direction
stored in a safetensors file (``direction``, tensor ``key``): the latent whose decoder row has the
largest cosine with it is the feature, provided that cosine is at least ``match_at_least``
(``index`` is a hint, taken when its own cosine clears the bar). Then, over the tokens of
``prompts`` (those whose decoded text matches the regular expression ``tokens``, if given;
position 0 left out when ``skip_first``) the feature's ``statistic`` (``mean`` or ``max``
activation) is within bounds; over every token of the ``control`` prompt set it is at most
``control_at_most``; with ``top_k``, its mean activation over those tokens ranks among the
top k of all latents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, measured_extra
from interp_assert.properties.findings import DiscoverSettings, Section, lower_bound, round_outward, unique_name
from interp_assert.properties.representation import other_prompts, resolve_file, resolve_sae


@dataclass(frozen=True)
class SaeFeatureRequest:
    sae: str
    hook: str | None
    direction: str
    key: str
    hint: int | None
    match_at_least: float
    pattern: str | None
    skip_first: bool
    control: tuple[str, ...] = ()
    control_bos: str = "none"

    def run(self, loaded: Any, batches: list[Any]) -> dict[str, Any]:
        from interp_assert.errors import SaeLoadError
        from interp_assert.measure.features import sae_runs
        from interp_assert.properties.representation import load_direction

        try:
            sae = sae_runs.cached_sae(self.sae, self.hook)
            sae.check_model(loaded.model)
            stored = load_direction(self.direction, self.key, sae.d_in)
        except SaeLoadError as exc:
            return {"error": str(exc)}
        best, best_cos, hint, hint_cos = sae_runs.match(sae, stored, self.hint)
        latent = hint if hint >= 0 and hint_cos >= self.match_at_least else best
        found: dict[str, Any] = {
            "best": best,
            "best_cosine": best_cos,
            "hint_cosine": hint_cos,
            "latent": latent,
            "cosine": hint_cos if latent == hint else best_cos,
            "identity": dict(sae.identity),
        }
        if found["cosine"] < self.match_at_least:
            return found
        found["on"] = sae_runs.latent_stats(loaded, sae, batches, latent, self.pattern, self.skip_first)
        if self.control:
            other = sae_runs.batches_for(loaded, self.control, self.control_bos)
            found["control"] = sae_runs.latent_stats(loaded, sae, other, latent, None, self.skip_first)
        return found


class SaeFeature(Bounded):
    property: Literal["sae_feature"]
    reference: ClassVar[tuple[str, str]] = (
        "`sae`, `hook`, `direction: file.safetensors`, `key` (default: the name), `index` (a hint), "
        "`match_at_least` (0.9), `tokens: regex`, `statistic: mean\\|max` (mean), bounds, "
        "`control: prompt set`, `control_at_most`, `top_k`, `skip_first` (true)",
        "a latent whose decoder row has cosine >= match_at_least with the stored direction exists (the hint "
        "first); its mean or max activation over the prompt set's tokens matching `tokens` is within bounds; "
        "over the control set's tokens it is at most `control_at_most`; with `top_k` its mean there ranks "
        "among the top k latents (see Sparse autoencoders)",
    )
    sae: str
    hook: str | None = None
    direction: str
    key: str | None = None
    index: int | None = Field(default=None, ge=0)
    match_at_least: float = Field(default=0.9, gt=0.0, le=1.0)
    tokens: str | None = None
    statistic: Literal["mean", "max"] = "mean"
    control: str | None = None
    control_at_most: float | None = None
    top_k: int | None = Field(default=None, ge=1)
    skip_first: bool = True

    unit_bounds: ClassVar[bool] = False
    bounds_required: ClassVar[bool] = False
    _control_texts: tuple[tuple[str, ...], str] = PrivateAttr(default=((), "none"))

    @field_validator("sae")
    @classmethod
    def _sae(cls, value: str, info: ValidationInfo) -> str:
        return resolve_sae(value, info)

    @field_validator("direction")
    @classmethod
    def _direction(cls, value: str, info: ValidationInfo) -> str:
        return resolve_file(value, info)

    @field_validator("tokens")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        import re

        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"tokens: {value!r} is not a regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _complete(self, info: ValidationInfo) -> SaeFeature:
        if (self.control is None) != (self.control_at_most is None):
            raise ValueError("give 'control' (a prompt set) and 'control_at_most' together")
        if self.control is not None:
            self._control_texts = other_prompts(self.control, info, "control")
        return self

    def request(self) -> SaeFeatureRequest:
        texts, bos = self._control_texts
        return SaeFeatureRequest(
            self.sae, self.hook, self.direction, self.key or self.name, self.index, self.match_at_least,
            self.tokens, self.skip_first, texts, bos,
        )  # fmt: skip

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(extras=frozenset([self.request()]))

    def check(self, context: CheckContext) -> Outcome:
        found = measured_extra(context, self.request(), "this SAE feature")
        identity = found["identity"]
        hint = "" if self.index is None else f"; hint {self.index} has cosine {found['hint_cosine']:.4f}"
        matched = f"latent {found['latent']} matches the stored direction with cosine {found['cosine']:.4f}{hint}"
        measured: dict[str, float | str] = {
            "latent": float(found["latent"]),
            "cosine": float(found["cosine"]),
            **{f"sae_{k}": v for k, v in identity.items()},
        }
        if found["cosine"] < self.match_at_least:
            line = (
                f"feature not found in SAE {identity['hook']}: the closest decoder row, latent {found['best']}, has "
                f"cosine {found['best_cosine']:.4f}{hint}; expected at least {self.match_at_least:g}"
            )
            return Outcome(False, line, (), measured, value=float(found["best_cosine"]))
        on = found["on"]
        if on["rows"] == 0:
            where = f"matching {self.tokens!r}" if self.tokens else "after position 0"
            raise CheckInputError(f"no token of prompt set {self.prompts!r} is {where}: nothing to measure")
        value = float(on[self.statistic])
        where = f"tokens matching {self.tokens!r}" if self.tokens else "every token"
        passed, line = self.within(f"{self.statistic} activation of latent {found['latent']} on {where}", value)
        details = [matched, f"active on {on['fraction_active']:.2%} of {on['rows']} tokens; rank {on['rank']}"]
        measured |= {"mean": on["mean"], "max": on["max"], "rank": float(on["rank"])}
        if self.top_k is not None:
            ok = on["rank"] < self.top_k
            passed = passed and ok
            details.append(f"rank {on['rank']} by mean activation among {identity['shape'].split('x')[1]} latents; "
                           f"expected within the top {self.top_k}{'' if ok else ': FAILS'}")  # fmt: skip
        if self.control is not None:
            assert self.control_at_most is not None
            control = found["control"][self.statistic]
            ok = control <= self.control_at_most
            passed = passed and ok
            measured["control"] = control
            details.append(
                f"{self.statistic} on control set {self.control!r}: {control:.4f}, expected at most "
                f"{self.control_at_most:g}{'' if ok else f': over by {control - self.control_at_most:.4f}'}"
            )
        details.append(
            "top tokens: " + "; ".join(f"{before!r}[{token!r}] {v:.2f}" for v, before, token in on["top"][:5])
        )
        return Outcome(passed, line, tuple(details), measured, value=value)

    def own_figures(self, context: CheckContext, out_dir: Path) -> list[tuple[str, str]]:
        from interp_assert.figures import feature_figures

        found = context.measurements.extras.get(self.request())
        if not found or "on" not in found or not found["on"].get("top"):
            return []
        file = f"feature-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}.png"
        where = f"tokens matching {self.tokens!r}" if self.tokens else "every token"
        title = f"{self.name}: latent {found['latent']}, top activations on {self.prompts} ({where})"
        feature_figures.top_tokens(out_dir / file, found["on"]["top"], title)
        return [(file, f"{self.name}: where latent {found['latent']} fires most, token highlighted by activation")]

    def audit_figures(self, base: CheckContext, checkpoint: CheckContext, out_dir: Path) -> list[tuple[str, str]]:
        """The feature's activation on the prompts (and the control set), and its rank, on both models;
        then where it fires most on each, as highlighted text."""
        from interp_assert.figures import feature_figures
        from interp_assert.figures.representation_figures import Pair, paired_panels

        before, after = base.measurements.extras.get(self.request()), checkpoint.measurements.extras.get(self.request())
        if not before or not after or "on" not in before or "on" not in after:
            return []
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
        on_before, on_after = before["on"], after["on"]
        other = "max" if self.statistic == "mean" else "mean"
        pairs = [
            Pair(f"{self.statistic} on {self.prompts}", on_before[self.statistic], on_after[self.statistic],
                 self.at_least, self.at_most),
            Pair(f"{other} on {self.prompts}", on_before[other], on_after[other]),
            Pair("fraction active", on_before["fraction_active"], on_after["fraction_active"]),
        ]  # fmt: skip
        if self.control is not None and "control" in before and "control" in after:
            pairs.append(Pair(f"{self.statistic} on {self.control}", before["control"][self.statistic],
                              after["control"][self.statistic], None, self.control_at_most))  # fmt: skip
        top = None if self.top_k is None else float(self.top_k - 1)
        pairs.append(Pair("rank among latents", float(on_before["rank"]), float(on_after["rank"]), None, top))
        file = f"feature-{slug}-compare.png"
        where = f"tokens matching {self.tokens!r}" if self.tokens else "every token"
        title = f"{self.name}: latent {after['latent']} ({where})"
        paired_panels(out_dir / file, pairs, title)
        caption = "; ".join(f"{p.label} {p.base:.3f} -> {p.checkpoint:.3f}" for p in pairs)
        made = [(file, f"{self.name}: {caption}")]
        for side, found in (("base", before), ("checkpoint", after)):
            if found["on"].get("top"):
                name = f"feature-{slug}-{side}.png"
                feature_figures.top_tokens(
                    out_dir / name, found["on"]["top"], f"{self.name} on the {side}: latent {found['latent']}, "
                    f"top activations on {self.prompts}",
                )  # fmt: skip
                made.append((name, f"{self.name}: where latent {found['latent']} fires most on the {side}"))
        return made


# ---- what discover writes ----

CLEAR_RATIO = 10.0  # a clear feature's mean on its prompt set is at least this many times its mean on any other
FEATURES_PER_SET = 3


@dataclass(frozen=True)
class ClearFeature:
    prompts: str
    latent: int
    control: str  # the other prompt set where the latent fires most
    mean: float
    control_mean: float


def clearest(means: dict[str, Any], per_set: int = FEATURES_PER_SET) -> list[ClearFeature]:
    """Per prompt set, the latents that fire on it and (nearly) nowhere else: mean activation there
    above 0 and at least :data:`CLEAR_RATIO` times the mean on every other set, ranked by the
    difference; a latent is given to one set only. ``means``: set name -> ``[d_sae]`` array."""
    import numpy as np

    names = list(means)
    found: list[ClearFeature] = []
    taken: set[int] = set()
    for name in names:
        others = [other for other in names if other != name]
        if not others:
            break
        mine = np.asarray(means[name], dtype=np.float64)
        elsewhere = np.max([np.asarray(means[other], dtype=np.float64) for other in others], axis=0)
        clear = (mine > 0) & (elsewhere * CLEAR_RATIO <= mine)
        order = np.argsort(-(mine - elsewhere), kind="stable")
        for latent in [int(i) for i in order if clear[i] and int(i) not in taken][:per_set]:
            control = max(others, key=lambda other: float(means[other][latent]))
            found.append(ClearFeature(name, latent, control, float(mine[latent]), float(means[control][latent])))
            taken.add(latent)
    return found


def findings(
    features: list[ClearFeature], sae_written: str, direction_file: str, settings: DiscoverSettings, used: set[str]
) -> tuple[Section, dict[str, int]]:
    """``sae_feature`` expectations for :func:`clearest`'s features, and which latent each name
    stores (the decoder rows go into ``direction_file`` under the expectation's name). Bounds:
    ``at_least`` is ``keep`` x the measured mean; ``control_at_most`` the control's mean plus
    ``1 - keep`` of the gap."""
    section = Section(f"SAE features ({sae_written}; decoder rows in {direction_file})")
    stored: dict[str, int] = {}
    for feature in features:
        name = unique_name(f"{feature.prompts}_feature_{feature.latent}", feature.prompts, used)
        gap = feature.mean - feature.control_mean
        section.expectations.append(
            {
                "name": name,
                "description": (
                    f"latent {feature.latent}: mean {feature.mean:.4f} over the tokens of {feature.prompts!r}, "
                    f"{feature.control_mean:.4f} on {feature.control!r} (of the other prompt sets, where it "
                    f"fires most); clear: at least {CLEAR_RATIO:g}x more on its own set than on any other"
                ),
                "property": "sae_feature",
                "prompts": feature.prompts,
                "sae": sae_written,
                "direction": direction_file,
                "index": feature.latent,
                "statistic": "mean",
                "at_least": lower_bound(feature.mean, settings.keep),
                "control": feature.control,
                "control_at_most": round_outward(feature.control_mean + (1 - settings.keep) * gap, "up"),
            }
        )
        stored[name] = feature.latent
    return section, stored
