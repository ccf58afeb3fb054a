"""Gates over a training run's checkpoints (``pytest --interp-checkpoints``): one test item per
expectation that passes or fails by what the run needs, with each checkpoint's cell as detail.

- ``last`` (the default): the expectation holds on the last checkpoint (earlier ones are history);
- ``by:STEP``: it holds on every checkpoint from step STEP on ("forms by step STEP and holds after");
- ``never-breaks``: it forms at some checkpoint and never fails on a later one;
- ``each``: one item per (expectation, checkpoint), each of which must hold (the strictest).

The cells come from the same evaluation ``interp-assert track`` runs (one checkpoint loaded at a
time), so the gate and ``track``'s table agree. Nothing here imports torch.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

GateKind = Literal["last", "by", "never-breaks", "each"]
FORMS = "last, never-breaks, by:STEP (e.g. by:500) or each"
WIDTH = 120


@dataclass(frozen=True)
class Gate:
    kind: GateKind
    step: int | None = None

    def __str__(self) -> str:
        return f"by:{self.step}" if self.kind == "by" else self.kind

    @property
    def rule(self) -> str:
        return {
            "last": "holds on the last checkpoint",
            "by": f"forms by step {self.step} and holds after",
            "never-breaks": "never breaks once formed",
            "each": "holds on every checkpoint",
        }[self.kind]


def parse_gate(text: str) -> Gate:
    value = text.strip()
    if value in ("last", "never-breaks", "each"):
        return Gate(value)  # type: ignore[arg-type]
    name, sep, step = value.partition(":")
    if name == "by" and sep and step.strip().isdigit():
        return Gate("by", int(step))
    raise ValueError(f"--interp-gate {text!r} is not a gate; use {FORMS}")


@dataclass(frozen=True)
class Verdict:
    passed: bool
    headline: str
    unavailable: tuple[str, ...] = ()  # "label: reason" of checkpoints the gate needed but could not load


def verdict(row: Any, checkpoints: Sequence[Any], gate: Gate) -> Verdict:
    """Whether ``row`` (a :class:`~interp_assert.commands.tracking.Row`) passes ``gate`` over ``checkpoints``."""
    cells = row.cells
    if gate.kind == "last":
        needed = [len(cells) - 1]
    elif gate.kind == "by":
        if any(c.step is None for c in checkpoints):
            raise ValueError(
                f"--interp-gate {gate} needs a step number in every checkpoint's name; use last or never-breaks"
            )
        needed = [i for i, c in enumerate(checkpoints) if c.step >= (gate.step or 0)]
        if not needed:
            last = checkpoints[-1].step
            raise ValueError(
                f"--interp-gate {gate}: no checkpoint is at step {gate.step} or later (the last is {last})"
            )
    else:
        needed = list(range(len(cells)))
    missing = tuple(f"{checkpoints[i].label}: {cells[i].error}" for i in needed if cells[i].unavailable)
    if missing:
        return Verdict(False, "", missing)
    label = checkpoints[-1].label
    if gate.kind == "last":
        cell = cells[-1]
        if cell.passed:
            return Verdict(True, f"holds on the last checkpoint ({label}): {cell.shown}")
        return Verdict(False, f"fails on the last checkpoint ({label}): {cell.headline}")
    if gate.kind == "by":
        failing = [i for i in needed if not cells[i].passed]
        if not failing:
            return Verdict(True, f"holds on all {len(needed)} checkpoints from step {gate.step} on")
        first = failing[0]
        return Verdict(
            False,
            f"does not hold by step {gate.step}: fails on {len(failing)} of the {len(needed)} checkpoints from "
            f"step {gate.step} on, first {checkpoints[first].shown}: {cells[first].headline}",
        )
    forms, breaks = row.forms, row.breaks
    if forms is None:
        return Verdict(False, f"never holds on any of the {len(cells)} checkpoints; last: {cells[-1].headline}")
    if breaks is not None:
        return Verdict(
            False,
            f"forms at {checkpoints[forms].shown} and breaks at {checkpoints[breaks].shown}: {cells[breaks].headline}",
        )
    return Verdict(True, f"forms at {checkpoints[forms].shown} and never breaks after")


def cell_lines(row: Any, checkpoints: Sequence[Any]) -> list[str]:
    """Every checkpoint's cell, wrapped for a CI log: ``checkpoint-0 FAIL 0.0592 | checkpoint-50 0.0589 | ...``."""
    parts = []
    for checkpoint, cell in zip(checkpoints, row.cells, strict=True):
        shown = "UNAVAILABLE" if cell.unavailable else ("" if cell.passed else "FAIL ") + cell.shown
        parts.append(f"{checkpoint.label} {shown}")
    return textwrap.wrap("cells: " + " | ".join(parts), WIDTH, subsequent_indent="    ", break_long_words=False)


def junit_cells(row: Any, checkpoints: Sequence[Any]) -> list[tuple[str, object]]:
    """``cell.<label>`` -> ``pass 0.8272`` / ``fail 0.0592`` / ``unavailable <reason>``, per checkpoint."""
    found: list[tuple[str, object]] = []
    for checkpoint, cell in zip(checkpoints, row.cells, strict=True):
        word = "unavailable" if cell.unavailable else ("pass" if cell.passed else "fail")
        found.append((f"cell.{checkpoint.label}", f"{word} {cell.error if cell.unavailable else cell.shown}"))
    return found
