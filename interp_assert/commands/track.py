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
    from interp_assert.measure.loading.checkpoints import Checkpoint
    from interp_assert.run_options import RunOptions

Handler = Callable[[argparse.Namespace], int]

TRACK_EPILOG = """\
snapshot expectations:
  each checkpoint is compared with the snapshot stored for the spec (the fingerprint of the
  spec's own model); the cell shows how many values moved beyond tolerance, and nothing is
  written. Without a stored snapshot the expectation fails on every checkpoint and says so.

resuming, sharding, merging (--out DIR):
  DIR is the track's state: one file per checkpoint, written when it is measured. Run again with
  the same DIR after a crash or kill -9 and only the checkpoints not yet done are measured (and
  any whose spec, snapshot, weights, code or library versions changed). --shard I/N measures
  checkpoints I, I+N, I+2N, ... (numbered from 1 in step order), e.g. one CI job per shard, each
  with its own DIR; `interp-assert track merge DIR...` then prints the one table, JSON, report
  and exit status of the whole track. A shard alone exits 0 (or 69), leaving the verdict to merge.

exit status:
  0   every expectation holds on the last checkpoint (earlier ones may fail: that is history)
  1   an expectation fails on the last checkpoint
  2   a user error: a missing checkpoint, a glob that matches nothing, two checkpoints with the
      same step, a checkpoint of another architecture, an invalid spec, an existing --json,
      --markdown or --report without --force, an --out folder that holds other files
  69  a checkpoint could not be loaded (the table says which and why; the others were measured)

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
    _state_options(track)
    model_options(track)
    track.set_defaults(handler=handler)


def _state_options(track: argparse.ArgumentParser) -> None:
    from interp_assert.commands.shards import parse_shard

    def shard(text: str) -> Any:
        try:
            return parse_shard(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def retries(text: str) -> int:
        if not text.isdigit() or int(text) > 100:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to 100")
        return int(text)

    group = track.add_argument_group("state, shards and retries")
    group.add_argument(
        "--out", type=Path, metavar="DIR",
        help="keep the track's state in DIR (one file per checkpoint): a rerun measures only what is not done",
    )  # fmt: skip
    group.add_argument(
        "--shard", type=shard, metavar="I/N",
        help="measure only shard I of N (checkpoints I, I+N, ...; needs --out); merge with 'track merge'",
    )  # fmt: skip
    group.add_argument(
        "--retries", type=retries, default=0, metavar="N",
        help="try a checkpoint that fails to load (or runs out of memory) N more times (default 0)",
    )  # fmt: skip
    group.add_argument("--markdown", type=Path, metavar="FILE", help="also write a summary in Markdown (a PR comment)")
    group.add_argument(
        "--interp-limit", type=retries, metavar="N", dest="limit",
        help="smoke run: the first N prompts of every prompt set; every line and file says so, snapshot "
        "expectations are left out",
    )  # fmt: skip
    group.add_argument(
        "--no-cache", action="store_true",
        help="measure every expectation again (by default an outcome measured before under the same key is reused: "
        "weights hash, spec, snapshots, code and library versions, device, dtype, attention path)",
    )  # fmt: skip


def merge_parser(prog: str, handler: Handler) -> argparse.ArgumentParser:
    """``interp-assert track merge DIR...``: the shards of one track as one table."""
    merge = argparse.ArgumentParser(
        prog=f"{prog} track merge",
        description="Read the state folders that `track --out DIR --shard I/N` wrote and print the whole "
        "track, as one uninterrupted run prints it: the table, the milestones, the JSON, the report and the "
        "exit status. Every checkpoint must be in one of the folders.",
    )
    merge.add_argument("directories", nargs="+", type=Path, metavar="DIR", help="a --out folder of a shard")
    merge.add_argument("--json", type=Path, metavar="FILE", help="also write the table as JSON (NaN as null)")
    merge.add_argument("--report", type=Path, metavar="DIR", help="also write DIR/index.html")
    merge.add_argument("--markdown", type=Path, metavar="FILE", help="also write a summary in Markdown")
    merge.add_argument("--force", action="store_true", help="overwrite an existing --json, --markdown or report")
    merge.add_argument("--debug", action="store_true", help="show Python tracebacks of errors")
    merge.set_defaults(handler=handler)
    return merge


def main_track(
    spec_path: str,
    found: Sequence[Checkpoint],
    out: TextIO | None = None,
    *,
    options: RunOptions | None = None,
    json_path: Path | None = None,
    report_dir: Path | None = None,
    markdown_path: Path | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    state: Path | None = None,
    shard: Any = None,
    retries: int = 0,
) -> int:
    """Print the track (and write its JSON, Markdown and report); return its exit status."""
    from interp_assert.commands.track_state import run_with_state
    from interp_assert.commands.tracking import checked_spec
    from interp_assert.errors import UsageError
    from interp_assert.measure.loading.checkpoints import check_architectures
    from interp_assert.run_options import RunOptions

    out = out or sys.stdout
    options = options or RunOptions()
    if shard is not None and state is None:
        raise UsageError(f"--shard {shard} needs --out DIR: a shard's results are merged from its folder")
    refuse_outputs(json_path, report_dir, markdown_path, force=force)
    check_architectures(found)
    _check_spec_shape(spec_path, found, options)
    spec = checked_spec(spec_path)
    if options.limit is not None:  # a fingerprint of part of a prompt set is not the stored one
        from dataclasses import replace

        kept = tuple(e for e in spec.entries if e.expectation is None or e.expectation.property != "snapshot")
        if not kept:
            raise UsageError(f"--interp-limit {options.limit}: {spec_path} has only snapshot expectations")
        spec = replace(spec, entries=kept)
    track, reused = run_with_state(
        spec, found, options, state=state, shard=shard, retries=retries, progress=progress, limit=options.limit,
        smoke=options.smoke, said=lambda line: print(f"note: {line}", file=sys.stderr),
    )  # fmt: skip
    if state is not None:
        measured = len(track.checkpoints) - reused
        shard_text = f"shard {shard}: " if shard is not None else ""
        smoke = f"{options.smoke}: " if options.smoke else ""
        print(f"{smoke}{shard_text}{measured} checkpoint(s) measured, {reused} reused from {state}", file=out)
    code = finish(track, out, json_path=json_path, report_dir=report_dir, markdown_path=markdown_path)
    if shard is not None:  # the verdict on the last checkpoint is the merge's
        return exit_codes_for_shard(code)
    return code


def main_merge(
    directories: Sequence[Path],
    out: TextIO | None = None,
    *,
    json_path: Path | None = None,
    report_dir: Path | None = None,
    markdown_path: Path | None = None,
    force: bool = False,
) -> int:
    from interp_assert.commands.track_state import merge

    out = out or sys.stdout
    refuse_outputs(json_path, report_dir, markdown_path, force=force)
    return finish(merge(directories), out, json_path=json_path, report_dir=report_dir, markdown_path=markdown_path)


def refuse_outputs(json_path: Path | None, report_dir: Path | None, markdown_path: Path | None, *, force: bool) -> None:
    from interp_assert.commands.audit_report import refuse_overwrite
    from interp_assert.commands.tracking import refuse_overwrite_file

    for path in (json_path, markdown_path):
        if path is not None:
            refuse_overwrite_file(path, force=force)
    if report_dir is not None:
        refuse_overwrite(report_dir, force=force)


def finish(
    track: Any, out: TextIO, *, json_path: Path | None, report_dir: Path | None, markdown_path: Path | None
) -> int:
    """Print the track, write what was asked for, and return its exit status."""
    from interp_assert import atomic, exit_codes
    from interp_assert.commands.markdown import track_markdown
    from interp_assert.commands.tracking import print_track, write_json

    print_track(track, out)
    if json_path is not None:
        write_json(track, json_path)
        print(f"wrote {json_path}", file=out)
    if markdown_path is not None:
        atomic.write_text(markdown_path, track_markdown(track))
        print(f"wrote {markdown_path}", file=out)
    if report_dir is not None:
        from interp_assert.commands.track_report import write_track_report

        print(f"wrote {write_track_report(track, report_dir)}", file=out)
    if track.unavailable:
        labels = ", ".join(checkpoint.label for checkpoint, _ in track.unavailable)
        print(
            f"interp-assert: error: {len(track.unavailable)} checkpoint(s) could not be loaded ({labels}); "
            f"the table says why (exit {exit_codes.INFRASTRUCTURE})",
            file=sys.stderr,
        )
    verdict = exit_codes.HELD if track.passed else exit_codes.FAILED
    return exit_codes.worst(verdict, exit_codes.INFRASTRUCTURE if track.unavailable else exit_codes.HELD)


def exit_codes_for_shard(code: int) -> int:
    from interp_assert import exit_codes

    return exit_codes.HELD if code == exit_codes.FAILED else code


def _check_spec_shape(spec_path: str, found: Sequence[Checkpoint], options: RunOptions | None) -> None:
    """Checkpoints of another layers x heads shape than the spec's model, refused before any loads."""
    from interp_assert.measure.loading.checkpoints import check_against_spec
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
