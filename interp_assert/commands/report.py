"""``interp-assert report``: evaluate a spec and draw it as an HTML page of PNG figures.

Also writes the figures for one failed pytest item (``--interp-artifacts``).
Expectations are evaluated with :meth:`Runner.evaluate`, exactly as pytest
runs them. Before evaluation the report widens each prompt set's capture with
what the pictures need (attention patterns of the named heads, labels for the
role fractions), so evaluation and figures share one capture per prompt set and
the numbers on the page are the ones the tests see.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from interp_assert import atomic
from interp_assert.errors import InterpAssertError, SpecError
from interp_assert.evaluation import Evaluation, ModelIdentity
from interp_assert.figures import heatmaps
from interp_assert.figures.page import BASE_STYLE
from interp_assert.properties.base import FigureNeeds
from interp_assert.spec import Entry, SpecFile, load_spec
from interp_assert.vocab import POSITIONAL_LABELS, Role, parse_head

Progress = Callable[[str], None]


@dataclass(frozen=True)
class _Item:
    """One expectation on the page: its evaluation and what its property asks report to draw."""

    evaluation: Evaluation
    needs: FigureNeeds

    @property
    def concerned(self) -> tuple[str, ...]:
        """The heads a failure is about (outlined in red)."""
        return () if self.evaluation.passed else self.evaluation.heads


@dataclass(frozen=True)
class ReportSummary:
    index: Path
    images: tuple[Path, ...]
    passed: int
    failed: int
    invalid: int


@dataclass
class _Figure:
    file: str
    section: str
    caption: str
    failed: bool


def build_report(
    spec_path: Path,
    out_dir: Path,
    options: Any,
    *,
    model: str | None = None,
    progress: Progress = lambda _: None,
) -> ReportSummary:
    """Evaluate ``spec_path`` and write ``out_dir/index.html`` with its figures."""
    from interp_assert.runner import Runner

    spec = load_spec(spec_path)
    if spec.header is None:
        raise SpecError(list(spec.header_problems))
    if model is not None:
        options = options.replacing(spec.header.model, model)
    runner = Runner(options)
    progress(f"loading {model or spec.header.model}")
    loaded = runner.model_for(spec)
    config = loaded.config
    # Ask for the figures' needs up front, so evaluation and figures share one capture per prompt set.
    pending = [_Item(_pending(runner, spec, entry), _needs(entry)) for entry in spec.entries]
    for prompt_name, plan in _plans(spec, pending).items():
        if not plan.empty:
            request = plan.request(int(config.num_hidden_layers), int(config.num_attention_heads))
            runner.also_capture(spec, prompt_name, request)
    progress("evaluating expectations")
    items = [_Item(_evaluate(runner, spec, entry), _needs(entry)) for entry in spec.entries]
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn: dict[int, list[str]] = {}
    figures = _draw(spec, runner, items, out_dir, progress, drawn)
    results = [replace(item.evaluation, figures=tuple(drawn.get(id(item), ()))) for item in items]
    index = out_dir / "index.html"
    atomic.write_text(index, _page(spec, loaded, results, figures))
    counts = {status: sum(r.status == status for r in results) for status in ("passed", "failed")}
    return ReportSummary(
        index,
        tuple(out_dir / f.file for f in figures),
        counts["passed"],
        counts["failed"],
        len(results) - counts["passed"] - counts["failed"],
    )


def _evaluate(runner: Any, spec: SpecFile, entry: Entry) -> Evaluation:
    if entry.expectation is None:
        return _pending(runner, spec, entry)
    evaluation: Evaluation = runner.evaluation(spec, entry)
    return evaluation


def _pending(runner: Any, spec: SpecFile, entry: Entry) -> Evaluation:
    """``entry`` before it is evaluated (an invalid entry stays so, with its problems as the error)."""
    expectation = entry.expectation
    model = ModelIdentity(runner.model_named(spec))
    if expectation is None:
        problems = "; ".join(message for _, message in entry.problems)
        return Evaluation(spec.path, entry.name, "", "", model, state="invalid", error=problems)
    low, high = expectation.bounds()
    return Evaluation(
        spec.path, entry.name, expectation.property, expectation.prompts, model, bound_low=low, bound_high=high
    )


def _needs(entry: Entry) -> FigureNeeds:
    return entry.expectation.figures() if entry.expectation is not None else FigureNeeds()


# ---- what to draw ----


def _role_of(item: _Item) -> Role | None:
    return item.needs.roles[0] if item.needs.roles else None


@dataclass
class _Plan:
    """Everything to capture for one prompt set's figures."""

    roles: dict[Role, list[_Item]] = field(default_factory=dict)
    heads: dict[str, list[_Item]] = field(default_factory=dict)
    norms: list[_Item] | None = None
    fractions: list[_Item] | None = None
    stats: list[_Item] | None = None

    @property
    def empty(self) -> bool:
        return not (self.roles or self.heads) and all(part is None for part in (self.norms, self.fractions, self.stats))

    def request(self, n_layers: int, n_heads: int) -> Any:
        from interp_assert.measure.measurements import CaptureRequest

        roles = set(self.roles)
        if self.fractions is not None:
            roles |= {*POSITIONAL_LABELS, "focus"}
        if self.stats is not None:
            roles |= {"focus", "breadth"}
        heads = {parse_head(name) for name in self.heads}
        in_range = frozenset((layer, head) for layer, head in heads if layer < n_layers and head < n_heads)
        return CaptureRequest(
            roles=frozenset(roles),
            attention_stats=self.stats is not None,
            hidden_norms=self.norms is not None,
            patterns=in_range,
        )


