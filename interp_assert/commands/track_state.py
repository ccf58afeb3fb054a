"""``track --out DIR``: the output folder is the state of a track, so it resumes, shards and merges.

Layout of DIR::

    interp-track.json           what is tracked: the spec (its digest), every checkpoint in order,
                                each expectation's property and bounds
    checkpoints/<label>.json    one checkpoint's cells, with the key they were measured under

Each file is written atomically once its checkpoint is measured, so a run killed at any moment
leaves whole files only. A rerun reuses a checkpoint's file only when its key (spec and snapshot
digest, the checkpoint's weights hash, the package's code, torch and transformers versions, the
load options, the smoke limit) equals the one it would measure under now; everything else is
measured again. ``--shard i/n`` measures every n-th checkpoint (the i-th of each n, in the track's
order); ``track merge DIR...`` reads the files of every shard back into one track, which prints,
plots and exits as one uninterrupted run does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from interp_assert import atomic, exit_codes
from interp_assert.commands.shards import Shard
from interp_assert.drift.checkpoints import Checkpoint, same_architecture
from interp_assert.drift.track import Cell, Column, Row, Track, assemble, finite, measure_checkpoint, unavailable_column
from interp_assert.errors import InfrastructureError, InterpAssertError, UsageError
from interp_assert.output_schema import SCHEMA_VERSION, versioned
from interp_assert.result_cache import code_digest, file_digest
from interp_assert.run_options import RunOptions
from interp_assert.spec import SpecFile

STATE_FILE = "interp-track.json"
CELLS_DIR = "checkpoints"


# ---- the key a checkpoint's cells were measured under ----


def spec_digest(spec: SpecFile) -> dict[str, str | None]:
    """The spec's text and its stored snapshots (a snapshot expectation compares with them)."""
    from interp_assert.drift.snapshot_store import snapshot_file

    return {"spec": file_digest(Path(spec.path)), "snapshots": file_digest(snapshot_file(spec.path))}


