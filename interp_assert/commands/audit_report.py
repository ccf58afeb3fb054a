"""``interp-assert audit --report DIR``: an HTML page of what changed between base and checkpoint.

Per prompt set: a delta heatmap (checkpoint - base) per role score, both models' hidden-norm
curves on one axis, and per-layer head-label fractions side by side; per SAE quality, SAE feature
and probe expectation, its numbers on both models side by side (feature activation and rank,
probe AUROC, selectivity and cosine to the stored direction; see each property's
``audit_figures``) and where a feature fires most on each; per snapshot, where the
fingerprint moved by layer; per failed expectation about a head, that head's attention on
base and on checkpoint side by side. Numbers come from the audit's own runners (no new
model load), so the page shows what the table said.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interp_assert import atomic
from interp_assert.commands.audit import Audit, AuditRow, print_table
from interp_assert.drift.drift_summary import beyond_by_layer
from interp_assert.drift.fingerprint import DEFAULT_TOLERANCES
from interp_assert.errors import InterpAssertError
from interp_assert.figures import diff_figures, heatmaps
from interp_assert.figures.page import BASE_STYLE
from interp_assert.measure import head_tables as scores
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.properties import Expectation
from interp_assert.spec import SpecFile
from interp_assert.vocab import POSITIONAL_LABELS, ROLES, parse_head

LABEL_ROLES = (*POSITIONAL_LABELS, "focus")


@dataclass(frozen=True)
class _Picture:
    file: str
    section: str
    caption: str


def refuse_overwrite(directory: Path, *, force: bool) -> None:
    """A report (report -o, audit --report, track --report) goes only into a new or empty folder, or
    anywhere with ``force``: its files (index.html, figures named by expectation) could otherwise
    replace the user's own. The error names what the folder holds."""
    if directory.exists() and not directory.is_dir():
        raise InterpAssertError(f"{directory} exists and is not a folder; give a folder for the report")
    if force or not directory.exists():
        return
    held = sorted(path.name for path in directory.iterdir())
    if held:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise InterpAssertError(
            f"{directory} is not empty (it holds {shown}), and the report's files could replace them; "
            "give a new or empty folder, or pass --force to write the report there anyway"
        )


def write_audit_report(audit: Audit, spec: SpecFile, directory: Path) -> Path:
    """Write ``directory/index.html`` and its PNGs; returns the index."""
    directory.mkdir(parents=True, exist_ok=True)
    base, checkpoint = audit.runners["base"], audit.runners["checkpoint"]
    pictures: list[_Picture] = []
    for prompt_name in _prompt_sets(spec):
        pictures += _prompt_set_figures(spec, prompt_name, base, checkpoint, directory)
    for name, drift in audit.drifts.items():
        if drift.before is not None and drift.after is not None:
            atol = DEFAULT_TOLERANCES["role_scores"].atol
            counts = {k: np.array(v) for k, v in beyond_by_layer(drift.before, drift.after, atol).items()}
            file = f"snapshot-{_slug(name)}-drift.png"
            title = f"snapshot {name!r}: where the fingerprint moved"
            diff_figures.drift_by_layer(directory / file, counts, title)
            pictures.append(_Picture(file, "Snapshots", drift.headline))
    pictures += _representation_figures(spec, base, checkpoint, directory)
    links: dict[str, list[str]] = {}
    for row in audit.rows:
        if not row.passed and row.checkpoint.heads:
            made = _side_by_side_patterns(spec, row, base, checkpoint, directory)
            pictures += made
            links[row.name] = [p.file for p in made]
    index = directory / "index.html"
    atomic.write_text(index, _page(audit, pictures, links))
    return index


def _prompt_sets(spec: SpecFile) -> list[str]:
    used = [e.expectation.prompts for e in spec.entries if e.expectation is not None and e.expectation.prompts]
    return list(dict.fromkeys(used))


def _prompt_set_figures(spec: SpecFile, prompt_name: str, base: Any, checkpoint: Any, out: Path) -> list[_Picture]:
    before, after = base.measurements(spec, prompt_name), checkpoint.measurements(spec, prompt_name)
    atol = DEFAULT_TOLERANCES["role_scores"].atol  # a change below it is noise, never outlined as a move
    pictures = []
    for role in ROLES:
        if role in before.role_scores and role in after.role_scores:
            old, new = before.role_scores[role], after.role_scores[role]
            if old.shape != new.shape:
                continue
            moves = [(name, delta) for name, delta in _largest_moves(old, new)[:3] if abs(delta) > atol]
            file = f"delta-{_slug(prompt_name)}-{role}.png"
            title = f"{role}: checkpoint - base, prompts {prompt_name!r}"
            diff_figures.delta_heatmap(out / file, old, new, title, [name for name, _ in moves])
            caption = f"{role} on {prompt_name!r}; " + (
                "largest moves: " + ", ".join(f"{name} {delta:+.3f}" for name, delta in moves)
                if moves
                else f"no head moved by more than the tolerance {atol:g}"
            )
            pictures.append(_Picture(file, "Role scores: checkpoint - base", caption))
    if before.hidden_norms_without_first is not None and after.hidden_norms_without_first is not None:
        file = f"norms-{_slug(prompt_name)}.png"
        diff_figures.norms_overlay(
            out / file, before.hidden_norms_without_first, after.hidden_norms_without_first,
            f"hidden norms, prompts {prompt_name!r}",
        )  # fmt: skip
        pictures.append(_Picture(file, "Hidden norms", f"mean hidden norm by depth on {prompt_name!r}"))
    if all(r in before.role_scores and r in after.role_scores for r in LABEL_ROLES):
        old_labels = scores.head_labels(before.role_scores, 0.5)
        new_labels = scores.head_labels(after.role_scores, 0.5)
        if old_labels.shape == new_labels.shape:
            # a head whose scores all moved less than the tolerance keeps its label: a score at the
            # labelling threshold flips on noise, and that is not a change to report
            moved = np.zeros(old_labels.shape, dtype=bool)
            for label_role in LABEL_ROLES:
                moved |= np.nan_to_num(np.abs(after.role_scores[label_role] - before.role_scores[label_role])) > atol
            new_labels = np.where(moved, new_labels, old_labels)
            file = f"labels-{_slug(prompt_name)}.png"
            diff_figures.fractions_side_by_side(
                out / file, old_labels, new_labels, f"head labels by layer, prompts {prompt_name!r}"
            )
            changed = int((old_labels != new_labels).sum())
            pictures.append(_Picture(file, "Head labels by layer", f"{changed} heads changed label on {prompt_name!r}"))
    return pictures