def _plans(spec: SpecFile, results: list[_Item]) -> dict[str, _Plan]:
    assert spec.header is not None
    plans: dict[str, _Plan] = {}
    for result in results:
        evaluation, prompts = result.evaluation, result.evaluation.prompts
        if evaluation.state == "invalid" or not prompts or evaluation.error:
            continue
        plan = plans.setdefault(prompts, _Plan())
        role = _role_of(result)
        if role is not None:
            plan.roles.setdefault(role, []).append(result)
        for head in result.needs.heads:
            plan.heads.setdefault(head, []).append(result)
        needs = result.needs
        if needs.norms:
            plan.norms = [*(plan.norms or []), result]
        if needs.fractions:
            plan.fractions = [*(plan.fractions or []), result]
        if needs.stats:
            plan.stats = [*(plan.stats or []), result]
    # Depth profiles are drawn even when no expectation asks: on the first prompt set.
    first = plans.setdefault(next(iter(spec.header.prompts)), _Plan())
    if not any(plan.norms is not None for plan in plans.values()):
        first.norms = []
    if not any(plan.fractions is not None for plan in plans.values()):
        first.fractions = []
    return plans


def _draw(
    spec: SpecFile, runner: Any, results: list[_Item], out_dir: Path, progress: Progress, drawn: dict[int, list[str]]
) -> list[_Figure]:
    """Every figure of the page; ``drawn`` gets, per item (by ``id``), the files that show it."""
    assert spec.header is not None
    figures: list[_Figure] = []
    for prompt_name, plan in _plans(spec, results).items():
        if plan.empty:
            continue  # e.g. a prompt set with only generated_text or snapshot expectations
        try:
            measured = runner.measurements(spec, prompt_name)  # the evaluation's capture, already widened
        except InterpAssertError:
            continue  # the expectations on this prompt set already show the error in the table
        progress(f"drawing {prompt_name!r}")
        figures += _draw_prompt_set(prompt_name, plan, measured, out_dir, drawn)
    for result, entry in zip(results, spec.entries, strict=True):
        evaluation = result.evaluation
        if entry.expectation is None or evaluation.status not in ("passed", "failed"):
            continue
        failed = evaluation.status == "failed"
        for file, caption in entry.expectation.own_figures(runner.context(spec, evaluation.prompts), out_dir):
            section = "Snapshots" if evaluation.tag == "snapshot" else evaluation.tag.replace("_", " ")
            figures.append(_Figure(file, section.capitalize(), caption, failed))
            drawn.setdefault(id(result), []).append(file)
    return figures


