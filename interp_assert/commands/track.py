"""The ``interp-assert track`` subcommand: its arguments and what it does with them.

Kept apart from :mod:`interp_assert.commands.cli` (which wires it in) so the command line stays one
screen per command. Heavy modules (the runner, matplotlib) are imported inside the handler.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from interp_assert.drift.checkpoints import Checkpoint
    from interp_assert.run_options import RunOptions

Handler = Callable[[argparse.Namespace], int]

TRACK_EPILOG = """\
snapshot expectations:
  each checkpoint is compared with the snapshot stored for the spec (the fingerprint of the
  spec's own model); the cell shows how many values moved beyond tolerance, and nothing is
  written. Without a stored snapshot the expectation fails on every checkpoint and says so.

exit status:
  0  every expectation holds on the last checkpoint (earlier ones may fail: that is history)
  1  an expectation fails on the last checkpoint
  2  a user error: a missing checkpoint, a glob that matches nothing, two checkpoints with the
     same step, a checkpoint of another architecture, an invalid spec, an existing --json or
     --report without --force

examples:
  interp-assert track spec.yaml --checkpoints 'run/checkpoint-*'
  interp-assert track spec.yaml --checkpoint run/checkpoint-500 --checkpoint run/checkpoint-1000
  interp-assert track spec.yaml --checkpoints 'run/*' --order given --json track.json --report track/
"""


def add_parser(commands: Any, model_options: Callable[[argparse.ArgumentParser], None], handler: Handler) -> None:
    """The ``track`` subcommand's arguments; ``model_options`` adds the loading flags every command has."""
    track = commands.add_parser(
        "track",
        help="evaluate a spec on every checkpoint of a training run: when each finding forms and breaks",
        description="Evaluate every expectation of SPEC on each checkpoint in turn (one model in memory at a "
        "time, each in place of the spec's model) and print a table of expectation x checkpoint (the headline "
        "value; FAIL where it does not hold), then for each expectation the first checkpoint where it holds "
        "and the first where it breaks after holding.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=TRACK_EPILOG,
    )
    track.add_argument("spec", type=Path, metavar="SPEC.yaml", help="spec file")
    track.add_argument(
        "--checkpoint", action="append", default=[], metavar="PATH",
        help="a checkpoint (model folder, adapter folder or .gguf file); repeatable",
    )  # fmt: skip
    track.add_argument(
        "--checkpoints", action="append", default=[], metavar="GLOB",
        help="every folder the glob matches, e.g. 'run/checkpoint-*' (quote it); repeatable",
    )  # fmt: skip
    track.add_argument(
        "--order", choices=("step", "given"), default="step",
        help="step (default): by the step number in each folder name (its last integer, as in checkpoint-200); "
        "given: as listed, a glob's matches by step",
    )  # fmt: skip
    track.add_argument("--json", type=Path, metavar="FILE", help="also write the table as JSON (NaN as null)")
    track.add_argument(
        "--report", type=Path, metavar="DIR", help="also write DIR/index.html: each expectation's value by step"
    )
    track.add_argument("--force", action="store_true", help="overwrite an existing --json file or report")
    model_options(track)
    track.set_defaults(handler=handler)


def main_track(
    spec_path: str,
    found: Sequence[Checkpoint],
    out: TextIO | None = None,
    *,
    options: RunOptions | None = None,
    json_path: Path | None = None,
    report_dir: Path | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Print the track (and write its JSON and report); return 1 if an expectation fails on the last checkpoint."""
    from interp_assert.drift.audit_report import refuse_overwrite
    from interp_assert.drift.checkpoints import check_architectures
    from interp_assert.drift.track import print_track, refuse_overwrite_file, run_track, write_json

    out = out or sys.stdout
    if json_path is not None:
        refuse_overwrite_file(json_path, force=force)
    if report_dir is not None:
        refuse_overwrite(report_dir, force=force)
    check_architectures(found)
    _check_spec_shape(spec_path, found, options)
    track = run_track(spec_path, found, options, progress=progress)
    print_track(track, out)
    if json_path is not None:
        write_json(track, json_path)
        print(f"wrote {json_path}", file=out)
    if report_dir is not None:
        from interp_assert.drift.track_report import write_track_report

        print(f"wrote {write_track_report(track, report_dir)}", file=out)
    return 0 if track.passed else 1


def _check_spec_shape(spec_path: str, found: Sequence[Checkpoint], options: RunOptions | None) -> None:
    """Checkpoints of another layers x heads shape than the spec's model, refused before any loads."""
    from interp_assert.drift.checkpoints import check_against_spec
    from interp_assert.spec import load_spec

    header = load_spec(spec_path).header
    if header is None:
        return  # an invalid spec is reported by the run itself
    overrides = options.overrides if options is not None else {}
    check_against_spec(
        overrides.get(header.model, header.model),
        Path(spec_path).parent,
        header.revision,
        [(checkpoint.path, None, f"checkpoint {checkpoint.given!r}") for checkpoint in found],
        "track checkpoints of the spec's model",
    )
