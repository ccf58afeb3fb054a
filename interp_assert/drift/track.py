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
from interp_assert.errors import CheckpointError, InfrastructureError, InterpAssertError, SpecError
from interp_assert.outcome import format_value
from interp_assert.run_options import RunOptions
from interp_assert.runner import Runner
from interp_assert.spec import Entry, SpecFile, load_spec

MAX_CELL = 24
MAX_WIDTH = 120  # a CI log's columns: wider tables are printed in blocks of checkpoints


@dataclass(frozen=True)
class Cell:
    """One expectation on one checkpoint."""

    passed: bool
    value: float | int | str | None
    shown: str
    headline: str
    error: str = ""  # the expectation could not be evaluated on this checkpoint
    unavailable: bool = False  # the checkpoint itself could not be loaded (``error`` says why)
    series: tuple[float, ...] = ()  # the value's curve (a probe's AUROC by block), see Outcome.series


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

    def _broken(self, index: int) -> bool:
        """Measured there and failed: a checkpoint that could not load neither forms nor breaks anything."""
        return not self.cells[index].passed and not self.cells[index].unavailable

    @property
    def breaks(self) -> int | None:
        """Index of the first checkpoint after :attr:`forms` where it no longer holds."""
        start = self.forms
        if start is None:
            return None
        return next((i for i in range(start + 1, len(self.cells)) if self._broken(i)), None)


@dataclass(frozen=True)
class Track:
    spec: str
    model: str  # the spec's own model, which each checkpoint replaces
    checkpoints: tuple[Checkpoint, ...]
    rows: tuple[Row, ...]
    seconds: tuple[float, ...]  # load + evaluation, per checkpoint
    notes: tuple[str, ...] = ()
    smoke: str = ""  # "smoke run: N prompts per set" under --interp-limit; "" for a full run

    @property
    def passed(self) -> bool:
        """Every expectation holds on the last checkpoint."""
        return all(row.cells[-1].passed for row in self.rows)

    @property
    def unavailable(self) -> tuple[tuple[Checkpoint, str], ...]:
        """The checkpoints that could not be loaded, each with the reason."""
        found = []
        for index, checkpoint in enumerate(self.checkpoints):
            cells = [row.cells[index] for row in self.rows]
            if cells and all(cell.unavailable for cell in cells):
                found.append((checkpoint, cells[0].error))
        return tuple(found)


