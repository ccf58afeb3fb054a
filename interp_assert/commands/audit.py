"""``interp-assert audit SPEC --checkpoint PATH [--base PATH]``: which expectations hold on a
checkpoint, each one's headline value on base and checkpoint, and what moved, by layer and role."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from interp_assert.drift import fingerprint as fp
from interp_assert.errors import InterpAssertError, SpecError
from interp_assert.measure.loading.checkpoints import check_against_spec
from interp_assert.outcome import Outcome
from interp_assert.run_options import RunOptions
from interp_assert.runner import Runner
from interp_assert.spec import SpecFile, load_spec

MAX_CELL = 48


@dataclass(frozen=True)
class Side:
    """One expectation measured on one model."""

    passed: bool
    value: float | int | str | None
    shown: str
    headline: str
    error: str = ""  # the expectation could not be evaluated on this model
    heads: tuple[str, ...] = ()  # the heads the outcome is about, most relevant first


@dataclass(frozen=True)
class AuditRow:
    name: str
    kind: str  # the expectation's property
    base: Side
    checkpoint: Side
    bound_low: float | None = None
    bound_high: float | None = None

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
class SnapshotDrift:
    name: str
    within: bool
    headline: str
    details: tuple[str, ...]
    summary: tuple[str, ...] = ()
    base: fp.Fingerprint | None = None
    checkpoint: fp.Fingerprint | None = None


@dataclass(frozen=True)
class Audit:
    spec: str
    base: str
    checkpoint: str
    rows: tuple[AuditRow, ...]
    drifts: tuple[SnapshotDrift, ...]
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
    rows, drifts = [], []
    for entry in spec.entries:
        expectation = entry.expectation
        assert expectation is not None
        moved = expectation.audit_drift(
            base_runner.context(spec, expectation.prompts), checkpoint_runner.context(spec, expectation.prompts)
        )
        if moved is not None:  # the property compares the two models itself (snapshot)
            drifts.append(
                SnapshotDrift(
                    entry.name, moved.within, moved.headline, moved.details, moved.summary, moved.before, moved.after
                )
            )
            side = Side(
                moved.within, None, "within tolerance" if moved.within else _moved(moved.headline), moved.headline
            )
            rows.append(AuditRow(entry.name, expectation.property, Side(True, None, "(reference)", ""), side))
            continue
        before = _side(base_runner, spec, entry)
        after = _side(checkpoint_runner, spec, entry)
        rows.append(
            AuditRow(
                entry.name,
                expectation.property,
                before,
                after,
                getattr(expectation, "at_least", None),
                getattr(expectation, "at_most", None),
            )
        )
    runners = {"base": base_runner, "checkpoint": checkpoint_runner}
    return Audit(spec_path, base or model, checkpoint, tuple(rows), tuple(drifts), tuple(notes), runners)


def _side(runner: Runner, spec: SpecFile, entry: Any) -> Side:
    try:
        outcome: Outcome = runner.evaluate(spec, entry)
    except InterpAssertError as exc:  # e.g. a head the checkpoint's architecture does not have
        message = str(exc).replace("\n", "; ")
        return Side(False, None, "error", message, error=message)
    return Side(outcome.passed, outcome.value, outcome.shown, outcome.headline, heads=outcome.heads)


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
    for drift in audit.drifts:
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
                "name": d.name,
                "within": d.within,
                "headline": d.headline,
                "details": list(d.details),
                "summary": list(d.summary),
            }
            for d in audit.drifts
        ],
    }
    return _finite(document)


def _side_json(side: Side) -> dict[str, Any]:
    return {"passed": side.passed, "value": side.value, "shown": side.shown, "headline": side.headline}


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if hasattr(value, "item"):  # numpy scalars
        return _finite(value.item())
    return value