def _draw_prompt_set(
    prompt_name: str, plan: _Plan, measured: Any, out_dir: Path, drawn: dict[int, list[str]]
) -> list[_Figure]:
    figures: list[_Figure] = []
    slug = _slug(prompt_name)

    def add(file: str, section: str, caption: str, shown: list[_Item]) -> None:
        failed = any(result.evaluation.status == "failed" for result in shown)
        figures.append(_Figure(file, section, caption, failed))
        for result in shown:
            drawn.setdefault(id(result), []).append(file)

    for role, shown in plan.roles.items():
        file = f"scores-{slug}-{role}.png"
        named = [head for result in shown for head in result.needs.heads]
        failed_heads = [head for result in shown for head in result.concerned]
        title = f"{role} score per head, prompts {prompt_name!r} (outlined: heads in the spec; red: failed)"
        heatmaps.role_heatmap(out_dir / file, measured.role_scores[role], title, named, failed_heads)
        add(file, "Role scores (layers x heads)", f"{role} on {prompt_name}", shown)
    for head, shown in plan.heads.items():
        pattern = measured.patterns.get(parse_head(head))
        if pattern is None:
            continue  # a head the model does not have: its expectations already report that
        file = f"pattern-{slug}-{head}.png"
        layer, index = parse_head(head)
        roles = dict.fromkeys(found for result in shown if (found := _role_of(result)) is not None)
        scored = [f"{name} {measured.role_scores[name][layer, index]:.4f}" for name in roles]
        failed = any(head in result.concerned for result in shown)
        title = f"{head} attention, prompts {prompt_name!r}, sequence 0" + (f" ({', '.join(scored)})" if scored else "")
        heatmaps.pattern_heatmap(out_dir / file, pattern, measured.pattern_tokens, title, failed)
        add(file, "Attention patterns", f"{head} on {prompt_name}", shown)
    if plan.norms is not None and measured.hidden_norms_without_first is not None:
        file = f"norms-{slug}.png"
        n_norms = len(measured.hidden_norms_without_first)
        spans = [_span(r, n_norms) for r in plan.norms if r.needs.span is not None]
        heatmaps.norms_plot(
            out_dir / file,
            measured.hidden_norms_without_first,
            measured.hidden_norms,
            f"hidden-state norm by depth, prompts {prompt_name!r}",
            spans,
        )
        add(file, "Hidden-state norms", f"norms on {prompt_name}", plan.norms)
    if plan.fractions is not None:
        from interp_assert.measure.capture import scores

        thresholds = {r.needs.label_threshold for r in plan.fractions if r.needs.label_threshold is not None}
        threshold = thresholds.pop() if len(thresholds) == 1 else 0.5
        labels = scores.head_labels(measured.role_scores, threshold)
        file = f"fractions-{slug}.png"
        title = f"head labels by layer (threshold {threshold:g}), prompts {prompt_name!r}"
        heatmaps.fractions_plot(out_dir / file, labels, title, [_span(r, measured.n_layers) for r in plan.fractions])
        add(file, "Role fractions by depth", f"labels on {prompt_name}", plan.fractions)
    if plan.stats is not None:
        stats = {
            "max": measured.max_weight.max(axis=1),
            "focus": measured.role_scores["focus"].mean(axis=1),
            "breadth": measured.role_scores["breadth"].mean(axis=1),
        }
        if any(r.needs.series == "mean" for r in plan.stats):
            stats["mean"] = measured.mean_weight.mean(axis=1)
        file = f"attention-{slug}.png"
        title = f"attention statistics by layer, prompts {prompt_name!r} (dashed: bounds)"
        heatmaps.stats_plot(out_dir / file, stats, title, [_span(r, measured.n_layers) for r in plan.stats])
        add(file, "Attention statistics", f"attention on {prompt_name}", plan.stats)
    return figures


