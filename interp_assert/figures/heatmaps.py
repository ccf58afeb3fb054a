"""Figures for reports and failure artifacts: numbers in, PNG files out.

Figures are drawn on bare ``matplotlib.figure.Figure`` objects, never through
``pyplot``: no global state, no display, and the Agg renderer whatever the
user's matplotlib backend is. Red always means a failed expectation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from interp_assert import atomic
from interp_assert.vocab import LABELS, parse_head

FAILED = "#d62728"
PASSED = "#2ca02c"
DPI = 100
LABEL_COLOURS = {
    "previous_token": "#1f77b4",
    "first_token": "#ff7f0e",
    "self": "#9467bd",
    "focused": "#17becf",
    "broad": "#c7c7c7",
}


@dataclass(frozen=True)
class Span:
    """An expectation drawn over a range of layers (or hidden-state indices)."""

    first: int
    last: int
    label: str
    passed: bool
    at_least: float | None = None
    at_most: float | None = None
    series: str | None = None  # which plotted line the bounds apply to


def save(figure: Figure, path: Path) -> Path:
    """Render to a temporary file beside ``path`` and rename it: an interrupted write leaves the old picture."""
    FigureCanvasAgg(figure)
    with atomic.replacing(path) as temporary:
        figure.savefig(temporary, dpi=DPI, bbox_inches="tight")
    return path


def role_heatmap(
    path: Path, table: np.ndarray, title: str, named: Iterable[str] = (), failed: Iterable[str] = ()
) -> Path:
    """Layers (x) by heads (y), one cell per head's score in [0, 1]; named heads outlined, failed ones in red."""
    n_layers, n_heads = table.shape
    figure = Figure(figsize=(max(5.0, 0.3 * n_layers + 2.2), max(2.6, 0.3 * n_heads + 1.6)))
    axes = figure.add_subplot()
    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")  # grey: a score that could not be measured
    image = axes.imshow(
        np.ma.masked_invalid(table.T), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
    )
    axes.set_xlabel("layer")
    axes.set_ylabel("head")
    step = 1 if n_layers <= 40 else 2
    axes.set_xticks(range(0, n_layers, step))
    axes.set_yticks(range(n_heads))
    axes.tick_params(labelsize=7)
    figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    failed_set = set(failed)
    for name in dict.fromkeys([*named, *failed_set]):
        layer, head = parse_head(name)
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            continue
        colour = FAILED if name in failed_set else "white"
        axes.add_patch(Rectangle((layer - 0.5, head - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=3.2))
        axes.add_patch(Rectangle((layer - 0.5, head - 0.5), 1, 1, fill=False, edgecolor=colour, linewidth=1.8))
        value = table[layer, head]
        text = "n/a" if np.isnan(value) else f"{value:.2f}"
        axes.text(layer, head, text, ha="center", va="center", fontsize=5.5, color="white" if value < 0.6 else "black")
    axes.set_title(title, fontsize=9, color=FAILED if failed_set else "black")
    return save(figure, path)


def pattern_heatmap(path: Path, pattern: np.ndarray, tokens: Sequence[str], title: str, failed: bool = False) -> Path:
    """One head's attention ``[T, T]``: queries down, keys across, tokens on both axes."""
    size = len(tokens)
    inches = float(np.clip(2.5 + 0.12 * size, 5.0, 12.0))
    figure = Figure(figsize=(inches + 1.0, inches))
    axes = figure.add_subplot()
    image = axes.imshow(pattern, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    shown = [readable_token(token) for token in tokens]
    step = 1 if size <= 80 else 2
    font = float(np.clip(480 / max(size, 1), 3.5, 8.0)) * step
    positions = list(range(0, size, step))
    axes.set_xticks(positions, [shown[i] for i in positions], rotation=90, fontsize=font)
    axes.set_yticks(positions, [f"{shown[i]} {i}" for i in positions], fontsize=font)
    axes.set_xlabel("key (attended-to token)")
    axes.set_ylabel("query token and position")
    figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    if failed:
        for spine in axes.spines.values():
            spine.set_edgecolor(FAILED)
            spine.set_linewidth(3)
    axes.set_title(title, fontsize=10, color=FAILED if failed else "black")
    return save(figure, path)


def readable_token(token: str) -> str:
    """Word-start markers of BPE/SentencePiece shown as a middle dot ('Ġword' -> '·word'); long tokens cut."""
    return token.replace("Ġ", "·").replace("Ċ", "\\n").replace("▁", "·")[:16]


def norms_plot(path: Path, norms: np.ndarray, with_first: np.ndarray | None, title: str, spans: Sequence[Span]) -> Path:
    """Mean hidden-state norm per index (0 = embeddings); expectation ranges shaded green or red."""
    figure = Figure(figsize=(8.0, 3.8))
    axes = figure.add_subplot()
    index = np.arange(len(norms))
    axes.plot(index, norms, marker="o", markersize=3, label="positions >= 1")
    if with_first is not None:
        axes.plot(index, with_first, marker=".", markersize=3, linestyle="--", label="all positions")
    positive = norms[norms > 0]
    if positive.size and positive.max() / positive.min() > 30:
        axes.set_yscale("log")
    for span in spans:
        colour = PASSED if span.passed else FAILED
        axes.axvspan(span.first, span.last, color=colour, alpha=0.10 if span.passed else 0.22, linewidth=0)
        axes.annotate(
            span.label, ((span.first + span.last) / 2, 1.0), xycoords=("data", "axes fraction"),
            ha="center", va="bottom", fontsize=6.5, color=colour, rotation=0,
        )  # fmt: skip
    axes.set_xlabel("hidden-state index (0 = embeddings; last = last block, before the final norm)")
    axes.set_ylabel("mean L2 norm")
    axes.legend(fontsize=7, loc="upper left")
    axes.set_title(title, fontsize=10, pad=16, color=FAILED if any(not s.passed for s in spans) else "black")
    return save(figure, path)


def fractions_plot(path: Path, labels: np.ndarray, title: str, spans: Sequence[Span]) -> Path:
    """Fraction of each layer's heads carrying each label, stacked (the seed's layer progression)."""
    n_layers, n_heads = labels.shape
    figure = Figure(figsize=(max(6.0, 0.25 * n_layers + 3.0), 3.6))
    axes = figure.add_subplot()
    bottom = np.zeros(n_layers)
    for label in LABELS:
        share = (labels == label).sum(axis=1) / n_heads
        axes.bar(range(n_layers), share, bottom=bottom, color=LABEL_COLOURS[label], label=label, width=0.85)
        bottom += share
    for span in spans:
        colour = PASSED if span.passed else FAILED
        axes.add_patch(
            Rectangle(
                (span.first - 0.5, 0), span.last - span.first + 1, 1.0, fill=False, edgecolor=colour,
                linewidth=2.5 if not span.passed else 1.2, linestyle="-" if not span.passed else "--",
            )
        )  # fmt: skip
        axes.text((span.first + span.last) / 2, 1.02, span.label, ha="center", fontsize=6.5, color=colour)
    axes.set_xlim(-0.6, n_layers - 0.4)
    axes.set_ylim(0, 1.12)
    axes.set_xlabel("layer")
    axes.set_ylabel("fraction of heads")
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.set_title(title, fontsize=10, color=FAILED if any(not s.passed for s in spans) else "black")
    return save(figure, path)


def stats_plot(path: Path, stats: dict[str, np.ndarray], title: str, spans: Sequence[Span]) -> Path:
    """Attention statistics per layer, with each expectation's bounds drawn over its layers."""
    figure = Figure(figsize=(8.0, 3.6))
    axes = figure.add_subplot()
    colours = {}
    for name, values in stats.items():
        (line,) = axes.plot(range(len(values)), values, marker="o", markersize=3, label=name)
        colours[name] = line.get_color()
    for span in spans:
        colour = FAILED if not span.passed else colours.get(span.series or "", "grey")
        for bound in (span.at_least, span.at_most):
            if bound is not None:
                axes.hlines(bound, span.first - 0.3, span.last + 0.3, colors=colour, linestyles="--", linewidth=1.5)
        if not span.passed:
            axes.axvspan(span.first - 0.5, span.last + 0.5, color=FAILED, alpha=0.12, linewidth=0)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("layer")
    axes.set_ylabel("value")
    axes.legend(fontsize=7, loc="lower right")
    axes.set_title(title, fontsize=10, color=FAILED if any(not s.passed for s in spans) else "black")
    return save(figure, path)


def lens_plot(
    path: Path,
    agreement: np.ndarray,
    kl: np.ndarray,
    title: str,
    *,
    passed: bool,
    level: float | None = None,
    within: tuple[int, int] | None = None,
    kl_span: tuple[int, int] | None = None,
) -> Path:
    """The logit lens by depth: agreement with the final top-1 token (left axis) and KL from the
    final distribution (right axis, log scale); the expectation's level, window and KL range drawn."""
    colour = PASSED if passed else FAILED
    figure = Figure(figsize=(8.0, 3.8))
    axes = figure.add_subplot()
    index = np.arange(len(agreement))
    axes.plot(index, agreement, marker="o", markersize=3, color="#1f77b4", label="top-1 agreement")
    axes.set_ylim(-0.02, 1.05)
    axes.set_ylabel("agreement with the final top-1", color="#1f77b4")
    if level is not None:
        axes.axhline(level, color=colour, linestyle=":", linewidth=1)
    if within is not None:
        axes.axvspan(within[0] - 0.5, within[1] + 0.5, color=colour, alpha=0.12, linewidth=0)
    kl_axes = axes.twinx()
    shown = np.where(kl > 0, kl, np.nan)  # the last index is 0 by construction: nothing to draw on a log axis
    kl_axes.plot(index, shown, marker="s", markersize=3, color="#ff7f0e", label="KL(final || lens)")
    if np.isfinite(shown).any():
        kl_axes.set_yscale("log")
    kl_axes.set_ylabel("KL, nats", color="#ff7f0e")
    if kl_span is not None:
        kl_axes.axvspan(kl_span[0], kl_span[1], color=colour, alpha=0.08, linewidth=0, hatch="//", fill=False)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("hidden-state index (0 = embeddings; last = last block, read through the final norm)")
    lines = axes.get_legend_handles_labels()[0] + kl_axes.get_legend_handles_labels()[0]
    axes.legend(lines, [str(line.get_label()) for line in lines], fontsize=7, loc="center right")
    axes.set_title(title, fontsize=10, color=colour if not passed else "black")
    return save(figure, path)


def ablation_plot(
    path: Path, named: str, effect: float, controls: Sequence[tuple[str, float]], title: str, *, passed: bool
) -> Path:
    """The loss change from ablating the named heads beside each random control set's, in nats."""
    figure = Figure(figsize=(8.0, 0.9 + 0.32 * (len(controls) + 1)))
    axes = figure.add_subplot()
    names = [named, *(f"random: {name}" for name, _ in controls)]
    values = [effect, *(value for _, value in controls)]
    colours = [PASSED if passed else FAILED] + ["#c7c7c7"] * len(controls)
    axes.barh(range(len(values)), values, color=colours)
    axes.set_yticks(range(len(values)), names, fontsize=7)
    axes.invert_yaxis()
    axes.axvline(0, color="black", linewidth=0.6)
    axes.set_xlabel("loss change when ablated, nats (grey: random heads from the same layers)")
    axes.set_title(title, fontsize=10, color="black" if passed else FAILED)
    return save(figure, path)


def effect_heatmap(
    path: Path, table: np.ndarray, title: str, named: Iterable[str] = (), failed: Iterable[str] = ()
) -> Path:
    """Layers (x) by heads (y) of signed effects (patching), blue positive, red negative, white 0;
    named heads outlined (failed ones in red) with their value written in."""
    n_layers, n_heads = table.shape
    limit = float(np.nanmax(np.abs(table))) or 1.0
    figure = Figure(figsize=(max(5.0, 0.3 * n_layers + 2.2), max(2.6, 0.3 * n_heads + 1.6)))
    axes = figure.add_subplot()
    image = axes.imshow(
        table.T, cmap=colormaps["RdBu"], vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest"
    )
    axes.set_xlabel("layer")
    axes.set_ylabel("head")
    axes.set_xticks(range(0, n_layers, 1 if n_layers <= 40 else 2))
    axes.set_yticks(range(n_heads))
    axes.tick_params(labelsize=7)
    figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    failed_set = set(failed)
    for name in dict.fromkeys([*named, *failed_set]):
        layer, head = parse_head(name)
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            continue
        colour = FAILED if name in failed_set else "black"
        axes.add_patch(Rectangle((layer - 0.5, head - 0.5), 1, 1, fill=False, edgecolor=colour, linewidth=1.8))
        axes.text(layer, head, f"{table[layer, head]:.2f}", ha="center", va="center", fontsize=5.5)
    axes.set_title(title, fontsize=9, color=FAILED if failed_set else "black")
    return save(figure, path)
