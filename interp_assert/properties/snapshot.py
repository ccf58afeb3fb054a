"""``snapshot``: the model's numeric fingerprint on one prompt set matches the stored one.

The fingerprint (every head's role scores and label, per-layer attention statistics, hidden
norms) is built by :mod:`interp_assert.drift.fingerprint`; storage and comparison with the stored
copy are :mod:`interp_assert.drift.snapshot`'s. In an audit the property compares the checkpoint's
fingerprint with the base model's instead (:meth:`Snapshot.audit_drift`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import CheckContext, Expectation, ModelDrift
from interp_assert.strict import Strict
from interp_assert.vocab import POSITIONAL_LABELS, Role

if TYPE_CHECKING:
    from interp_assert.drift import fingerprint as fp_types

OptInPart = Literal["loss", "layer_ablation", "logit_lens", "massive_activation", "sink_rate"]
ToleranceQuantity = Literal["role_scores", "layer_stats", "hidden_norms", OptInPart]
SnapshotPart = Literal["role_scores", "role_labels", "layer_stats", "hidden_norms", OptInPart]
# covered unless ``covers`` says otherwise; the opt-in parts came later and would break older snapshots
SNAPSHOT_PARTS: tuple[SnapshotPart, ...] = ("role_scores", "role_labels", "layer_stats", "hidden_norms")
SNAPSHOT_ROLES: tuple[Role, ...] = ("previous_token", "first_token", "self", "focus", "breadth")


class ToleranceSpec(Strict):
    """Allowed change of a snapshot value: ``|new - old| <= atol + rtol * |old|``."""

    rtol: float = Field(default=0.0, ge=0.0)
    atol: float = Field(default=0.0, ge=0.0)


class Snapshot(Expectation):
    """A syrupy snapshot of the model's numeric fingerprint on one prompt set."""

    property: Literal["snapshot"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        (
            "`covers` (default `role_scores`, `role_labels`, `layer_stats`, `hidden_norms`; also `loss`, "
            "`layer_ablation`, `logit_lens`, `massive_activation`, `sink_rate` when listed), `roles` (default "
            "previous_token, first_token, self, focus, breadth), `tolerance`"
        ),
        "the fingerprint matches the stored snapshot within tolerance (see Snapshots)",
    )
    covers: list[SnapshotPart] = Field(default_factory=lambda: list(SNAPSHOT_PARTS), min_length=1)
    roles: list[Role] = Field(default_factory=lambda: list(SNAPSHOT_ROLES), min_length=1)
    tolerance: dict[ToleranceQuantity, ToleranceSpec] = Field(default_factory=dict)

    edit_hint: ClassVar[bool] = False

    @model_validator(mode="after")
    def _unique(self) -> Snapshot:
        for key in ("covers", "roles"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ValueError(f"{key} lists a value twice")
        return self

    def requirements(self) -> CaptureRequest:
        roles: set[Role] = set()
        if "role_scores" in self.covers:
            roles |= set(self.roles)
        if "role_labels" in self.covers:
            roles |= {*POSITIONAL_LABELS, "focus"}
        if "layer_stats" in self.covers:
            roles |= {"focus", "breadth"}
        if "sink_rate" in self.covers:
            roles.add("first_token")
        return CaptureRequest(
            roles=frozenset(roles),
            attention_stats="layer_stats" in self.covers,
            hidden_norms="hidden_norms" in self.covers,
            losses="loss" in self.covers,
            layer_ablations="layer_ablation" in self.covers,
            logit_lens="logit_lens" in self.covers,
            activation_peaks="massive_activation" in self.covers,
        )

    def fingerprint(self, context: CheckContext) -> fp_types.Fingerprint:
        from interp_assert.drift import fingerprint as fp

        environment = dict(context.environment) | {"prompts": self.prompts}
        return fp.build(context.measurements, tuple(self.covers), tuple(self.roles), environment)

    def tolerances(self, context: CheckContext) -> tuple[dict[str, fp_types.Tolerance], set[str]]:
        """Effective tolerances (defaults, then the spec's, then this expectation's) and the
        quantities the spec set explicitly."""
        from interp_assert.drift import fingerprint as fp

        given = dict(context.snapshot_tolerance) | self.tolerance
        tolerances = dict(fp.DEFAULT_TOLERANCES)
        for quantity, tolerance in given.items():
            tolerances[quantity] = fp.Tolerance(rtol=tolerance.rtol, atol=tolerance.atol)
        return tolerances, set(given)

    def check(self, context: CheckContext) -> Outcome:
        from interp_assert.drift import snapshot

        tolerances, explicit = self.tolerances(context)
        result = snapshot.check(
            context.spec_path,
            self.name,
            self.fingerprint(context),
            tolerances,
            explicit=explicit,
            update=context.update_snapshots,
        )
        moved = result.measured.get("values_moved")
        compared = result.measured.get("values_compared")
        return Outcome(
            result.passed,
            result.headline,
            result.details,
            result.measured,
            result.heads,
            result.notes,
            value=moved if isinstance(moved, int) else None,
            shown=f"{moved} of {compared} moved" if moved is not None else (result.action or ""),
            written=(result.action, result.file) if result.action else None,
        )

    def audit_drift(self, base: CheckContext, checkpoint: CheckContext) -> ModelDrift:
        from interp_assert.drift import fingerprint as fp
        from interp_assert.drift.snapshot import drift_report

        tolerances, _ = self.tolerances(base)
        before, after = self.fingerprint(base), self.fingerprint(checkpoint)
        drift = fp.compare(before, after, tolerances)
        if drift.within:
            headline = f"snapshot {self.name!r}: within tolerance"
            return ModelDrift(True, headline, (), drift.summary, before, after)
        headline, details, _ = drift_report(self.name, drift, [])
        return ModelDrift(False, headline, details[:-1], drift.summary, before, after)

    def own_figures(self, context: CheckContext, out_dir: Path) -> list[tuple[str, str]]:
        """Where the fingerprint moved from the stored snapshot: head scores beyond tolerance by
        layer and role, and the delta heatmap of the role that moved most."""
        import numpy as np

        from interp_assert.drift import snapshot
        from interp_assert.drift.drift_summary import beyond_by_layer, role_table
        from interp_assert.figures import diff_figures

        stored = snapshot.read(context.spec_path, self.name)
        if stored is None:
            return []
        current = self.fingerprint(context)
        tolerances, _ = self.tolerances(context)
        counts = beyond_by_layer(stored, current, tolerances["role_scores"].atol)
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
        file = f"snapshot-{slug}-drift.png"
        title = f"snapshot {self.name!r}: head scores beyond tolerance, by layer (this run vs stored)"
        diff_figures.drift_by_layer(out_dir / file, {k: np.array(v) for k, v in counts.items()}, title)
        figures = [(file, f"{self.name}: where the fingerprint moved")]
        tables = {role: (role_table(stored, role), role_table(current, role)) for role in counts}
        moved = {
            role: float(np.nansum(np.abs(np.array(after) - np.array(before))))
            for role, (before, after) in tables.items()
            if before is not None and after is not None and np.array(before).shape == np.array(after).shape
        }
        if moved:
            role = max(moved, key=moved.__getitem__)  # the role whose scores moved most in total
            before, after = tables[role]
            file = f"snapshot-{slug}-{role}-delta.png"
            title = f"{role}: this run - stored snapshot {self.name!r}"
            diff_figures.delta_heatmap(
                out_dir / file, np.array(before), np.array(after), title, difference="this run - stored"
            )
            figures.append((file, f"{self.name}: {role} change per head"))
        return figures