def _span(result: _Item, count: int) -> heatmaps.Span:
    """The expectation's layer range as drawn: negative indices resolved Python-style, as the checks do."""
    assert result.needs.span is not None
    first, last = ((index + count if index < 0 else index) for index in result.needs.span)
    evaluation = result.evaluation
    return heatmaps.Span(
        first,
        last,
        evaluation.name,
        evaluation.status == "passed",
        at_least=evaluation.bound_low,
        at_most=evaluation.bound_high,
        series=result.needs.series,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


# ---- failure artifacts for pytest (--interp-artifacts) ----

ARTIFACTS_MARK = ".interp_assert_artifacts"  # in a folder --interp-artifacts made, which later runs may reuse


def artifacts_folder_problem(directory: Path) -> str | None:
    """Why ``--interp-artifacts`` may not write into ``directory``: it is a file, or a folder that holds
    something and was not made by an earlier run (the pictures could replace the user's files)."""
    if directory.exists() and not directory.is_dir():
        return f"{directory} exists and is not a folder; give a new or empty folder"
    if not directory.is_dir() or (directory / ARTIFACTS_MARK).is_file():
        return None
    held = sorted(path.name for path in directory.iterdir())
    if not held:
        return None
    shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
    return (
        f"{directory} is not empty (it holds {shown}) and was not made by --interp-artifacts, so its "
        "pictures could replace those files; give a new or empty folder"
    )


def spec_folder_name(spec_path: str | Path) -> str:
    """The artifacts subfolder of one spec file: its stem as a slug (never ``.``, ``..`` or a path),
    and a hash of its full path, so two specs of the same name in different folders never share one."""
    resolved = str(Path(spec_path).resolve())
    stem = re.sub(r"^\.+", "_", _slug(Path(spec_path).stem)) or "_"
    return f"{stem}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def write_failure_artifacts(
    runner: Any, spec: SpecFile, entry: Entry, evaluation: Evaluation, directory: Path
) -> list[Path]:
    """The heatmaps of a failed expectation: the attention pattern of the head concerned
    (``evaluation.heads[0]``) and, for a role, the layers x heads scores with that head outlined."""
    from interp_assert.measure.measurements import CaptureRequest
    from interp_assert.runner import measure_named

    expectation: Any = entry.expectation
    assert spec.header is not None and expectation is not None
    problem = artifacts_folder_problem(directory)
    if problem:
        raise InterpAssertError(problem)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ARTIFACTS_MARK).touch()
    folder = directory / spec_folder_name(spec.path)
    head = evaluation.heads[0] if evaluation.heads else None
    needs = expectation.figures()
    role = needs.roles[0] if needs.roles else None
    written = []
    if role is not None:
        table = runner.measurements(spec, expectation.prompts).role_scores[role]
        title = f"{entry.name}: {role} per head, prompts {expectation.prompts!r}"
        named = list(needs.heads)
        path = folder / f"{_slug(entry.name)}-{role}-scores.png"
        written.append(heatmaps.role_heatmap(path, table, title, named, [head] if head else []))
    if head is not None:
        layer, index = parse_head(head)
        loaded = runner.model_for(spec)
        prompt_set = spec.header.prompts[expectation.prompts]
        request = CaptureRequest(patterns=frozenset({(layer, index)}))
        measured = measure_named(loaded, expectation.prompts, prompt_set, request)
        title = f"{entry.name} failed: {head} attention, prompts {expectation.prompts!r}, sequence 0"
        path = folder / f"{_slug(entry.name)}-{head}-pattern.png"
        pattern = measured.patterns[(layer, index)]
        written.append(heatmaps.pattern_heatmap(path, pattern, measured.pattern_tokens, title, failed=True))
    return written


