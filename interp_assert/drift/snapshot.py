"""Fingerprint snapshots: compare a model's fingerprint with the stored one, record it on request.

Storage is :mod:`interp_assert.drift.snapshot_store` (syrupy amber files, locked and atomic);
the comparison is :func:`interp_assert.drift.fingerprint.compare` (numbers under tolerance).
Syrupy's session is not told about these snapshots: it only tracks ``pytest.Function``
items and would report a spec's snapshot unused, or delete it, whenever that item is
skipped or deselected. Instead a snapshot is deleted only under ``--snapshot-update``
and only when its expectation is gone from a spec that ran and validated completely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from interp_assert.drift import fingerprint as fp
from interp_assert.drift import snapshot_store as store
from interp_assert.errors import SnapshotFileError

__all__ = ["SnapshotFileError", "SnapshotResult", "check", "drift_report", "model_change", "read", "revision_change"]

Action = Literal["written", "updated"]


def read(spec_path: str | Path, name: str) -> fp.Fingerprint | None:
    text = store.read_text(spec_path, name)
    if text is None:
        return None
    try:
        return fp.parse(text)
    except ValueError as exc:
        raise SnapshotFileError(f"{store.snapshot_file(spec_path)}: snapshot {name!r}: {exc}") from None


@dataclass(frozen=True)
class SnapshotResult:
    passed: bool
    headline: str
    details: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    measured: dict[str, float | str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    action: Action | None = None  # what was written to disk, if anything
    file: str = ""


def check(
    spec_path: str | Path,
    name: str,
    current: fp.Fingerprint,
    tolerances: dict[str, fp.Tolerance],
    *,
    explicit: set[str],
    update: bool,
) -> SnapshotResult:
    """Compare ``current`` with the stored snapshot; write it when asked to.

    ``explicit`` names the quantities whose tolerance the spec set; the others use
    defaults, loosened tenfold when dtype or device differ from the recorded run.
    Values are stored rounded to what the tolerances can see.
    """
    shown = store.describe(store.snapshot_file(spec_path))
    stored = read(spec_path, name)
    to_store = fp.rounded(current, tolerances)
    if stored is None:
        if update:
            store.write(spec_path, name, fp.render(to_store))
            return SnapshotResult(True, f"snapshot {name!r} written to {shown}", action="written", file=shown)
        return SnapshotResult(False, f"no snapshot {name!r} in {shown}; run pytest --snapshot-update to record it")
    notes: list[str] = []
    changed_model = model_change(stored.environment, current.environment)
    if changed_model:
        notes.append(changed_model)
    changed_revision = revision_change(stored.environment, current.environment)
    if changed_revision:
        notes.append(changed_revision)
    changed_env = [key for key in ("dtype", "device") if stored.environment.get(key) != current.environment.get(key)]
    effective = dict(tolerances)
    if changed_env:
        for quantity in set(effective) - explicit:
            effective[quantity] = effective[quantity].scaled(10.0)
        moved = ", ".join(f"{k} {stored.environment.get(k)} -> {current.environment.get(k)}" for k in changed_env)
        notes.append(f"environment differs from the snapshot ({moved}): default tolerances loosened x10")
    drift = fp.compare(stored, current, effective)
    measured: dict[str, float | str] = {"values_moved": drift.moved, "values_compared": drift.compared}
    if drift.within and not (update and (changed_model or changed_revision)):
        headline = f"snapshot {name!r} matches within tolerance"
        return SnapshotResult(True, headline, tuple(notes), measured=measured, notes=tuple(notes))
    if update:
        store.write(spec_path, name, fp.render(to_store))
        headline = f"snapshot {name!r} updated in {shown} ({drift.moved} values had moved)"
        return SnapshotResult(True, headline, tuple(notes), notes=tuple(notes), action="updated", file=shown)
    return SnapshotResult(False, *drift_report(name, drift, notes), measured=measured, notes=tuple(notes))


def model_change(recorded: dict[str, str], current: dict[str, str]) -> str:
    """One line when the snapshot was recorded on another model or other weights, else ''."""
    old_model, new_model = recorded.get("model", "?"), current.get("model", "?")
    old_hash, new_hash = recorded.get("content_hash", "unknown"), current.get("content_hash", "unknown")
    hashes_differ = "unknown" not in (old_hash, new_hash) and old_hash != new_hash
    if old_model == new_model and not hashes_differ:
        return ""
    return (
        f"the snapshot was recorded on model {old_model!r} (weights {old_hash}); "
        f"this run measures {new_model!r} (weights {new_hash})"
    )


def revision_change(recorded: dict[str, str], current: dict[str, str]) -> str:
    """One line when the snapshot was recorded at another hub revision (or commit) than this run's, else ''.

    A commit sha names the weights exactly; the revision is how the spec asked for them (``main``
    moves). Snapshots of local models record neither, and say nothing here."""
    old_revision, new_revision = recorded.get("revision"), current.get("revision")
    old_commit, new_commit = recorded.get("commit"), current.get("commit")
    commits_differ = old_commit is not None and new_commit is not None and old_commit != new_commit
    if old_revision == new_revision and not commits_differ:
        return ""
    if old_revision is None and new_revision is None and old_commit is None:
        return ""

    def at(revision: str | None, commit: str | None) -> str:
        named = f"revision {revision!r}" if revision is not None else "no revision (the default branch)"
        return named + (f" (commit {commit[:12]})" if commit else "")

    return (
        f"the snapshot was recorded at {at(old_revision, old_commit)}; this run measures {at(new_revision, new_commit)}"
    )


def drift_report(name: str, drift: fp.Drift, notes: list[str]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """Headline, detail lines, and the heads concerned (largest move first)."""
    headline = f"snapshot {name!r} drifted: {drift.moved} of {drift.compared} values moved beyond tolerance"
    lines = list(notes)
    for q in drift.quantities:
        line = (
            f"{q.quantity}: {q.beyond} of {q.compared} beyond (atol {q.tolerance.atol:g}, rtol {q.tolerance.rtol:g}); "
            f"max |change| {q.max_abs:.4g}, mean {q.mean_abs:.4g}"
        )
        if not math.isnan(q.max_rel):
            line += f"; max relative {q.max_rel:.1%}, mean {q.mean_rel:.1%}"
            if q.relative_floor > 0:
                line += f" (where |base| >= {q.relative_floor:g})"
        lines.append(line)
    if drift.missing:
        lines.append("series only in one of the two: " + ", ".join(drift.missing[:5]))
    if drift.summary:
        lines.append("by layer and role:")
        lines += [f"  {line}" for line in drift.summary]
    shown = [m for m in drift.heads if m.size > 0 or m.label_before != m.label_after][:10]
    if shown:
        lines.append("heads that moved most:")
        for move in shown:
            label = (
                f" (label {move.label_before} -> {move.label_after})" if move.label_before != move.label_after else ""
            )
            lines.append(f"  {move.head} {move.role} {move.before:.3f} -> {move.after:.3f}{label}")
    lines.append("to accept the new numbers: pytest --snapshot-update")
    heads = tuple(dict.fromkeys(m.head for m in shown))
    return headline, tuple(lines), heads
