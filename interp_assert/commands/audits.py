"""``interp-assert audit SPEC --checkpoint A --checkpoint B ... [--markdown FILE]``: several
checkpoints, each against one measurement of the base.

The base is measured once (its runner keeps the measurements), then each checkpoint is loaded
in turn and compared with it. The exit status is the worst of the audits' (1 when an expectation
fails on any checkpoint).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from interp_assert import atomic, exit_codes
from interp_assert.output_schema import versioned

if TYPE_CHECKING:
    from interp_assert.run_options import RunOptions


def main_audits(
    spec_path: str,
    checkpoints: Sequence[str],
    as_json: bool = False,
    out: TextIO | None = None,
    *,
    options: RunOptions | None = None,
    base: str | None = None,
    report_dir: Path | None = None,
    markdown_path: Path | None = None,
    force: bool = False,
    checkpoint_revision: str | None = None,
) -> int:
    from interp_assert.commands.audit import print_table, run_audit, to_json
    from interp_assert.commands.audit_report import refuse_overwrite, write_audit_report
    from interp_assert.commands.markdown import audit_markdown
    from interp_assert.commands.tracking import refuse_overwrite_file
    from interp_assert.spec import load_spec

    out = out or sys.stdout
    smoke = options.smoke if options is not None else ""
    if len(set(checkpoints)) != len(checkpoints):
        from interp_assert.errors import UsageError

        repeated = next(c for c in checkpoints if checkpoints.count(c) > 1)
        raise UsageError(f"--checkpoint {repeated} is given twice; audit each checkpoint once")
    folders = _report_folders(report_dir, checkpoints)
    for folder in folders:
        refuse_overwrite(folder, force=force)
    if markdown_path is not None:
        refuse_overwrite_file(markdown_path, force=force)
    audits: list[Any] = []
    base_runner = None
    for checkpoint in checkpoints:
        audit = run_audit(
            spec_path, checkpoint, options, base=base, checkpoint_revision=checkpoint_revision, base_runner=base_runner
        )
        base_runner = audit.runners["base"]  # measured once: the next checkpoints reuse its measurements
        audits.append(audit)
        if not as_json:
            if smoke:
                out.write(f"{smoke}: not a full audit\n")
            print_table(audit, out)
            out.write("\n")
        if folders:
            index = write_audit_report(audit, load_spec(spec_path), folders[len(audits) - 1])
            print(f"wrote {index}", file=sys.stderr if as_json else out)
        audit.runners["checkpoint"].release()  # one checkpoint in memory at a time
    if as_json:
        documents = [to_json(audit) | ({"smoke": smoke} if smoke else {}) for audit in audits]
        several = versioned("audit-set", {"audits": documents})
        document = versioned("audit", documents[0]) if len(documents) == 1 else several
        json.dump(document, out, indent=2, allow_nan=False)
        out.write("\n")
    failed = [audit.checkpoint for audit in audits if not audit.passed]
    if len(audits) > 1 and not as_json:
        out.write(f"{len(audits) - len(failed)} of {len(audits)} checkpoints keep every expectation")
        out.write(f"; failing: {', '.join(failed)}" if failed else "")
        out.write(f" ({smoke})\n" if smoke else "\n")
    elif smoke and not as_json:
        out.write(f"({smoke}: not a full audit)\n")
    if markdown_path is not None:
        atomic.write_text(markdown_path, audit_markdown(audits, smoke))
        print(f"wrote {markdown_path}", file=sys.stderr if as_json else out)
    return exit_codes.FAILED if failed else exit_codes.HELD


def _report_folders(report_dir: Path | None, checkpoints: Sequence[str]) -> list[Path]:
    """One report folder per checkpoint: ``DIR`` for one, ``DIR/<n>-<name>`` for several."""
    if report_dir is None:
        return []
    if len(checkpoints) == 1:
        return [report_dir]
    names = [re.sub(r"[^A-Za-z0-9_.-]", "_", Path(c.rstrip("/")).name) or "checkpoint" for c in checkpoints]
    return [report_dir / f"{index}-{name.lstrip('.') or 'checkpoint'}" for index, name in enumerate(names, start=1)]
