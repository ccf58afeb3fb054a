"""``interp-assert audit SPEC --checkpoint PATH [--base PATH]``: which expectations hold on a
checkpoint, each one's headline value on base and checkpoint, and what moved, by layer and role."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from interp_assert.errors import SpecError
from interp_assert.evaluation import Evaluation, json_safe
from interp_assert.measure.loading.checkpoints import check_against_spec
from interp_assert.outcome import Outcome
from interp_assert.properties.base import ModelDrift
from interp_assert.run_options import RunOptions
from interp_assert.runner import Runner
from interp_assert.spec import load_spec

MAX_CELL = 48


@dataclass(frozen=True)
class AuditRow:
    """One expectation on the base and on the checkpoint."""

    base: Evaluation
    checkpoint: Evaluation

    @property
    def name(self) -> str:
        return self.checkpoint.name

    @property
    def kind(self) -> str:
        return self.checkpoint.tag

    @property
    def bound_low(self) -> float | None:
        return self.checkpoint.bound_low

    @property
    def bound_high(self) -> float | None:
        return self.checkpoint.bound_high

    @property
    def passed(self) -> bool:
        return self.checkpoint.passed

    @property
    def change(self) -> float | None:
        before, after = self.base.value, self.checkpoint.value
        numeric = (float, int)
        if isinstance(before, numeric) and isinstance(after, numeric) and not isinstance(before, bool):
            if self.kind == "dominant_layer":
                return None  # a layer index is not a quantity
            return float(after) - float(before)
        return None


@dataclass(frozen=True)
class Audit:
    spec: str
    base: str
    checkpoint: str
    rows: tuple[AuditRow, ...]
    drifts: dict[str, ModelDrift]  # expectation name -> how the checkpoint moved (snapshot expectations)
    notes: tuple[str, ...] = ()
    runners: dict[str, Runner] = field(default_factory=dict, compare=False, repr=False)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)


def run_audit(
    spec_path: str,
    checkpoint: str,
    options: RunOptions | None = None,
    *,
    base: str | None = None,
    checkpoint_revision: str | None = None,
    base_runner: Runner | None = None,
) -> Audit:
    """Evaluate every expectation of ``spec_path`` on the base (the spec's model, or ``base``) and
    on ``checkpoint`` (a hub id at ``checkpoint_revision`` if given); ``options.overrides`` may
    also remap the base model an adapter names. ``base_runner`` (from an earlier audit of the same
    spec and base) keeps the base's measurements: several checkpoints, one base measurement."""
    options = options or RunOptions()
    spec = load_spec(spec_path)
    if spec.problems() or spec.header is None:
        raise SpecError(spec.problems())
    model = spec.header.model
    # a checkpoint of another shape is refused in one line, before hours of measuring the wrong thing
    check_against_spec(
        options.overrides.get(model, model),
        Path(spec.path).parent,
        options.revisions.get(model, spec.header.revision),
        [(checkpoint, checkpoint_revision, f"checkpoint {checkpoint!r}")],
        "audit a checkpoint of the same model",
        base=base,
    )
    base_options = options.replacing(model, base) if base else options
    base_runner = base_runner or Runner(base_options)
    checkpoint_runner = Runner(
        base_options.replacing(model, checkpoint).revising(model, checkpoint_revision), teacher=base_runner
    )
    notes = [
        f"prompt set {name!r} generates: the checkpoint is measured on the base's continuation (teacher-forced), "
        "so both models are compared on the same tokens; generated_text compares each model's own continuation"
        for name, prompt_set in spec.header.prompts.items()
        if prompt_set.generate
    ]
    for runner in (base_runner, checkpoint_runner):
        notes += [n for n in runner.model_for(spec).notes if n not in notes]
    rows: list[AuditRow] = []
    drifts: dict[str, ModelDrift] = {}
    for entry in spec.entries:
        expectation = entry.expectation
        assert expectation is not None
        moved = expectation.audit_drift(
            base_runner.context(spec, expectation.prompts), checkpoint_runner.context(spec, expectation.prompts)
        )
        if moved is None:
            rows.append(AuditRow(base_runner.evaluation(spec, entry), checkpoint_runner.evaluation(spec, entry)))
            continue
        # the property compares the two models itself (snapshot): the base is the reference
        drifts[entry.name] = moved
        shown = "within tolerance" if moved.within else _moved(moved.headline)
        reference = Evaluation(
            spec.path,
            entry.name,
            expectation.property,
            expectation.prompts,
            base_runner.identity(spec),
            Outcome(True, "", shown="(reference)"),
        )
        after = replace(
            reference,
            model=checkpoint_runner.identity(spec),
            outcome=Outcome(moved.within, moved.headline, shown=shown),
        )
        rows.append(AuditRow(reference, after))
    runners = {"base": base_runner, "checkpoint": checkpoint_runner}
    return Audit(spec_path, base or model, checkpoint, tuple(rows), drifts, tuple(notes), runners)


def _moved(headline: str) -> str:
    # "snapshot 'x' drifted: 12 of 1532 values moved beyond tolerance" -> "12 of 1532 moved"
    _, _, rest = headline.partition("drifted: ")
    return rest.replace(" values moved beyond tolerance", " moved") or headline


# ---- the table ----


def _cell(text: str, limit: int = MAX_CELL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_table(audit: Audit, out: TextIO) -> None:
    """The audit as a CI log shows it: every line within 120 columns (long values cut in the table,
    prose wrapped); the JSON and the report keep everything."""
    from interp_assert.commands.tracking import MAX_WIDTH, wrapped

    out.write(wrapped(f"audit of {audit.spec}: base {audit.base!r} vs checkpoint {audit.checkpoint!r}"))
    for note in audit.notes:  # one line each (a path in it stays whole, to be copied)
        out.write(f"note: {note}\n")
    out.write("\n")
    header = ("expectation", "result", "base", "checkpoint", "change")
    rows = []
    for row in audit.rows:
        verdict = ("pass" if row.passed else "FAIL") + ("" if row.base.passed else "*")
        change = f"{row.change:+.4f}" if row.change is not None and not math.isnan(row.change) else ""
        rows.append((row.name, verdict, row.base.shown, row.checkpoint.shown, change))
    fixed = max(len(line[0]) for line in [header, *rows]) + 8 + 10 + 2 * 2  # name, result, change, gaps
    limit = max(12, min(MAX_CELL, (MAX_WIDTH - fixed) // 2 - 2))
    body = [
        (name, verdict, _cell(base, limit), _cell(after, limit), change) for name, verdict, base, after, change in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    for line in [header, *body]:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n")
    if any(not row.base.passed for row in audit.rows):
        out.write("* fails on the base model too\n")
    for row in audit.rows:
        if not row.passed and row.base.headline:  # drift rows are explained below the table
            out.write("\n" + wrapped(f"{row.name}: {row.checkpoint.headline}"))
    for drift in audit.drifts.values():
        out.write("\n" + wrapped(f"{drift.headline} (checkpoint vs base)"))
        for detail in drift.details:
            out.write(wrapped(f"  {detail}"))
    held = sum(row.passed for row in audit.rows)
    out.write(f"\n{held} of {len(audit.rows)} expectations hold on the checkpoint\n")


# ---- JSON ----


def to_json(audit: Audit) -> dict[str, Any]:
    """The audit as plain JSON: NaN and infinities become ``null`` (JSON has neither)."""
    rows = []
    for row in audit.rows:
        rows.append(
            {
                "name": row.name,
                "property": row.kind,
                "passed": row.passed,
                "bound_low": row.bound_low,
                "bound_high": row.bound_high,
                "change": row.change,
                "base": _side_json(row.base),
                "checkpoint": _side_json(row.checkpoint),
            }
        )
    document = {
        "spec": audit.spec,
        "base": audit.base,
        "checkpoint": audit.checkpoint,
        "passed": audit.passed,
        "notes": list(audit.notes),
        "expectations": rows,
        "snapshots": [
            {
                "name": name,
                "within": d.within,
                "headline": d.headline,
                "details": list(d.details),
                "summary": list(d.summary),
            }
            for name, d in audit.drifts.items()
        ],
    }
    found: dict[str, Any] = json_safe(document)
    return found


def _side_json(side: Evaluation) -> dict[str, Any]:
    return {"passed": side.passed, "value": side.value, "shown": side.shown, "headline": side.headline}