def _representation_figures(spec: SpecFile, base: Any, checkpoint: Any, out: Path) -> list[_Picture]:
    """What a property draws of itself on both models (SAE quality, features, probes): its
    ``audit_figures``, from the measurements the audit already made."""
    pictures: list[_Picture] = []
    for entry in spec.entries:
        expectation = entry.expectation
        if expectation is None or type(expectation).audit_figures is Expectation.audit_figures:
            continue
        try:
            made = expectation.audit_figures(
                base.context(spec, expectation.prompts), checkpoint.context(spec, expectation.prompts), out
            )
        except InterpAssertError:  # not measurable on one of the models: the table says why
            continue
        pictures += [_Picture(file, "Representations: base and checkpoint", caption) for file, caption in made]
    return pictures


def _largest_moves(old: np.ndarray, new: np.ndarray) -> list[tuple[str, float]]:
    delta = np.nan_to_num(new - old)
    order = np.argsort(-np.abs(delta), axis=None, kind="stable")
    layers, heads = np.unravel_index(order, delta.shape)
    pairs = zip(layers, heads, strict=True)
    return [(f"L{int(layer)}H{int(head)}", float(delta[layer, head])) for layer, head in pairs]


def _side_by_side_patterns(spec: SpecFile, row: AuditRow, base: Any, checkpoint: Any, out: Path) -> list[_Picture]:
    entry = next(e for e in spec.entries if e.name == row.name)
    assert entry.expectation is not None
    head = row.checkpoint.heads[0]
    layer, index = parse_head(head)
    pictures = []
    for side, runner in (("base", base), ("checkpoint", checkpoint)):
        # that head's pattern alone, not the spec's whole capture again
        measured = runner.measure_only(
            spec, entry.expectation.prompts, CaptureRequest(patterns=frozenset({(layer, index)}))
        )
        if (layer, index) not in measured.patterns:
            continue
        file = f"pattern-{_slug(row.name)}-{head}-{side}.png"
        title = f"{row.name}: {head} on the {side}, prompts {entry.expectation.prompts!r}, sequence 0"
        heatmaps.pattern_heatmap(
            out / file, measured.patterns[(layer, index)], measured.pattern_tokens, title, failed=side == "checkpoint"
        )
        pictures.append(_Picture(file, f"Failed: {row.name}", f"{head} attention on the {side}"))
    return pictures


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


STYLE = BASE_STYLE + "li.failed { color: #c62828; }\n"


def _page(audit: Audit, pictures: list[_Picture], links: dict[str, list[str]]) -> str:
    import io

    esc = html.escape
    table = io.StringIO()
    print_table(audit, table)
    failures = "".join(
        f"<li class='failed'>{esc(row.name)}: {esc(row.checkpoint.headline)} "
        + " ".join(f"<a href='#{esc(file)}'>{esc(file)}</a>" for file in links.get(row.name, []))
        + "</li>"
        for row in audit.rows
        if not row.passed
    )
    sections: dict[str, list[_Picture]] = {}
    for picture in pictures:
        sections.setdefault(picture.section, []).append(picture)
    blocks = "".join(
        f"<h2>{esc(title)}</h2><div class='figures'>"
        + "".join(
            f"<figure id='{esc(p.file)}'><img src='{esc(p.file)}' alt='{esc(p.caption)}'>"
            f"<figcaption>{esc(p.caption)}</figcaption></figure>"
            for p in shown
        )
        + "</div>"
        for title, shown in sections.items()
    )
    verdict = "all expectations hold" if audit.passed else f"{sum(not r.passed for r in audit.rows)} failed"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>interp_assert audit: {esc(Path(audit.spec).name)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Audit of {esc(Path(audit.spec).name)}</h1>"
        f"<p>Base <code>{esc(audit.base)}</code>, checkpoint <code>{esc(audit.checkpoint)}</code>: "
        f"{esc(verdict)}.</p>"
        + (f"<h2>Failed on the checkpoint</h2><ul>{failures}</ul>" if failures else "")
        + f"<h2>Table</h2><pre>{esc(table.getvalue())}</pre>{blocks}</body></html>\n"
    )