# ---- the page ----

STYLE = (
    BASE_STYLE
    + """
table { border-collapse: collapse; width: 100%; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr.failed, tr.error, tr.invalid { background: #fde8e8; }
tr.failed td.status, tr.error td.status, tr.invalid td.status { color: #c62828; font-weight: bold; }
td.status { color: #2e7d32; font-weight: bold; }
.details { color: #555; font-size: 0.85em; }
.summary .bad { color: #c62828; font-weight: bold; }
figure.failed img { border: 3px solid #c62828; }
"""
)


def _page(spec: SpecFile, loaded: Any, results: list[Evaluation], figures: list[_Figure]) -> str:
    assert spec.header is not None
    esc = html.escape
    passed = sum(r.status == "passed" for r in results)
    bad = len(results) - passed
    rows = []
    for result, entry in zip(results, spec.entries, strict=True):
        kind = result.tag
        details = "".join(f"<div class='details'>{esc(line)}</div>" for line in result.details)
        description = entry.expectation.description if entry.expectation is not None else None
        if description:
            details += f"<div class='details'>spec: {esc(description)}</div>"
        links = " ".join(f"<a href='#{esc(_anchor(file))}'>{esc(file)}</a>" for file in result.figures)
        rows.append(
            f"<tr class='{result.status}' id='exp-{esc(_slug(result.name))}'>"
            f"<td>{esc(result.name)}</td><td>{esc(kind)}</td><td>{esc(result.prompts)}</td>"
            f"<td class='status'>{result.status.upper()}</td>"
            f"<td>{esc(result.headline)}{details}</td><td>{links}</td></tr>"
        )
    sections: dict[str, list[_Figure]] = {}
    for figure in figures:
        sections.setdefault(figure.section, []).append(figure)
    blocks = []
    for title, shown in sections.items():
        items = "".join(
            f"<figure id='{esc(_anchor(f.file))}' class='{'failed' if f.failed else 'passed'}'>"
            f"<img src='{esc(f.file)}' alt='{esc(f.caption)}'><figcaption>{esc(f.caption)}"
            f"{' (failed expectation)' if f.failed else ''}</figcaption></figure>"
            for f in shown
        )
        blocks.append(f"<h2>{esc(title)}</h2><div class='figures'>{items}</div>")
    summary = f"{passed} passed" + (f", <span class='bad'>{bad} failed or invalid</span>" if bad else "")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>interp_assert report: {esc(Path(spec.path).name)}</title><style>{STYLE}</style></head><body>"
        f"<h1>interp_assert report: {esc(Path(spec.path).name)}</h1>"
        f"<p>Spec <code>{esc(spec.path)}</code>; model <code>{esc(loaded.reference)}</code>"
        f"{esc(_revision_words(loaded))} "
        f"({esc(type(loaded.model).__name__)}, {esc(loaded.options.dtype)} on {esc(_placement_words(loaded))}).</p>"
        f"<p class='summary'>{summary} of {len(results)} expectations.</p>"
        "<h2>Expectations</h2><table><tr><th>name</th><th>property</th><th>prompts</th><th>result</th>"
        f"<th>measured</th><th>figures</th></tr>{''.join(rows)}</table>"
        f"{''.join(blocks)}</body></html>\n"
    )


def _revision_words(loaded: Any) -> str:
    """`` at revision 'v1', commit 0123abcd4567`` for a hub model, else ''."""
    words = f" at revision {loaded.options.revision!r}" if loaded.options.revision is not None else ""
    return words + (f", commit {loaded.commit[:12]}" if loaded.commit is not None else "")


def _placement_words(loaded: Any) -> str:
    if loaded.options.device_map is None:
        return str(loaded.options.device)
    from interp_assert.measure.loading.placement import describe

    return f"device_map {describe(loaded.options.device_map)}"


def _anchor(file: str) -> str:
    return "fig-" + file.removesuffix(".png")
