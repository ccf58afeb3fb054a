"""A sparse-autoencoder feature's top-activating tokens, drawn as highlighted text."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from interp_assert.figures.heatmaps import save


def top_tokens(path: Path, examples: Sequence[tuple[float, str, str]], title: str) -> Path:
    """One row per (activation, text before, token): the context in grey, the token on a background
    whose colour grows with its activation (relative to the largest shown), the value at the right."""
    rows = list(examples)
    figure = Figure(figsize=(9.0, 0.6 + 0.32 * max(len(rows), 1)))
    axes = figure.add_axes((0.01, 0.02, 0.98, 0.9 - 0.3 / max(len(rows), 1)))
    axes.set_axis_off()
    axes.set_xlim(0, 1)
    axes.set_ylim(len(rows) + 0.5, 0.5)
    top = max((value for value, _, _ in rows), default=0.0) or 1.0
    colours = colormaps["Oranges"]
    for row, (value, before, token) in enumerate(rows, start=1):
        context = before.replace("\n", "\\n")[-60:]
        axes.text(0.62, row, context, ha="right", va="center", fontsize=8, color="#555555", family="monospace")
        axes.text(
            0.625, row, token.replace("\n", "\\n")[:24], ha="left", va="center", fontsize=8, family="monospace",
            bbox={"facecolor": colours(0.15 + 0.85 * max(value, 0.0) / top), "edgecolor": "none", "pad": 1.5},
        )  # fmt: skip
        axes.text(0.99, row, f"{value:.2f}", ha="right", va="center", fontsize=8)
    figure.suptitle(title, fontsize=10)
    return save(figure, path)
