"""``interp-assert track SPEC --checkpoint A --checkpoint B ...``: every expectation of a spec on
every checkpoint of a training run, and when each one formed and broke.

Checkpoints are loaded one at a time, each in place of the spec's model (as ``audit`` runs its
checkpoint), and every expectation is evaluated by :meth:`Runner.evaluate`, as pytest does.
A snapshot expectation compares each checkpoint with the snapshot stored for the spec (the
fingerprint of the spec's own model); its value is the number of values that moved beyond
tolerance. Nothing is written to the snapshot file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from interp_assert import atomic
from interp_assert.drift.checkpoints import Checkpoint, architecture, same_architecture
from interp_assert.errors import CheckpointError, InterpAssertError, SpecError
from interp_assert.outcome import format_value
from interp_assert.run_options import RunOptions
from interp_assert.runner import Runner
from interp_assert.spec import Entry, SpecFile, load_spec

MAX_CELL = 24


@dataclass(frozen=True)
class Cell:
    """One expectation on one checkpoint."""

    passed: bool
    value: float | int | str | None
    shown: str
    headline: str
    error: str = ""  # the expectation could not be evaluated on this checkpoint


@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # the expectation's property
    cells: tuple[Cell, ...]  # one per checkpoint, in checkpoint order
    bound_low: float | None = None
    bound_high: float | None = None

    @property
    def forms(self) -> int | None:
        """Index of the first checkpoint where the expectation holds."""
        return next((i for i, cell in enumerate(self.cells) if cell.passed), None)

    @property
    def breaks(self) -> int | None:
        """Index of the first checkpoint after :attr:`forms` where it no longer holds."""
        start = self.forms
        if start is None:
            return None
        return next((i for i in range(start + 1, len(self.cells)) if not self.cells[i].passed), None)


@dataclass(frozen=True)
class Track:
    spec: str
    model: str  # the spec's own model, which each checkpoint replaces
    checkpoints: tuple[Checkpoint, ...]
    rows: tuple[Row, ...]
    seconds: tuple[float, ...]  # load + evaluation, per checkpoint
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Every expectation holds on the last checkpoint."""
        return all(row.cells[-1].passed for row in self.rows)


