"""Two fingerprints -> what changed, in words a reviewer acts on, by layer and role.

"layers 3-9: 38 heads lost first_token (now focused)" says more than a list of the ten
heads that moved most. Pure: reads the fingerprints' series, no model, no files.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Protocol


class Fingerprint(Protocol):
    """What is read here of :class:`interp_assert.drift.fingerprint.Fingerprint` (no import: it imports us)."""

    @property
    def values(self) -> dict[str, list[float]]: ...

    @property
    def labels(self) -> dict[str, list[str]]: ...


MAX_LINES = 8
_SCORE_KEY = re.compile(r"^role_scores\.(\w+)\.L(\d+)$")
_LABEL_KEY = re.compile(r"^role_labels\.L(\d+)$")


def summarise(before: Fingerprint, after: Fingerprint, atol: float) -> tuple[str, ...]:
    """Label changes grouped by transition and layer span, then per-role mean moves by layer
    (runs of consecutive layers whose heads moved the same way by more than ``atol`` on average)."""
    return tuple(_label_lines(before, after)[:MAX_LINES] + _score_lines(before, after, atol)[:MAX_LINES])


def span(layers: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"layers 3-5, 9"``."""
    runs: list[list[int]] = []
    for layer in sorted(set(layers)):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    parts = [f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}" for run in runs]
    return ("layers " if len(layers) > 1 else "layer ") + ", ".join(parts)


def _label_lines(before: Fingerprint, after: Fingerprint) -> list[str]:
    changes: dict[tuple[str, str], list[int]] = defaultdict(list)  # (old, new) -> layer of each changed head
    for key, old_labels in before.labels.items():
        match = _LABEL_KEY.match(key)
        new_labels = after.labels.get(key)
        if match is None or new_labels is None:
            continue
        layer = int(match.group(1))
        for old, new in zip(old_labels, new_labels, strict=False):
            if old != new:
                changes[(old, new)].append(layer)
    ranked = sorted(changes.items(), key=lambda item: (-len(item[1]), item[0]))
    return [
        f"{span(layers)}: {len(layers)} head{'s' if len(layers) > 1 else ''} lost {old} (now {new})"
        for (old, new), layers in ranked
    ]


def _score_lines(before: Fingerprint, after: Fingerprint, atol: float) -> list[str]:
    shifts: dict[str, dict[int, float]] = defaultdict(dict)  # role -> layer -> mean change per head
    for key, old in before.values.items():
        match = _SCORE_KEY.match(key)
        new = after.values.get(key)
        if match is None or new is None:
            continue
        deltas = [b - a for a, b in zip(old, new, strict=False) if not (math.isnan(a) or math.isnan(b))]
        if deltas:
            shifts[match.group(1)][int(match.group(2))] = sum(deltas) / len(deltas)
    found: list[tuple[float, str]] = []
    for role, by_layer in shifts.items():
        for run in _runs(by_layer, atol):
            mean = sum(by_layer[layer] for layer in run) / len(run)
            peak = max(run, key=lambda layer: abs(by_layer[layer]))
            verb = "rose" if mean > 0 else "fell"
            found.append(
                (
                    abs(mean) * len(run),
                    f"{role} {verb} in {span(run)}: mean {mean:+.3f} per head"
                    + (f" (most at layer {peak}: {by_layer[peak]:+.3f})" if len(run) > 1 else ""),
                )
            )
    return [line for _, line in sorted(found, key=lambda item: -item[0])]


def _runs(by_layer: dict[int, float], atol: float) -> list[list[int]]:
    """Consecutive layers whose mean change exceeds ``atol`` with the same sign."""
    runs: list[list[int]] = []
    previous: tuple[int, float] | None = None
    for layer in sorted(by_layer):
        value = by_layer[layer]
        if abs(value) <= atol:
            previous = None
            continue
        if previous is not None and layer == previous[0] + 1 and (value > 0) == (previous[1] > 0):
            runs[-1].append(layer)
        else:
            runs.append([layer])
        previous = (layer, value)
    return runs


def role_table(fingerprint: Fingerprint, role: str) -> list[list[float]] | None:
    """A role's scores as ``[layer][head]`` from a fingerprint's series, or ``None`` if not recorded."""
    rows: list[list[float]] = []
    while (key := f"role_scores.{role}.L{len(rows)}") in fingerprint.values:
        rows.append(list(fingerprint.values[key]))
    return rows or None


def beyond_by_layer(before: Fingerprint, after: Fingerprint, atol: float) -> dict[str, list[int]]:
    """Per role, per layer: how many head scores moved by more than ``atol``."""
    counts: dict[str, dict[int, int]] = defaultdict(dict)
    for key, old in before.values.items():
        match = _SCORE_KEY.match(key)
        new = after.values.get(key)
        if match is None or new is None:
            continue
        moved = sum(int(abs(b - a) > atol) for a, b in zip(old, new, strict=False) if not math.isnan(b - a))
        counts[match.group(1)][int(match.group(2))] = moved
    n_layers = 1 + max((layer for by_layer in counts.values() for layer in by_layer), default=-1)
    return {role: [by_layer.get(layer, 0) for layer in range(n_layers)] for role, by_layer in counts.items()}
