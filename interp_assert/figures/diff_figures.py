"""Figures of a difference between two models (base and checkpoint): numbers in, PNG files out.

Same conventions as :mod:`interp_assert.figures.heatmaps` (bare ``Figure`` objects, Agg, atomic
writes). A delta is always checkpoint minus base, drawn on a diverging map centred on 0:
red where the checkpoint scores higher, blue where it scores lower.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from interp_assert.figures.heatmaps import FAILED, LABEL_COLOURS, save
from interp_assert.vocab import LABELS, parse_head


def delta_heatmap(
    path: Path,
    base: np.ndarray,
    checkpoint: np.ndarray,
    title: str,
    marked: Sequence[str] = (),
    *,
    difference: str = "checkpoint - base",
) -> Path:
    """Layers (x) by heads (y): checkpoint - base per head, symmetric colour scale; ``marked`` heads
    outlined. ``difference`` names what was subtracted from what (colour bar); the title states the
    largest change measured, not the colour scale's floor."""
    delta = checkpoint - base
    n_layers, n_heads = delta.shape
    finite = np.abs(delta[np.isfinite(delta)])
    limit = max(float(finite.max()) if finite.size else 0.0, 0.05)  # a flat map stays pale, not saturated
    figure = Figure(figsize=(max(5.0, 0.3 * n_layers + 2.2), max(2.6, 0.3 * n_heads + 1.6)))
    axes = figure.add_subplot()
    image = axes.imshow(
        np.ma.masked_invalid(delta.T), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest"
    )
    axes.set_xlabel("layer")
    axes.set_ylabel("head")
    axes.set_xticks(range(0, n_layers, 1 if n_layers <= 40 else 2))
    axes.set_yticks(range(n_heads))
    axes.tick_params(labelsize=7)
    figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02, label=difference)
    for name in marked:
        layer, head = parse_head(name)
        if 0 <= layer < n_layers and 0 <= head < n_heads:
            axes.add_patch(Rectangle((layer - 0.5, head - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.0))
    axes.set_title(delta_title(title, base, checkpoint), fontsize=9)
    return save(figure, path)


def delta_title(title: str, base: np.ndarray, checkpoint: np.ndarray) -> str:
    """The title with the largest |checkpoint - base| measured (and the colour scale's floor when
    the map is paler than its scale)."""
    delta = np.abs(checkpoint - base)
    finite = delta[np.isfinite(delta)]
    largest = float(finite.max()) if finite.size else 0.0
    floor = "" if largest >= 0.05 else " (colour scale to 0.05)"
    return f"{title}\nlargest |change| {largest:.3g}{floor}"


def norms_overlay(path: Path, base: np.ndarray, checkpoint: np.ndarray, title: str) -> Path:
    """Mean hidden-state norm per index for both models on one axis."""
    figure = Figure(figsize=(8.0, 3.8))
    axes = figure.add_subplot()
    index = np.arange(len(base))
    axes.plot(index, base, marker="o", markersize=3, label="base")
    axes.plot(index[: len(checkpoint)], checkpoint, marker="s", markersize=3, linestyle="--", label="checkpoint")
    both = np.concatenate([base, checkpoint])
    positive = both[both > 0]
    if positive.size and positive.max() / positive.min() > 30:
        axes.set_yscale("log")
    axes.set_xlabel("hidden-state index (0 = embeddings; last = last block, before the final norm)")
    axes.set_ylabel("mean L2 norm (positions >= 1)")
    axes.legend(fontsize=8, loc="upper left")
    axes.set_title(title, fontsize=10)
    return save(figure, path)


def fractions_side_by_side(path: Path, base: np.ndarray, checkpoint: np.ndarray, title: str) -> Path:
    """Per layer, the label fractions of base (left bar) and checkpoint (right bar, hatched)."""
    n_layers, n_heads = base.shape
    figure = Figure(figsize=(max(7.0, 0.4 * n_layers + 3.0), 3.8))
    axes = figure.add_subplot()
    width = 0.4
    for offset, labels, hatch in ((-width / 2, base, ""), (width / 2, checkpoint, "//")):
        bottom = np.zeros(n_layers)
        for label in LABELS:
            share = (labels == label).sum(axis=1) / n_heads
            axes.bar(
                np.arange(n_layers) + offset, share, bottom=bottom, width=width * 0.95, color=LABEL_COLOURS[label],
                hatch=hatch, edgecolor="white" if hatch else None, linewidth=0,
                label=label if not hatch else None,
            )  # fmt: skip
            bottom += share
    changed = (base != checkpoint).sum(axis=1)
    for layer in np.nonzero(changed)[0]:
        axes.text(float(layer), 1.02, str(int(changed[layer])), ha="center", fontsize=6.5, color=FAILED)
    axes.set_xlim(-0.6, n_layers - 0.4)
    axes.set_ylim(0, 1.12)
    axes.set_xticks(range(n_layers))
    axes.tick_params(labelsize=7)
    axes.set_xlabel("layer (left bar: base, right hatched bar: checkpoint; red: heads whose label changed)")
    axes.set_ylabel("fraction of heads")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.set_title(title, fontsize=10)
    return save(figure, path)


def drift_by_layer(path: Path, beyond: dict[str, np.ndarray], title: str) -> Path:
    """Per layer, how many fingerprint values moved beyond tolerance, stacked by role."""
    figure = Figure(figsize=(8.0, 3.6))
    axes = figure.add_subplot()
    n_layers = max((len(v) for v in beyond.values()), default=0)
    bottom = np.zeros(n_layers)
    for role, counts in beyond.items():
        axes.bar(range(len(counts)), counts, bottom=bottom[: len(counts)], label=role, width=0.85)
        bottom[: len(counts)] += counts
    axes.set_xlabel("layer")
    axes.set_ylabel("head scores beyond tolerance")
    if beyond:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.set_title(title, fontsize=10, color=FAILED if bottom.sum() else "black")
    return save(figure, path)
