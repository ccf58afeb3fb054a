"""``interp-assert track --report DIR``: one small figure per expectation, its value across the
checkpoints (x = step), its bounds drawn as lines over a shaded band, failed checkpoints marked;
for a probe, its held-out AUROC at every block as one curve per checkpoint; every ``sae_quality``
value across the checkpoints in one figure.

An expectation whose value is not a number (a list of top heads, a generated text) is drawn as
a pass/fail strip with the value written at each checkpoint. Numbers come from the
:class:`~interp_assert.commands.tracking.Track` itself (no model is loaded), so the page shows what the
table said. Every file is written atomically.
"""

from __future__ import annotations

import html
import io
import math
import re
from pathlib import Path

from matplotlib.figure import Figure

from interp_assert import atomic
from interp_assert.commands.tracking import Row, Track, milestones, print_track
from interp_assert.figures.heatmaps import FAILED, PASSED, save
from interp_assert.figures.page import BASE_STYLE

STYLE = BASE_STYLE + "figcaption { max-width: 30em; }\nfigcaption.failed { color: #c62828; }\n"


def steps_axis(track: Track) -> tuple[list[float], str]:
    """x positions: the step numbers where every checkpoint has a distinct one, else 0, 1, 2, ..."""
    steps = [c.step for c in track.checkpoints]
    if all(s is not None for s in steps) and len(set(steps)) == len(steps):
        return [float(s) for s in steps if s is not None], "step"
    return [float(i) for i in range(len(steps))], "checkpoint (in the order given)"


