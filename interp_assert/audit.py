"""``interp-assert audit SPEC --checkpoint PATH``: which expectations hold on a checkpoint,
and how far each number moved from the spec's own (base) model."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from interp_assert import fingerprint as fp
from interp_assert.errors import SpecError
from interp_assert.runner import Runner, RunOptions
from interp_assert.snapshot import drift_report
from interp_assert.spec import Snapshot, SpecFile, load_spec


@dataclass(frozen=True)
class AuditRow:
    name: str
    property: str
    passed: bool
    base_passed: bool
    base_value: float | str | None
    checkpoint_value: float | str | None
    headline: str


@dataclass(frozen=True)
class SnapshotDrift:
    name: str
    within: bool
    headline: str
    details: tuple[str, ...]


@dataclass(frozen=True)
class Audit:
    spec: str
    base: str
    checkpoint: str
    rows: tuple[AuditRow, ...]
    drifts: tuple[SnapshotDrift, ...]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)


def run_audit(spec_path: str, checkpoint: str, options: RunOptions | None = None) -> Audit:
    options = options or RunOptions()
    spec = load_spec(spec_path)
    if spec.problems() or spec.header is None:
        raise SpecError(spec.problems())
    base = Runner(options)
    on_checkpoint = Runner(RunOptions(**(asdict(options) | {"overrides": {spec.header.model: checkpoint}})))
    rows, drifts = [], []
    for entry in spec.entries:
        expectation = entry.expectation
        assert expectation is not None
        if isinstance(expectation, Snapshot):
            drift = _snapshot_drift(spec, expectation, base, on_checkpoint)
            drifts.append(drift)
            rows.append(AuditRow(entry.name, "snapshot", drift.within, True, None, None, drift.headline))
            continue
        before = base.evaluate(spec, entry)
        after = on_checkpoint.evaluate(spec, entry)
        rows.append(
            AuditRow(
                entry.name,
                expectation.property,
                after.passed,
                before.passed,
                _first_value(before.measured),
                _first_value(after.measured),
                after.headline,
            )
        )
    return Audit(spec_path, spec.header.model, checkpoint, tuple(rows), tuple(drifts))


def _snapshot_drift(spec: SpecFile, expectation: Snapshot, base: Runner, other: Runner) -> SnapshotDrift:
    tolerances, _ = base.tolerances(spec, expectation)
    drift = fp.compare(base.fingerprint(spec, expectation), other.fingerprint(spec, expectation), tolerances)
    if drift.within:
        return SnapshotDrift(expectation.name, True, f"snapshot {expectation.name!r}: within tolerance", ())
    headline, details, _ = drift_report(expectation.name, drift, [])
    return SnapshotDrift(expectation.name, False, headline, details[:-1])


def _first_value(measured: dict[str, float | str]) -> float | str | None:
    return next(iter(measured.values()), None)


def _shown(value: float | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def print_table(audit: Audit, out: TextIO) -> None:
    out.write(f"audit of {audit.spec}: base {audit.base!r} vs checkpoint {audit.checkpoint!r}\n\n")
    width = max(len(row.name) for row in audit.rows) + 2
    out.write(f"{'expectation':<{width}}{'result':<12}{'base':>12}{'checkpoint':>12}{'change':>11}\n")
    for row in audit.rows:
        verdict = "pass" if row.passed else "FAIL"
        if not row.base_passed:
            verdict += "*"
        change = ""
        if isinstance(row.base_value, float) and isinstance(row.checkpoint_value, float):
            change = f"{row.checkpoint_value - row.base_value:+.4f}"
        out.write(
            f"{row.name:<{width}}{verdict:<12}{_shown(row.base_value):>12}{_shown(row.checkpoint_value):>12}"
            f"{change:>11}\n"
        )
    if any(not row.base_passed for row in audit.rows):
        out.write("* fails on the base model too\n")
    for drift in audit.drifts:
        out.write(f"\n{drift.headline} (checkpoint vs base)\n")
        for line in drift.details:
            out.write(f"  {line}\n")
    held = sum(row.passed for row in audit.rows)
    out.write(f"\n{held} of {len(audit.rows)} expectations hold on the checkpoint\n")


def to_json(audit: Audit) -> dict[str, Any]:
    return {
        "spec": audit.spec,
        "base": audit.base,
        "checkpoint": audit.checkpoint,
        "passed": audit.passed,
        "expectations": [asdict(row) for row in audit.rows],
        "snapshots": [asdict(drift) for drift in audit.drifts],
    }


def main_audit(spec_path: str, checkpoint: str, as_json: bool, out: TextIO | None = None) -> int:
    """Print the audit; return 1 if any expectation fails on the checkpoint, else 0."""
    out = out or sys.stdout
    audit = run_audit(spec_path, checkpoint)
    if as_json:
        json.dump(to_json(audit), out, indent=2, default=_json_number)
        out.write("\n")
    else:
        print_table(audit, out)
    return 0 if audit.passed else 1


def _json_number(value: Any) -> Any:
    return float(value) if hasattr(value, "__float__") else str(value)
