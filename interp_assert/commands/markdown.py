"""``--markdown FILE`` for ``track`` and ``audit``: a summary fit for a pull-request comment.

GitHub-flavoured Markdown tables, one row per expectation (never one column per checkpoint:
a comment stays readable for a track of hundreds of checkpoints; the full table is in the
JSON). Cell text is escaped so a headline with ``|`` or a backtick cannot break the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from interp_assert.commands.tracking import Track, milestones

MAX_TEXT = 160


def cell(text: object) -> str:
    """Text safe inside a table cell: one line, pipes and backticks escaped, at most ``MAX_TEXT`` characters."""
    flat = " ".join(str(text).split())
    if len(flat) > MAX_TEXT:
        flat = flat[: MAX_TEXT - 1] + "…"
    return flat.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`").replace("<", "&lt;")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return lines


def track_markdown(track: Track) -> str:
    last = track.checkpoints[-1]
    held = sum(row.cells[-1].passed for row in track.rows)
    mark = "✅" if track.passed and not track.unavailable else "❌"
    lines = [
        f"### {mark} interp_assert track of `{cell(track.spec)}`" + (f" ({cell(track.smoke)})" if track.smoke else ""),
        "",
        f"{held} of {len(track.rows)} expectations hold on the last checkpoint ({cell(last.label)}); "
        f"{len(track.checkpoints)} checkpoints in place of `{cell(track.model)}`.",
        "",
    ]
    rows = [
        (
            ("✅ " if row.cells[-1].passed else "❌ ") + row.name,
            row.kind,
            row.cells[-1].shown,
            milestones(row, track.checkpoints),
        )
        for row in track.rows
    ]
    lines += table(("expectation", "property", f"at {cell(last.label)}", "history"), rows)
    if track.unavailable:
        lines += ["", "**Checkpoints that could not be loaded** (exit 69):", ""]
        lines += [f"- `{cell(c.label)}`: {cell(reason)}" for c, reason in track.unavailable]
    failing = [row for row in track.rows if not row.cells[-1].passed and not row.cells[-1].unavailable]
    if failing:
        lines += ["", "<details><summary>why the last checkpoint fails</summary>", ""]
        lines += [f"- **{cell(row.name)}**: {cell(row.cells[-1].headline)}" for row in failing]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def audit_markdown(audits: Sequence[Any], smoke: str = "") -> str:
    """One section per audited checkpoint (each against the same base)."""
    lines: list[str] = [f"**{cell(smoke)}: not a full audit**", ""] if smoke else []
    for audit in audits:
        failed = sum(not row.passed for row in audit.rows)
        mark = "✅" if audit.passed else "❌"
        lines += [
            f"### {mark} interp_assert audit of `{cell(audit.checkpoint)}` against `{cell(audit.base)}`"
            + (f" ({cell(smoke)})" if smoke else ""),
            "",
            f"{len(audit.rows) - failed} of {len(audit.rows)} expectations of `{cell(audit.spec)}` hold.",
            "",
        ]
        rows = [
            (
                ("✅ " if row.passed else "❌ ") + row.name,
                row.kind,
                row.base.shown,
                row.checkpoint.shown,
                "" if row.change is None else f"{row.change:+.4g}",
            )
            for row in audit.rows
        ]
        lines += table(("expectation", "property", "base", "checkpoint", "change"), rows)
        lines.append("")
    return "\n".join(lines)