def _numeric(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def value_figure(path: Path, row: Row, track: Track) -> Path:
    x, x_label = steps_axis(track)
    values = [_numeric(cell.value) for cell in row.cells]
    figure = Figure(figsize=(4.6, 2.8))
    axes = figure.add_subplot()
    if any(v is not None and math.isfinite(v) for v in values):
        y = [math.nan if v is None else v for v in values]
        axes.plot(x, y, color="#1f77b4", marker="o", markersize=4, linewidth=1.2, zorder=2)
        low, high = row.bound_low, row.bound_high
        if low is not None or high is not None:
            finite = [v for v in y if math.isfinite(v)] + [b for b in (low, high) if b is not None]
            span = (max(finite) - min(finite)) or 1.0
            bottom = low if low is not None else min(finite) - 0.1 * span
            top = high if high is not None else max(finite) + 0.1 * span
            axes.axhspan(bottom, top, color=PASSED, alpha=0.12, zorder=0, label="within bounds")
            for bound, name in ((low, "at_least"), (high, "at_most")):
                if bound is not None:
                    axes.axhline(bound, color=PASSED, linestyle="--", linewidth=1.0, zorder=1)
                    axes.annotate(f"{name} {bound:g}", (x[0], bound), fontsize=7, color="#1b5e20",
                                  xytext=(2, 2), textcoords="offset points")  # fmt: skip
        failed = [(xi, yi) for xi, yi, cell in zip(x, y, row.cells, strict=True) if not cell.passed]
        if failed:
            failed_x, failed_y = [p[0] for p in failed], [p[1] for p in failed]
            axes.scatter(failed_x, failed_y, marker="x", s=50, color=FAILED, zorder=3, label="fails")
        if any(not math.isfinite(v) for v in y):
            axes.set_title("gaps: not measurable there", fontsize=7, loc="right")
        axes.set_ylabel(_value_name(row), fontsize=8)
    else:
        outcome = [1.0 if cell.passed else 0.0 for cell in row.cells]
        colours = [PASSED if cell.passed else FAILED for cell in row.cells]
        axes.scatter(x, outcome, c=colours, s=40, zorder=2)
        axes.plot(x, outcome, color="#999999", linewidth=0.8, zorder=1)
        for xi, yi, cell in zip(x, outcome, row.cells, strict=True):
            axes.annotate(cell.shown[:18], (xi, yi), fontsize=6, rotation=30, xytext=(0, 5), textcoords="offset points")
        axes.set_yticks([0.0, 1.0], ["fails", "holds"])
        axes.set_ylim(-0.4, 1.8)
    axes.set_xlabel(x_label, fontsize=8)
    axes.tick_params(labelsize=7)
    figure.suptitle(f"{row.name} ({row.kind})", fontsize=9)
    return save(figure, path)


def _value_name(row: Row) -> str:
    return {"dominant_layer": "dominant layer", "snapshot": "values moved", "hidden_norm_trend": "worst step"}.get(
        row.kind, "value"
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def representation_figures(track: Track, directory: Path) -> list[tuple[str, str]]:
    """A probe's held-out AUROC by block, one curve per checkpoint; every ``sae_quality`` value
    across the checkpoints in one figure. (file, caption) pairs."""
    from interp_assert.figures.representation_figures import curves_by_layer, metrics_by_checkpoint

    made = []
    for row in track.rows:
        curves = [(c.label, cell.series) for c, cell in zip(track.checkpoints, row.cells, strict=True) if cell.series]
        if not curves:
            continue
        file = f"track-{_slug(row.name)}-by-block.png"
        layer = _marked_block(row)
        title = f"{row.name}: held-out AUROC at every block, per checkpoint"
        curves_by_layer(directory / file, curves, title, marked_layer=layer, at_least=row.bound_low)
        caption = f"{row.name}: held-out AUROC by block"
        if layer is not None:
            caption += f"; at block {layer}: " + ", ".join(
                f"{label} {values[layer]:.3f}" for label, values in curves if layer < len(values)
            )
        if row.bound_low is not None:
            low = row.bound_low
            first = [(label, next((i for i, v in enumerate(values) if v >= low), None)) for label, values in curves]
            caption += f"; first block at or above {low:g}: " + ", ".join(
                f"{label} {'none' if block is None else block}" for label, block in first
            )
        made.append((file, caption))
    quality = [row for row in track.rows if row.kind == "sae_quality"]
    if quality:
        x, x_label = steps_axis(track)
        series = [(row.name, [_number_or_nan(cell.value) for cell in row.cells]) for row in quality]
        file = "track-sae-quality.png"
        metrics_by_checkpoint(directory / file, x, x_label, series, "SAE quality per checkpoint")
        last = ", ".join(f"{name} {values[-1]:.3f}" for name, values in series)
        made.append((file, f"SAE quality per checkpoint; on the last: {last}"))
    return made


def _number_or_nan(value: object) -> float:
    number = _numeric(value)
    return math.nan if number is None else number


def _marked_block(row: Row) -> int | None:
    """The block whose value the expectation asserts (``measured.block`` of its evaluations), or None."""
    blocks = {cell.measured.get("block") for cell in row.cells if cell.series}
    block = blocks.pop() if len(blocks) == 1 else None
    return int(block) if isinstance(block, float) else None


def write_track_report(track: Track, directory: Path) -> Path:
    """Write ``directory/index.html`` and one PNG per expectation; returns the index."""
    directory.mkdir(parents=True, exist_ok=True)
    esc = html.escape
    figures = []
    for row in track.rows:
        file = f"track-{_slug(row.name)}.png"
        value_figure(directory / file, row, track)
        last_failed = not row.cells[-1].passed
        caption = f"{row.name}: {milestones(row, track.checkpoints)}"
        figures.append(
            f"<figure id='{esc(file)}'><img src='{esc(file)}' alt='{esc(caption)}'>"
            f"<figcaption class='{'failed' if last_failed else ''}'>{esc(caption)}</figcaption></figure>"
        )
    figures += [
        f"<figure id='{esc(file)}'><img src='{esc(file)}' alt='{esc(caption)}'><figcaption>{esc(caption)}</figcaption>"
        "</figure>"
        for file, caption in representation_figures(track, directory)
    ]
    table = io.StringIO()
    print_track(track, table)
    name = esc(Path(track.spec).name)
    verdict = "every expectation holds on the last checkpoint" if track.passed else (
        f"{sum(not r.cells[-1].passed for r in track.rows)} fail on the last checkpoint"
    )  # fmt: skip
    smoke = f"<p class='failed'><strong>{esc(track.smoke.upper())}</strong>: not a full measurement</p>"
    smoke = smoke if track.smoke else ""
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>interp_assert track: {name}</title><style>{STYLE}</style></head><body>"
        + smoke
        + f"<h1>Track of {name}</h1>"
        f"<p>{len(track.checkpoints)} checkpoints in place of <code>{esc(track.model)}</code>, from "
        f"<code>{esc(track.checkpoints[0].given)}</code> to <code>{esc(track.checkpoints[-1].given)}</code>: "
        f"{esc(verdict)}.</p>"
        f"<h2>Across checkpoints</h2><div class='figures'>{''.join(figures)}</div>"
        f"<h2>Table</h2><pre>{esc(table.getvalue())}</pre></body></html>\n"
    )
    index = directory / "index.html"
    atomic.write_text(index, page)
    return index
