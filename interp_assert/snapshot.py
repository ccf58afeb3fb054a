"""Fingerprint snapshots stored with syrupy, beside the spec: ``model_specs/__snapshots__/<spec>.ambr``.

Syrupy supplies the roles: an amber storage (one readable text block per
expectation), our serializer (the fingerprint text) and our comparator
(numbers under tolerance, in :mod:`interp_assert.fingerprint`). Syrupy's
session is not told about these snapshots: it only tracks ``pytest.Function``
items and would report a spec's snapshot unused, or delete it, whenever that
item is skipped or deselected. Instead a snapshot is deleted only under
``--snapshot-update`` and only when its expectation is gone from a spec that ran.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syrupy.exceptions import SnapshotDoesNotExist, TaintedSnapshotError
from syrupy.extensions.amber import AmberSnapshotExtension
from syrupy.extensions.amber.serializer import MalformedAmberFile, MissingVersionError
from syrupy.location import PyTestLocation

from interp_assert import fingerprint as fp
from interp_assert.errors import InterpAssertError


class SnapshotFileError(InterpAssertError):
    """A snapshot file exists but cannot be read."""


class FingerprintExtension(AmberSnapshotExtension):
    """Amber storage whose entries are fingerprint text, compared as numbers."""

    def __init__(self, tolerances: dict[str, fp.Tolerance] | None = None) -> None:
        self.tolerances = tolerances or fp.DEFAULT_TOLERANCES

    def serialize(self, data: Any, **kwargs: Any) -> str:
        return fp.render(data) if isinstance(data, fp.Fingerprint) else str(data)

    def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
        return fp.compare(fp.parse(str(snapshot_data)), fp.parse(str(serialized_data)), self.tolerances).within


@dataclass(frozen=True)
class _SpecNode:
    """What syrupy reads from a test item, for one spec expectation."""

    path: Path
    name: str
    nodeid: str


@dataclass(frozen=True)
class SpecLocation(PyTestLocation):
    """A syrupy test location for a spec expectation (spec file + expectation name)."""

    def __post_init__(self) -> None:
        node = self.item
        object.__setattr__(self, "filepath", str(Path(node.path).absolute()))
        object.__setattr__(self, "modulename", Path(node.path).stem)
        object.__setattr__(self, "methodname", node.name)
        object.__setattr__(self, "nodename", node.name)
        object.__setattr__(self, "testname", node.name)


def location(spec_path: str | Path, name: str) -> SpecLocation:
    node = _SpecNode(Path(spec_path), name, f"{Path(spec_path).name}::{name}")
    return SpecLocation(node)  # type: ignore[arg-type]


def snapshot_file(spec_path: str | Path) -> Path:
    return Path(FingerprintExtension.get_location(test_location=location(spec_path, "_"), index=0))


def read(spec_path: str | Path, name: str) -> fp.Fingerprint | None:
    extension = FingerprintExtension()
    try:
        text = extension.read_snapshot(test_location=location(spec_path, name), index=0, session_id=uuid.uuid4().hex)
    except SnapshotDoesNotExist:
        return None
    except (TaintedSnapshotError, MalformedAmberFile, MissingVersionError, OSError, UnicodeDecodeError) as exc:
        problem = str(exc) or type(exc).__name__
        if isinstance(exc, TaintedSnapshotError | MissingVersionError):
            problem = "the file has no current syrupy amber version header; re-record it with --snapshot-update"
        raise SnapshotFileError(f"{snapshot_file(spec_path)}: cannot read snapshot {name!r}: {problem}") from None
    try:
        return fp.parse(str(text))
    except ValueError as exc:
        raise SnapshotFileError(f"{snapshot_file(spec_path)}: snapshot {name!r}: {exc}") from None


def write(spec_path: str | Path, name: str, fingerprint: fp.Fingerprint) -> Path:
    extension = FingerprintExtension()
    where = location(spec_path, name)
    target = extension.get_location(test_location=where, index=0)
    extension.write_snapshot(snapshot_location=target, snapshots=[(extension.serialize(fingerprint), where, 0)])
    return Path(target)


def stored_names(spec_path: str | Path) -> set[str]:
    target = snapshot_file(spec_path)
    if not target.exists():
        return set()
    return {snapshot.name for snapshot in FingerprintExtension().read_snapshot_collection(str(target))}


def delete(spec_path: str | Path, names: set[str]) -> None:
    FingerprintExtension().delete_snapshots(snapshot_location=str(snapshot_file(spec_path)), snapshot_names=names)


@dataclass(frozen=True)
class SnapshotResult:
    passed: bool
    headline: str
    details: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    measured: dict[str, float | str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def check(
    spec_path: str | Path,
    name: str,
    current: fp.Fingerprint,
    tolerances: dict[str, fp.Tolerance],
    *,
    explicit: set[str],
    update: bool,
) -> SnapshotResult:
    """Compare ``current`` with the stored snapshot; write it when asked to (or none exists and ``update``).

    ``explicit`` names the quantities whose tolerance the spec set; the others use
    defaults, loosened tenfold when dtype or device differ from the recorded run.
    """
    shown = os.path.relpath(snapshot_file(spec_path))
    stored = read(spec_path, name)
    if stored is None:
        if update:
            write(spec_path, name, current)
            return SnapshotResult(True, f"snapshot {name!r} written to {shown}")
        return SnapshotResult(False, f"no snapshot {name!r} in {shown}; run pytest --snapshot-update to record it")
    notes: list[str] = []
    changed_env = [key for key in ("dtype", "device") if stored.environment.get(key) != current.environment.get(key)]
    effective = dict(tolerances)
    if changed_env:
        for quantity in set(effective) - explicit:
            effective[quantity] = effective[quantity].scaled(10.0)
        moved = ", ".join(f"{k} {stored.environment.get(k)} -> {current.environment.get(k)}" for k in changed_env)
        notes.append(f"environment differs from the snapshot ({moved}): default tolerances loosened x10")
    drift = fp.compare(stored, current, effective)
    measured: dict[str, float | str] = {"values_moved": drift.moved, "values_compared": drift.compared}
    if drift.within:
        headline = f"snapshot {name!r} matches within tolerance"
        return SnapshotResult(True, headline, tuple(notes), measured=measured, notes=tuple(notes))
    if update:
        write(spec_path, name, current)
        headline = f"snapshot {name!r} updated in {shown} ({drift.moved} values had moved)"
        return SnapshotResult(True, headline, notes=tuple(notes))
    return SnapshotResult(False, *drift_report(name, drift, notes), measured=measured, notes=tuple(notes))


def drift_report(name: str, drift: fp.Drift, notes: list[str]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """Headline, detail lines, and the heads concerned (largest move first)."""
    headline = f"snapshot {name!r} drifted: {drift.moved} of {drift.compared} values moved beyond tolerance"
    lines = list(notes)
    for q in drift.quantities:
        lines.append(
            f"{q.quantity}: {q.beyond} of {q.compared} beyond (atol {q.tolerance.atol:g}, rtol {q.tolerance.rtol:g}); "
            f"max |change| {q.max_abs:.4g}, mean {q.mean_abs:.4g}; max relative {q.max_rel:.1%}, mean {q.mean_rel:.1%}"
        )
    if drift.missing:
        lines.append("series only in one of the two: " + ", ".join(drift.missing[:5]))
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
