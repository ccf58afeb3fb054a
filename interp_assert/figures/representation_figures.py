"""Figures of SAE features and probes compared across models: numbers in, PNG files out.

- :func:`paired_panels`: base against checkpoint (``audit --report``), one small panel per
  number, since the numbers have different scales (an activation, an AUROC, a cosine, a shift in
  nats); the expectation's bound is a dashed line, a checkpoint bar that breaks it is red.
- :func:`curves_by_layer`: a value by layer, one line per checkpoint (``track --report``: probe
  AUROC by layer as training goes on).
- :func:`metrics_by_checkpoint`: several numbers per checkpoint, one panel each (``track
  --report``: an SAE's quality across a training run).

Same conventions as :mod:`interp_assert.figures.heatmaps` (bare ``Figure`` objects, Agg, atomic writes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from interp_assert.figures.heatmaps import FAILED, PASSED, save

BASE_COLOUR = "#7f7f7f"
CHECKPOINT_COLOUR = "#1f77b4"


@dataclass(frozen=True)
class Pair:
    """One number on both models, with the bounds an expectation puts on it (if any)."""

    label: str
    base: float
    checkpoint: float
    at_least: float | None = None
    at_most: float | None = None

    def breaks(self, value: float) -> bool:
        if not math.isfinite(value):
            return True
        return (self.at_least is not None and value < self.at_least) or (
            self.at_most is not None and value > self.at_most
        )


def paired_panels(path: Path, pairs: Sequence[Pair], title: str) -> Path:
    """One panel per pair: a grey bar for the base, a blue (or red, when it breaks a bound) bar for
    the checkpoint, both values written above them, the bounds as dashed lines."""
    shown = list(pairs)
    figure = Figure(figsize=(max(3.0, 1.9 * len(shown) + 0.6), 3.0))
    for index, pair in enumerate(shown, start=1):
        axes = figure.add_subplot(1, len(shown), index)
        values = [pair.base, pair.checkpoint]
        colours = [
            FAILED if pair.breaks(pair.base) else BASE_COLOUR,
            FAILED if pair.breaks(pair.checkpoint) else CHECKPOINT_COLOUR,
        ]
        finite = [v if math.isfinite(v) else 0.0 for v in values]
        axes.bar([0, 1], finite, color=colours, width=0.7)
        marks = [b for b in (pair.at_least, pair.at_most) if b is not None]
        for bound in marks:
            axes.axhline(bound, color=PASSED, linestyle="--", linewidth=1.0)
        low = min([0.0, *finite, *marks])
        high = max([0.0, *finite, *marks])
        span = (high - low) or 1.0
        axes.set_ylim(low - 0.2 * span if low < 0 else 0.0, high + 0.22 * span)
        for x, value in enumerate(values):
            text = "nan" if not math.isfinite(value) else f"{value:.3g}"
            below = finite[x] < 0  # a negative bar's value under it, clear of the zero line
            where = finite[x] - 0.03 * span if below else finite[x] + 0.03 * span
            axes.text(x, where, text, ha="center", va="top" if below else "bottom", fontsize=7)
        axes.axhline(0.0, color="black", linewidth=0.5)
        axes.set_xticks([0, 1], ["base", "checkpoint"], fontsize=7)
        axes.tick_params(axis="y", labelsize=7)
        axes.set_title(pair.label, fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(top=0.78, wspace=0.55, left=0.08, right=0.98, bottom=0.12)
    return save(figure, path)


def curves_by_layer(
    path: Path,
    curves: Sequence[tuple[str, Sequence[float]]],
    title: str,
    *,
    marked_layer: int | None = None,
    at_least: float | None = None,
    y_label: str = "held-out AUROC",
) -> Path:
    """One line per (label, values by layer), coloured from light (first) to dark (last); the layer
    the expectation reads is shaded and its bound drawn."""
    figure = Figure(figsize=(7.0, 3.4))
    axes = figure.add_subplot()
    colours = colormaps["viridis"]
    for index, (label, values) in enumerate(curves):
        shade = colours(0.9 - 0.8 * index / max(len(curves) - 1, 1))
        axes.plot(range(len(values)), values, marker="o", markersize=2.5, linewidth=1.1, color=shade, label=label)
    if marked_layer is not None:
        axes.axvspan(marked_layer - 0.4, marked_layer + 0.4, color="#ffcc80", alpha=0.5, zorder=0)
    if at_least is not None:
        axes.axhline(at_least, color=PASSED, linestyle="--", linewidth=1.0)
    axes.set_xlabel("block (the residual stream leaving it)" + ("; shaded: the spec's layer" if marked_layer else ""))
    axes.set_ylabel(y_label)
    axes.tick_params(labelsize=7)
    if len(curves) <= 12:
        axes.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.set_title(title, fontsize=9)
    figure.subplots_adjust(right=0.78)
    return save(figure, path)


def metrics_by_checkpoint(
    path: Path, x: Sequence[float], x_label: str, series: Sequence[tuple[str, Sequence[float]]], title: str
) -> Path:
    """One panel per (metric, value per checkpoint), sharing the x axis (steps)."""
    figure = Figure(figsize=(max(4.0, 2.6 * len(series) + 0.6), 2.8))
    for index, (label, values) in enumerate(series, start=1):
        axes = figure.add_subplot(1, len(series), index)
        axes.plot(list(x), list(values), marker="o", markersize=3.5, linewidth=1.2, color=CHECKPOINT_COLOUR)
        axes.set_title(label, fontsize=8)
        axes.set_xlabel(x_label, fontsize=7)
        axes.tick_params(labelsize=7)
    figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(top=0.78, wspace=0.45, bottom=0.2, left=0.08, right=0.98)
    return save(figure, path)