def run_track(
    spec_path: str,
    checkpoints: Sequence[Checkpoint],
    options: RunOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Track:
    """Evaluate every expectation of ``spec_path`` on each checkpoint in turn (one model in memory)."""
    options = options or RunOptions()
    spec = load_spec(spec_path)
    if spec.problems() or spec.header is None:
        raise SpecError(spec.problems())
    model = spec.header.model
    columns: list[list[Cell]] = []
    seconds: list[float] = []
    notes: list[str] = []
    first_arch: str | None = None
    for checkpoint in checkpoints:
        if progress is not None:
            progress(f"{checkpoint.label}: loading")
        started = time.perf_counter()
        runner = Runner(options.replacing(model, checkpoint.path))
        loaded = runner.model_for(spec)
        arch = architecture(loaded.model.config.to_dict())
        if first_arch is None:
            first_arch = arch
        same_architecture(checkpoints[0], first_arch, checkpoint, arch)  # .gguf files and adapters too
        notes += [f"{checkpoint.label}: {note}" for note in loaded.notes]
        if progress is not None:
            progress(f"{checkpoint.label}: evaluating")
        columns.append([_cell(runner, spec, entry) for entry in spec.entries])
        del runner, loaded  # the next checkpoint loads with this one released
        seconds.append(time.perf_counter() - started)
    rows = []
    for index, entry in enumerate(spec.entries):
        assert entry.expectation is not None
        rows.append(
            Row(
                entry.name,
                entry.expectation.property,
                tuple(column[index] for column in columns),
                getattr(entry.expectation, "at_least", None),
                getattr(entry.expectation, "at_most", None),
            )
        )
    return Track(spec_path, model, tuple(checkpoints), tuple(rows), tuple(seconds), tuple(notes))


def _cell(runner: Runner, spec: SpecFile, entry: Entry) -> Cell:
    try:
        outcome = runner.evaluate(spec, entry)
    except CheckpointError:
        raise
    except InterpAssertError as exc:  # e.g. a head this checkpoint does not have
        message = str(exc).replace("\n", "; ")
        return Cell(False, None, "error", message, error=message)
    return Cell(outcome.passed, outcome.value, outcome.shown or format_value(outcome.value), outcome.headline)


# ---- the summary ----


def milestones(row: Row, checkpoints: Sequence[Checkpoint]) -> str:
    """``forms at step 400; breaks at step 1800`` and the like."""
    forms, breaks = row.forms, row.breaks
    if forms is None:
        return "never holds"
    text = f"holds from {checkpoints[0].shown}" if forms == 0 else f"forms at {checkpoints[forms].shown}"
    if breaks is None:
        return text + (" on" if forms == 0 else "; holds to the last checkpoint")
    text += f"; breaks at {checkpoints[breaks].shown}"
    if row.cells[-1].passed:
        again = max(i for i in range(len(row.cells)) if not row.cells[i].passed) + 1
        text += f"; holds again from {checkpoints[again].shown}"
    return text


def _short(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def print_track(track: Track, out: TextIO) -> None:
    out.write(
        f"track of {track.spec}: {len(track.checkpoints)} checkpoints in place of {track.model!r}, "
        f"ordered {_order_text(track.checkpoints)}\n"
    )
    for note in track.notes:
        out.write(f"note: {note}\n")
    out.write("\n")
    header = ("expectation", *(c.label for c in track.checkpoints))
    body = [
        (row.name, *(("" if cell.passed else "FAIL ") + _short(cell.shown) for cell in row.cells)) for row in track.rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    for line in [header, *body]:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n")
    out.write("\n")
    width = max(len(row.name) for row in track.rows)
    for row in track.rows:
        out.write(f"{row.name.ljust(width)}  {milestones(row, track.checkpoints)}\n")
    last = track.checkpoints[-1]
    for row in track.rows:
        if not row.cells[-1].passed:
            out.write(f"\n{row.name} at {last.label}: {row.cells[-1].headline}\n")
    held = sum(row.cells[-1].passed for row in track.rows)
    total = sum(track.seconds)
    out.write(
        f"\n{held} of {len(track.rows)} expectations hold on the last checkpoint ({last.label}); "
        f"{total:.1f} s, {total / len(track.seconds):.1f} s per checkpoint\n"
    )


def _order_text(checkpoints: Sequence[Checkpoint]) -> str:
    steps = [c.step for c in checkpoints]
    if all(s is not None for s in steps) and steps == sorted(steps, key=lambda s: s or 0):
        return "by step"
    return "as given"


# ---- JSON ----


def to_json(track: Track) -> dict[str, Any]:
    """The track as plain JSON: NaN and infinities become ``null``."""
    document = {
        "spec": track.spec,
        "model": track.model,
        "passed": track.passed,
        "notes": list(track.notes),
        "checkpoints": [
            {"label": c.label, "path": c.path, "given": c.given, "step": c.step, "seconds": s}
            for c, s in zip(track.checkpoints, track.seconds, strict=True)
        ],
        "expectations": [
            {
                "name": row.name,
                "property": row.kind,
                "bound_low": row.bound_low,
                "bound_high": row.bound_high,
                "forms_at": None if row.forms is None else track.checkpoints[row.forms].label,
                "breaks_at": None if row.breaks is None else track.checkpoints[row.breaks].label,
                "summary": milestones(row, track.checkpoints),
                "cells": [
                    {
                        "checkpoint": c.label,
                        "step": c.step,
                        "passed": cell.passed,
                        "value": cell.value,
                        "shown": cell.shown,
                        "headline": cell.headline,
                        "error": cell.error or None,
                    }
                    for c, cell in zip(track.checkpoints, row.cells, strict=True)
                ],
            }
            for row in track.rows
        ],
    }
    return finite(document)


def finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    if hasattr(value, "item"):  # numpy scalars
        return finite(value.item())
    return value


def refuse_overwrite_file(path: Path, *, force: bool) -> None:
    if path.is_dir():
        raise InterpAssertError(f"{path} is a folder; give a file name for the JSON")
    if path.exists() and not force:
        raise InterpAssertError(f"{path} exists; pass --force to overwrite it")


def write_json(track: Track, path: Path) -> None:
    atomic.write_text(path, json.dumps(to_json(track), indent=2, allow_nan=False) + "\n")