def run_track(
    spec_path: str,
    checkpoints: Sequence[Checkpoint],
    options: RunOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Track:
    """Evaluate every expectation of ``spec_path`` on each checkpoint in turn (one model in memory)."""
    options = options or RunOptions()
    spec = checked_spec(spec_path)
    columns: list[Column] = []
    first_arch: str | None = None
    for checkpoint in checkpoints:
        column = measure_checkpoint(spec, checkpoint, options, progress=progress)
        first_arch = first_arch or column.architecture
        same_architecture(checkpoints[0], first_arch, checkpoint, column.architecture)  # .gguf files and adapters too
        columns.append(column)
    return assemble(spec, tuple(checkpoints), columns)


def checked_spec(spec_path: str) -> SpecFile:
    spec = load_spec(spec_path)
    if spec.problems() or spec.header is None:
        raise SpecError(spec.problems())
    return spec


@dataclass(frozen=True)
class Column:
    """Every expectation on one checkpoint (in the spec's order), and what loading it said."""

    cells: tuple[Cell, ...]
    seconds: float
    notes: tuple[str, ...] = ()
    architecture: str = ""


def measure_checkpoint(
    spec: SpecFile, checkpoint: Checkpoint, options: RunOptions, progress: Callable[[str], None] | None = None
) -> Column:
    """Load ``checkpoint`` in place of the spec's model and evaluate every expectation on it. A
    checkpoint that cannot load (or runs out of memory) raises: the caller decides to retry it or
    to record it as unavailable."""
    assert spec.header is not None
    if progress is not None:
        progress(f"{checkpoint.label}: loading")
    started = time.perf_counter()
    runner = Runner(options.replacing(spec.header.model, checkpoint.path))
    loaded = runner.model_for(spec)
    arch = architecture(loaded.model.config.to_dict())
    notes = tuple(f"{checkpoint.label}: {note}" for note in loaded.notes)
    if progress is not None:
        progress(f"{checkpoint.label}: evaluating")
    cells = tuple(_cell(runner, spec, entry) for entry in spec.entries)
    del runner, loaded  # the next checkpoint loads with this one released
    return Column(cells, time.perf_counter() - started, notes, arch)


def unavailable_column(spec: SpecFile, reason: str) -> Column:
    """A checkpoint that could not be loaded: every cell says why."""
    cell = Cell(False, None, "unavailable", reason, error=reason, unavailable=True)
    return Column(tuple(cell for _ in spec.entries), 0.0)


def assemble(spec: SpecFile, checkpoints: tuple[Checkpoint, ...], columns: Sequence[Column], smoke: str = "") -> Track:
    """The track of ``columns`` (one per checkpoint, in order)."""
    assert spec.header is not None
    rows = []
    for index, entry in enumerate(spec.entries):
        assert entry.expectation is not None
        rows.append(
            Row(
                entry.name,
                entry.expectation.property,
                tuple(column.cells[index] for column in columns),
                getattr(entry.expectation, "at_least", None),
                getattr(entry.expectation, "at_most", None),
            )
        )
    notes = tuple(note for column in columns for note in column.notes)
    seconds = tuple(column.seconds for column in columns)
    return Track(spec.path, spec.header.model, checkpoints, tuple(rows), seconds, notes, smoke)


def _cell(runner: Runner, spec: SpecFile, entry: Entry) -> Cell:
    try:
        outcome = runner.evaluate(spec, entry)
    except (CheckpointError, InfrastructureError):
        raise
    except InterpAssertError as exc:  # e.g. a head this checkpoint does not have
        message = str(exc).replace("\n", "; ")
        return Cell(False, None, "error", message, error=message)
    shown = outcome.shown or format_value(outcome.value)
    return Cell(outcome.passed, outcome.value, shown, outcome.headline, series=outcome.series)


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
        again = max(i for i in range(len(row.cells)) if row._broken(i)) + 1
        text += f"; holds again from {checkpoints[again].shown}"
    return text


def wrapped(text: str) -> str:
    """A line of prose as lines of at most :data:`MAX_WIDTH` columns (continuations indented), newline-ended."""
    import textwrap

    lines = textwrap.wrap(text, MAX_WIDTH, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines or [""]) + "\n"


def _cell_text(cell: Cell) -> str:
    if cell.unavailable:
        return "UNAVAILABLE"
    return ("" if cell.passed else "FAIL ") + _short(cell.shown)


def column_blocks(lines: Sequence[Sequence[str]], max_width: int) -> list[list[str]]:
    """A table as blocks of aligned lines no wider than ``max_width`` (where its cells allow): the
    first column is repeated in each block, the others are split between blocks, as ``ls`` wraps."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    blocks: list[list[int]] = [[]]
    used = widths[0]
    for column in range(1, len(widths)):
        if blocks[-1] and used + 2 + widths[column] > max_width:
            blocks.append([])
            used = widths[0]
        blocks[-1].append(column)
        used += 2 + widths[column]
    rendered = []
    for columns in blocks:
        keep = [0, *columns]
        rendered.append(["  ".join(line[i].ljust(widths[i]) for i in keep).rstrip() for line in lines])
    return rendered


def _short(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def print_track(track: Track, out: TextIO) -> None:
    out.write(
        wrapped(
            (f"{track.smoke}: " if track.smoke else "")
            + f"track of {track.spec}: {len(track.checkpoints)} checkpoints in place of {track.model!r}, "
            f"ordered {_order_text(track.checkpoints)}"
        )
    )
    for note in track.notes:
        out.write(wrapped(f"note: {note}"))
    for checkpoint, reason in track.unavailable:
        out.write(wrapped(f"unavailable: {checkpoint.label}: {reason}"))
    out.write("\n")
    header = ("expectation", *(c.label for c in track.checkpoints))
    body = [(row.name, *(_cell_text(cell) for cell in row.cells)) for row in track.rows]
    for block in column_blocks([header, *body], MAX_WIDTH):
        for line in block:
            out.write(line + "\n")
        out.write("\n")
    width = max(len(row.name) for row in track.rows)
    for row in track.rows:
        out.write(f"{row.name.ljust(width)}  {milestones(row, track.checkpoints)}\n")
    last = track.checkpoints[-1]
    for row in track.rows:
        if not row.cells[-1].passed:
            out.write("\n" + wrapped(f"{row.name} at {last.label}: {row.cells[-1].headline}"))
    held = sum(row.cells[-1].passed for row in track.rows)
    total = sum(track.seconds)
    out.write(
        "\n"
        + wrapped(
            f"{held} of {len(track.rows)} expectations hold on the last checkpoint ({last.label}); "
            f"{total:.1f} s, {total / len(track.seconds):.1f} s per checkpoint"
            + (f"; {len(track.unavailable)} checkpoint(s) unavailable" if track.unavailable else "")
            + (f" ({track.smoke})" if track.smoke else "")
        )
    )


def _order_text(checkpoints: Sequence[Checkpoint]) -> str:
    steps = [c.step for c in checkpoints]
    if all(s is not None for s in steps) and steps == sorted(steps, key=lambda s: s or 0):
        return "by step"
    return "as given"


# ---- JSON ----


def to_json(track: Track) -> dict[str, Any]:
    """The track as plain JSON: NaN and infinities become ``null``."""
    from interp_assert.output_schema import versioned

    document = {
        "spec": track.spec,
        "model": track.model,
        "passed": track.passed,
        "smoke": track.smoke or None,
        "notes": list(track.notes),
        "unavailable": [{"checkpoint": c.label, "reason": reason} for c, reason in track.unavailable],
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
                        "unavailable": cell.unavailable,
                    }
                    for c, cell in zip(track.checkpoints, row.cells, strict=True)
                ],
            }
            for row in track.rows
        ],
    }
    return versioned("track", finite(document))


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