def versions() -> dict[str, str]:
    import torch
    import transformers

    from interp_assert.version import package_version

    return {
        "interp_assert": package_version(),
        "code": code_digest(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def checkpoint_key(spec: SpecFile, checkpoint: Checkpoint, options: RunOptions, limit: int | None) -> dict[str, Any]:
    """Everything that can change a cell: ``None`` weights (a hub id) never match, so never reuse."""
    from interp_assert.measure.models import content_hash, resolve
    from interp_assert.runner import model_key

    assert spec.header is not None
    source = resolve(checkpoint.path)
    weights = content_hash(str(source)) if isinstance(source, Path) else "unknown"
    _, load = model_key(spec, options.replacing(spec.header.model, checkpoint.path))
    return {
        **spec_digest(spec),
        "checkpoint": checkpoint.path,
        "weights": None if weights == "unknown" else weights,
        "load": repr(load),
        "versions": versions(),
        "limit": limit,
    }


# ---- files ----


def cell_json(cell: Cell) -> dict[str, Any]:
    document: dict[str, Any] = finite(asdict(cell))
    return document


def cell_from_json(data: dict[str, Any]) -> Cell:
    return Cell(
        passed=bool(data["passed"]),
        value=data["value"],
        shown=str(data["shown"]),
        headline=str(data["headline"]),
        error=str(data.get("error") or ""),
        unavailable=bool(data.get("unavailable", False)),
        series=tuple(float("nan") if x is None else float(x) for x in data.get("series") or ()),
    )


def checkpoint_json(checkpoint: Checkpoint) -> dict[str, Any]:
    return asdict(checkpoint)


def column_json(index: int, checkpoint: Checkpoint, column: Column, key: dict[str, Any]) -> dict[str, Any]:
    return versioned(
        "track-checkpoint",
        {
            "key": key,
            "index": index,
            "checkpoint": checkpoint_json(checkpoint),
            "seconds": column.seconds,
            "notes": list(column.notes),
            "architecture": column.architecture,
            "cells": [cell_json(cell) for cell in column.cells],
        },
    )


def column_from_json(data: dict[str, Any]) -> Column:
    cells = tuple(cell_from_json(cell) for cell in data["cells"])
    return Column(cells, float(data["seconds"]), tuple(data["notes"]), str(data["architecture"]))


def roundtrip(column: Column) -> Column:
    """The column as a rerun would read it back from its file: a resumed track equals an uninterrupted one."""
    cells = tuple(cell_from_json(json.loads(json.dumps(cell_json(cell)))) for cell in column.cells)
    return Column(cells, column.seconds, column.notes, column.architecture)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A whole, well-formed state file, or ``None`` (missing, truncated, another version: measured again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        return None
    return data


def _cells_file(state: Path, checkpoint: Checkpoint) -> Path:
    return state / CELLS_DIR / f"{checkpoint.label}.json"


def manifest(spec: SpecFile, checkpoints: Sequence[Checkpoint], smoke: str) -> dict[str, Any]:
    assert spec.header is not None
    rows = [
        {
            "name": entry.name,
            "property": entry.expectation.property if entry.expectation else "",
            "bound_low": getattr(entry.expectation, "at_least", None),
            "bound_high": getattr(entry.expectation, "at_most", None),
        }
        for entry in spec.entries
    ]
    return versioned(
        "track-state",
        {
            "spec": spec.path,
            "model": spec.header.model,
            "digest": spec_digest(spec),
            "smoke": smoke,
            "checkpoints": [checkpoint_json(c) for c in checkpoints],
            "expectations": rows,
        },
    )


def prepare(state: Path, document: dict[str, Any]) -> None:
    """Make ``state`` a state folder: a new or empty folder, or one a track wrote (refused otherwise,
    naming what is there, so no folder of the user's is filled with ours)."""
    if state.exists() and not state.is_dir():
        raise UsageError(f"--out {state} is a file; give a folder for the track's state")
    if state.is_dir() and not (state / STATE_FILE).is_file():
        present = sorted(p.name for p in state.iterdir())
        if present:
            raise UsageError(
                f"--out {state} is not empty and holds no {STATE_FILE} ({', '.join(present[:5])}); "
                "give a new or empty folder, or one an earlier track wrote"
            )
    atomic.write_text(state / STATE_FILE, json.dumps(document, indent=2, allow_nan=False) + "\n")


def run_with_state(
    spec: SpecFile,
    checkpoints: Sequence[Checkpoint],
    options: RunOptions,
    *,
    state: Path | None = None,
    shard: Shard | None = None,
    retries: int = 0,
    limit: int | None = None,
    smoke: str = "",
    progress: Callable[[str], None] | None = None,
    said: Callable[[str], None] | None = None,
) -> tuple[Track, int]:
    """Track the checkpoints of ``shard`` (all without one), reusing what ``state`` holds.
    Returns the track and how many checkpoints were reused from ``state``."""
    mine = shard.select(checkpoints) if shard is not None else tuple(checkpoints)
    if not mine:
        raise UsageError(f"--shard {shard}: {len(checkpoints)} checkpoints leave this shard none; use fewer shards")
    if state is not None:
        prepare(state, manifest(spec, checkpoints, smoke))
    columns: list[Column] = []
    reused = 0
    first: tuple[Checkpoint, str] | None = None
    for checkpoint in mine:
        index = checkpoints.index(checkpoint)
        key = checkpoint_key(spec, checkpoint, options, limit) if state is not None else {}
        column = None
        if state is not None:
            stored = _read_json(_cells_file(state, checkpoint))
            if stored is not None and stored.get("key") == key and key["weights"] is not None:
                column = column_from_json(stored)
                if any(cell.unavailable for cell in column.cells):
                    column = None  # a checkpoint that could not load is tried again
                else:
                    reused += 1
        if column is None:
            column = roundtrip(_measure(spec, checkpoint, options, retries, progress, said))
            if state is not None:
                data = column_json(index, checkpoint, column, key)
                atomic.write_text(_cells_file(state, checkpoint), json.dumps(data, indent=2) + "\n")
        if column.architecture:
            first = first or (checkpoint, column.architecture)
            same_architecture(first[0], first[1], checkpoint, column.architecture)
        columns.append(column)
    return assemble(spec, mine, columns, smoke), reused


def _measure(
    spec: SpecFile,
    checkpoint: Checkpoint,
    options: RunOptions,
    retries: int,
    progress: Callable[[str], None] | None,
    said: Callable[[str], None] | None,
) -> Column:
    """Measure one checkpoint, trying ``retries`` more times on an infrastructure failure; a
    checkpoint that still fails is a column of unavailable cells with the reason."""
    for attempt in range(retries + 1):
        try:
            return measure_checkpoint(spec, checkpoint, options, progress=progress)
        except Exception as exc:  # sorted by exit_codes: only infrastructure is recorded, the rest raised
            if exit_codes.code_for(exc) != exit_codes.INFRASTRUCTURE:
                raise
            reason = str(exc) if isinstance(exc, InterpAssertError) else f"{type(exc).__name__}: {exc}"
            reason = reason.replace("\n", "; ")
            if attempt < retries:
                if said is not None:
                    said(f"{checkpoint.label}: {reason}; retry {attempt + 1} of {retries}")
                continue
            if retries:
                reason += f" (after {retries} retries)"
            return unavailable_column(spec, reason)
    raise AssertionError("unreachable")


# ---- merge ----


def merge(directories: Sequence[Path]) -> Track:
    """The track that the shards in ``directories`` measured, as one run would have printed it."""
    documents = []
    for directory in directories:
        data = _read_json(directory / STATE_FILE)
        if data is None or data.get("kind") != "track-state":
            raise UsageError(f"{directory}: no track state ({STATE_FILE}); give folders that track --out wrote")
        documents.append((directory, data))
    first_dir, first = documents[0]
    for directory, data in documents[1:]:
        for field in ("spec", "digest", "checkpoints", "expectations", "smoke"):
            if data[field] != first[field]:
                raise UsageError(
                    f"{directory} and {first_dir} track different things ({field} differs); "
                    "merge the shards of one track only"
                )
    checkpoints = tuple(Checkpoint(**c) for c in first["checkpoints"])
    columns: dict[int, Column] = {}
    for directory, _ in documents:
        for index, checkpoint in enumerate(checkpoints):
            stored = _read_json(_cells_file(directory, checkpoint))
            if stored is None or stored["key"].get("spec") != first["digest"]["spec"]:
                continue
            column = column_from_json(stored)
            if index not in columns or any(c.unavailable for c in columns[index].cells):
                columns[index] = column
    missing = [c.label for i, c in enumerate(checkpoints) if i not in columns]
    if missing:
        raise InfrastructureError(
            f"track merge: {len(missing)} of {len(checkpoints)} checkpoints were measured in none of "
            f"{', '.join(map(str, directories))}: {', '.join(missing[:8])}; run the shard that holds them"
        )
    rows = tuple(
        Row(row["name"], row["property"], tuple(columns[i].cells[k] for i in range(len(checkpoints))),
            row["bound_low"], row["bound_high"])
        for k, row in enumerate(first["expectations"])
    )  # fmt: skip
    ordered = [columns[i] for i in range(len(checkpoints))]
    notes = tuple(note for column in ordered for note in column.notes)
    seconds = tuple(column.seconds for column in ordered)
    return Track(first["spec"], first["model"], checkpoints, rows, seconds, notes, first["smoke"])
