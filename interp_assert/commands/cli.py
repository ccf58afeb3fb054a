"""The ``interp-assert`` command: discover, report, audit.

Heavy imports (torch, transformers, matplotlib) happen inside the handlers, so
``interp-assert --help`` answers at once. Every error is one line on stderr; its exit
status comes from the one table in :mod:`interp_assert.exit_codes` (2 for what the user
wrote, 69 for a model or device that is not there, 3 for a bug of ours).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from interp_assert import atomic, exit_codes
from interp_assert.commands import track as track_command
from interp_assert.errors import InterpAssertError
from interp_assert.output_schema import versioned
from interp_assert.version import package_version
from interp_assert.vocab import ROLES

if TYPE_CHECKING:
    from interp_assert.run_options import RunOptions

ROLE_CHOICES = tuple(ROLES)

PROG = "interp-assert"
USAGE_ERROR = exit_codes.USAGE
INTERNAL_ERROR = exit_codes.INTERNAL

DESCRIPTION = """\
Put a language model's internals under test. Specs (YAML) list interpretability
findings; `pytest` turns each into a test item. This command writes specs from
measurements (discover), draws them (report) and checks a checkpoint against
them (audit).
"""

EPILOG = """\
examples:
  interp-assert discover smollm2-135m-instruct -o model_specs/smollm2.yaml
  interp-assert report model_specs/smollm2.yaml -o report/
  interp-assert audit model_specs/smollm2.yaml --checkpoint ./finetuned
  interp-assert track model_specs/smollm2.yaml --checkpoints 'run/checkpoint-*' --report track/
  interp-assert measure smollm2-135m-instruct --role induction

MODEL (and --checkpoint) is a built-in alias (smollm2-135m-instruct, tiny-neo), a
model directory, a .gguf file, or a Hugging Face hub id (downloaded into the hub cache,
HF_HOME, unless HF_HUB_OFFLINE is set; HF_TOKEN for gated models). Progress bars appear
on a terminal only, never when CI is set.

exit status (every verb; interp_assert/exit_codes.py):
  0   every expectation held (track: on the last checkpoint)
  1   an expectation was measured and did not hold: the model changed
  2   usage or spec error: a flag, an invalid spec, a missing file, an output that exists without --force
  3   internal error: a bug (run again with --debug for the traceback)
  69  infrastructure: a model, adapter or checkpoint cannot be loaded, a device is missing, out of memory
  130 interrupted
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    discover = commands.add_parser(
        "discover",
        help="measure a model and write a spec of what it finds",
        description="Measure MODEL on prompt sets and write a spec (YAML) of its strongest heads per role, the "
        "layer that dominates each role, hidden-norm trends and attention sharpness. Bounds sit a margin "
        "below the measured values, which each expectation's description records; the spec is validated "
        "and checked against the measurements before it is written, so it passes on MODEL.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="default prompt sets:\n"
        "  prose     three natural sentences (previous_token, first_token and self heads)\n"
        "  repeated  4 sequences of a random 50-token block repeated twice (induction and duplicate_token heads)",
    )
    discover.add_argument("model", metavar="MODEL", help="alias, model directory, .gguf file or cached hub id")
    discover.add_argument("-o", "--output", required=True, type=Path, metavar="FILE.yaml", help="spec file to write")
    discover.add_argument(
        "--prompts",
        type=Path,
        metavar="FILE.yaml",
        help="use the prompt sets under 'prompts:' in FILE (spec format) instead of the defaults; sets of "
        "texts are searched for previous_token/first_token/self heads, random_tokens sets for "
        "induction/duplicate_token heads; norms and sharpness come from the first set",
    )
    discover.add_argument(
        "--threshold", type=_unit_float, default=0.5, help="role score a head needs to be written (default 0.5)"
    )
    discover.add_argument(
        "--max-heads", type=_positive_int, default=3, help="strongest heads written per role (default 3)"
    )
    discover.add_argument(
        "--keep",
        type=_unit_float,
        default=0.85,
        help="at_least bounds are this fraction of the measured value (default 0.85)",
    )
    discover.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    discover.add_argument(
        "--sae", metavar="FOLDER", help="also write the quality of this SAE (SAELens or sparsify folder, or "
        "owner/name@revision) on the first prompt set of texts (CE recovered, explained variance, L0), and its "
        "clearest features: latents at least 10x more active on one prompt set of texts than on the others, "
        "their decoder rows stored in FILE.safetensors beside the spec",
    )  # fmt: skip
    discover.add_argument(
        "--revision", metavar="REV", help="branch, tag or commit sha of a hub MODEL (written to the spec)"
    )
    _model_options(discover)
    discover.set_defaults(handler=_discover)

    report = commands.add_parser(
        "report",
        help="write an HTML page with heatmaps of a spec's expectations",
        description="Evaluate every expectation of SPEC and write DIR/index.html with PNG figures: a layers x "
        "heads heatmap per role score the spec uses (per prompt set), the attention pattern of each head "
        "the spec names (tokens on the axes), hidden norm by layer, and role fractions by depth. Failed "
        "expectations are red in the table; the heads they concern are outlined in red. Exit status 1 if any "
        "expectation failed.",
    )
    report.add_argument("spec", type=Path, metavar="SPEC.yaml", help="spec file")
    report.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="folder to write into")
    report.add_argument(
        "--model", metavar="PATH_OR_ID", help="run the spec against this checkpoint instead of its own model"
    )
    report.add_argument("--force", action="store_true", help="overwrite an existing report in DIR")
    _model_options(report)
    report.set_defaults(handler=_report)

    audit = commands.add_parser(
        "audit",
        help="check whether a checkpoint keeps a spec's findings",
        description="Evaluate SPEC on CHECKPOINT and on the base (the spec's own model, or --base) and print "
        "each expectation's headline value on both, what moved by layer and role, and the heads that moved "
        "most. Exit status 1 if any expectation fails on the checkpoint.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  interp-assert audit model_specs/smollm2.yaml --checkpoint ./finetuned\n"
        "  interp-assert audit spec.yaml --checkpoint ./lora-adapter --interp-model smollm2-base=./base\n"
        "  interp-assert audit spec.yaml --checkpoint ./ft --report audit/   (delta heatmaps, overlaid norms)",
    )
    audit.add_argument("spec", type=Path, metavar="SPEC.yaml", help="spec file")
    audit.add_argument(
        "--checkpoint", required=True, action="append", metavar="PATH",
        help="the checkpoint to audit (model folder or PEFT adapter); repeatable: each against one measurement "
        "of the base",
    )  # fmt: skip
    audit.add_argument("--checkpoint-revision", metavar="REV", help="branch, tag or commit sha of a hub CHECKPOINT")
    audit.add_argument("--base", metavar="PATH", help="compare against this model instead of the spec's own")
    audit.add_argument("--json", action="store_true", help="print the result as JSON (NaN written as null)")
    audit.add_argument("--report", type=Path, metavar="DIR", help="also write DIR/index.html with difference figures")
    audit.add_argument("--force", action="store_true", help="overwrite an existing report in DIR")
    audit.add_argument("--markdown", type=Path, metavar="FILE", help="also write a summary in Markdown (a PR comment)")
    audit.add_argument(
        "--interp-limit", type=_positive_int, metavar="N", dest="limit",
        help="smoke run: the first N prompts of every prompt set, on base and checkpoint alike; every summary "
        "line, the JSON and the Markdown say so (no --report)",
    )  # fmt: skip
    _model_options(audit)
    audit.set_defaults(handler=_audit)

    track_command.add_parser(commands, _model_options, _track)

    probe = commands.add_parser("probe", help="store a probe's direction for a spec to compare against")
    probe_commands = probe.add_subparsers(dest="probe_command", metavar="ACTION", required=True)
    probe_save = probe_commands.add_parser(
        "save",
        help="measure a probe expectation's direction and write it to a safetensors file",
        description="Measure the difference-in-means direction of the probe expectation NAME of SPEC on its "
        "model (or --model) and write it to FILE under the expectation's key (default: its name), keeping "
        "the file's other tensors. The spec then asserts cosine_at_least against it.",
    )
    probe_save.add_argument("spec", type=Path, metavar="SPEC.yaml", help="spec file")
    probe_save.add_argument("name", metavar="NAME", help="the probe expectation's name")
    probe_save.add_argument("-o", "--output", required=True, type=Path, metavar="FILE.safetensors")
    probe_save.add_argument("--model", metavar="PATH_OR_ID", help="measure this model instead of the spec's")
    probe_save.add_argument("--force", action="store_true", help="replace a direction of the same name in FILE")
    _model_options(probe_save)
    probe_save.set_defaults(handler=_probe_save)

    measure = commands.add_parser(
        "measure",
        help="print a model's head scores, top heads and norms (no spec, no bounds)",
        description="Measure MODEL on prompt sets and print, per role, the top heads and their scores, the "
        "layer means, any head whose score comes mostly from one frequent token, and hidden norms by depth.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  interp-assert measure smollm2-135m-instruct --role previous_token --head L16H0\n"
        "  interp-assert measure ./model --prompts prompts.yaml --json",
    )
    measure.add_argument("model", metavar="MODEL", help="alias, model directory, adapter, .gguf file or cached hub id")
    measure.add_argument(
        "--prompts", type=Path, metavar="FILE.yaml", help="prompt sets under 'prompts:' (spec format); default: "
        "discover's prose and repeated sets",
    )  # fmt: skip
    measure.add_argument("--role", action="append", choices=ROLE_CHOICES, help="roles to show (default: all)")
    measure.add_argument("--head", action="append", type=_head, metavar="LxHy", help="show this head's scores")
    measure.add_argument("--top", type=_positive_int, default=5, help="heads shown per role (default 5)")
    measure.add_argument("--json", action="store_true", help="print the measurements as JSON")
    measure.add_argument("--revision", metavar="REV", help="branch, tag or commit sha of a hub MODEL")
    _model_options(measure)
    measure.set_defaults(handler=_measure)

    doctor = commands.add_parser(
        "doctor",
        help="say which attention paths and kernels this machine uses, and where the caches are",
        description="Print the versions, the cache folder, whether the native attention kernel is built and "
        "trusted (or why not), and which attention path capture takes on each device.",
    )
    doctor.set_defaults(handler=_doctor)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    """The model flags pytest has (:mod:`interp_assert.option_table`), under both spellings
    (``--dtype`` and ``--interp-dtype``), with pytest's help texts."""
    from interp_assert.option_table import OPTIONS

    group = parser.add_argument_group("model loading")
    for option in OPTIONS:
        if not option.verbs:
            continue
        spellings = [option.short, option.flag] if option.short else [option.flag]
        if option.kind == "append":
            group.add_argument(
                *spellings, dest=option.name, action="append", default=[], metavar=option.metavar, type=_mapping,
                help=option.help,
            )  # fmt: skip
        elif option.kind == "flag":
            group.add_argument(*spellings, dest=option.name, action="store_true", help=option.help)
        else:
            choices = option.choices or None
            group.add_argument(
                *spellings, dest=option.name, choices=choices, metavar=option.metavar, help=option.help
            )  # fmt: skip


def _run_options(args: argparse.Namespace) -> Any:
    """The verb's model flags, checked and turned into options the way pytest's are (one function)."""
    from interp_assert.measure.loading.hub import revision_problem
    from interp_assert.option_table import flag_values
    from interp_assert.run_options import Flags, from_flags

    for revision in (getattr(args, key, None) for key in ("revision", "checkpoint_revision")):
        problem = revision_problem(revision) if revision is not None else None
        if problem:
            raise InterpAssertError(problem)
    flags = Flags(**flag_values(lambda option: _verb_value(args, option.name), verbs_only=True))
    return from_flags(flags, here=Path.cwd())


def _verb_value(args: argparse.Namespace, name: str) -> Any:
    """A verb's flag; a trust setting also from its environment variable (never a file: see
    interp_assert/trust.py)."""
    from interp_assert.trust import ENVIRONMENT

    value = getattr(args, name)
    return bool(value or _from_environment(name)) if name in ENVIRONMENT else value


def _from_environment(setting: str) -> bool:
    from interp_assert.trust import from_environment

    try:
        return from_environment(setting)
    except ValueError as exc:
        raise InterpAssertError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["track", "merge"]:
        parser = track_command.merge_parser(PROG, _track_merge)
        argv = argv[2:]
    else:
        parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except Exception as exc:
        if getattr(args, "interp_debug", False) or getattr(args, "debug", False):
            raise
        return _fail(exc)


def _fail(exc: BaseException) -> int:
    """One line on stderr for any error that ends a verb; its status from :mod:`interp_assert.exit_codes`."""
    code = exit_codes.code_for(exc)
    if isinstance(exc, InterpAssertError):
        message = str(exc)
    elif isinstance(exc, OSError) and not exit_codes.is_out_of_memory(exc):
        where = f"{exc.filename}: " if exc.filename else ""
        message = f"{where}{exc.strerror or exc}"
    else:
        message = f"{type(exc).__name__}: {exc}"
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    if code == exit_codes.INTERNAL:
        print(
            f"{PROG}: internal error: {one_line}; run again with --debug for the traceback and report it",
            file=sys.stderr,
        )
    elif code == exit_codes.INFRASTRUCTURE:
        hint = "; free memory or use a smaller --dtype/--device-map" if exit_codes.is_out_of_memory(exc) else ""
        print(f"{PROG}: error: {one_line}{hint} (exit {code}: infrastructure, not a verdict)", file=sys.stderr)
    else:
        print(f"{PROG}: error: {one_line}", file=sys.stderr)
    return code


# ---- handlers ----


def _discover(args: argparse.Namespace) -> int:
    from interp_assert.commands import discover
    from interp_assert.properties.findings import DiscoverSettings

    output: Path = args.output
    if output.exists() and not args.force:
        raise InterpAssertError(f"{output} exists; pass --force to overwrite it")
    problem = atomic.write_problem(output)  # found now, not after minutes of measuring
    if problem:
        raise InterpAssertError(f"-o {output}: {problem}")
    if args.sae:  # the features' decoder rows go beside the spec
        rows = discover.directions_file(output)
        if rows == output or (rows.exists() and not args.force):
            raise InterpAssertError(
                f"{rows} exists, and discover --sae stores the features' decoder rows there; "
                "pass --force to overwrite it, or choose another -o"
                if rows != output
                else f"-o {output}: give the spec a .yaml name (its feature directions go to {rows})"
            )
    prompt_sets = discover.read_prompt_sets(args.prompts) if args.prompts else None
    settings = DiscoverSettings(threshold=args.threshold, max_heads=args.max_heads, keep=args.keep)
    with _progress(3 if prompt_sets is None else 1 + len(prompt_sets)) as step:
        step(f"loading {args.model}")
        loaded = _load(args.model, args)
        result = discover.discover(
            args.model,
            output,
            loaded=loaded,
            prompt_sets=prompt_sets or discover.default_prompt_sets(loaded),
            settings=settings,
            progress=step,
            sae=args.sae,
        )
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(output, result.text)
    except OSError as exc:  # named by the user's path, not the temporary file beside it
        raise InterpAssertError(f"-o {output}: cannot be written ({exc.strerror or exc})") from None
    print(f"wrote {output}: {result.n_expectations} expectations")
    return 0


def _report(args: argparse.Namespace) -> int:
    from interp_assert.commands.audit_report import refuse_overwrite
    from interp_assert.commands.report import build_report

    spec_path: Path = args.spec
    _readable_spec(spec_path)
    refuse_overwrite(args.output, force=args.force)
    with _progress(None) as step:
        summary = build_report(spec_path, args.output, _run_options(args), model=args.model, progress=step)
    print(
        f"wrote {summary.index}: {summary.passed} passed, {summary.failed} failed"
        + (f", {summary.invalid} invalid" if summary.invalid else "")
        + f"; {len(summary.images)} figures"
    )
    return 0 if summary.failed == 0 and summary.invalid == 0 else 1


def _doctor(args: argparse.Namespace) -> int:
    from interp_assert.commands.doctor import lines

    for line in lines():
        print(line)
    return 0


def _probe_save(args: argparse.Namespace) -> int:
    from interp_assert.commands.probe_save import save

    _readable_spec(args.spec)
    print(save(args.spec, args.name, args.output, _run_options(args), model=args.model, force=args.force))
    return 0


def _audit(args: argparse.Namespace) -> int:
    _readable_spec(args.spec)
    checkpoints: list[str] = args.checkpoint
    options = _run_options(args)
    if args.limit is not None:
        from dataclasses import replace

        if args.report is not None:
            raise InterpAssertError(f"--report with --interp-limit {args.limit}: a smoke run writes no report")
        options = replace(options, limit=args.limit)
    if len(checkpoints) == 1 and args.markdown is None and args.limit is None:
        return main_audit(
            str(args.spec),
            checkpoints[0],
            args.json,
            options=options,
            base=args.base,
            report_dir=args.report,
            force=args.force,
            checkpoint_revision=args.checkpoint_revision,
        )
    from interp_assert.commands.audits import main_audits

    return main_audits(
        str(args.spec), checkpoints, args.json, options=options, base=args.base, report_dir=args.report,
        markdown_path=args.markdown, force=args.force, checkpoint_revision=args.checkpoint_revision,
    )  # fmt: skip


def main_audit(
    spec_path: str,
    checkpoint: str,
    as_json: bool = False,
    out: TextIO | None = None,
    *,
    options: RunOptions | None = None,
    base: str | None = None,
    report_dir: Path | None = None,
    force: bool = False,
    checkpoint_revision: str | None = None,
) -> int:
    """Print the audit (and write its report); return 1 if any expectation fails on the checkpoint."""
    from interp_assert.commands.audit import print_table, run_audit, to_json
    from interp_assert.commands.audit_report import refuse_overwrite, write_audit_report
    from interp_assert.spec import load_spec

    out = out or sys.stdout
    if report_dir is not None:
        refuse_overwrite(report_dir, force=force)
    audit = run_audit(spec_path, checkpoint, options, base=base, checkpoint_revision=checkpoint_revision)
    if as_json:
        json.dump(versioned("audit", to_json(audit)), out, indent=2, allow_nan=False)
        out.write("\n")
    else:
        print_table(audit, out)
    if report_dir is not None:
        index = write_audit_report(audit, load_spec(spec_path), report_dir)
        print(f"wrote {index}", file=sys.stderr if as_json else out)
    return 0 if audit.passed else 1


def _track(args: argparse.Namespace) -> int:
    from interp_assert.measure.loading import checkpoints

    _readable_spec(args.spec)
    # --checkpoint entries are paths, --checkpoints entries globs; under --order given, paths come first
    entries = [(path, False) for path in args.checkpoint] + [(pattern, True) for pattern in args.checkpoints]
    found = checkpoints.resolve(entries, args.order)
    options = _run_options(args)
    if args.limit is not None:
        from dataclasses import replace

        if args.limit < 1:
            raise InterpAssertError(f"--interp-limit {args.limit}: give at least 1 prompt per set")
        options = replace(options, limit=args.limit)
    if not args.no_cache:  # on by default in track (--interp-cache elsewhere): its key cannot go stale
        from dataclasses import replace

        from interp_assert.run_options import result_cache_folder

        options = replace(options, cache=result_cache_folder())
    with _progress(2 * len(found)) as step:
        return track_command.main_track(
            str(args.spec), found, options=options, json_path=args.json, report_dir=args.report,
            markdown_path=args.markdown, force=args.force, progress=step, state=args.out, shard=args.shard,
            retries=args.retries,
        )  # fmt: skip


def _track_merge(args: argparse.Namespace) -> int:
    return track_command.main_merge(
        args.directories, json_path=args.json, report_dir=args.report, markdown_path=args.markdown, force=args.force
    )


def _measure(args: argparse.Namespace) -> int:
    from interp_assert.commands import discover, measure

    prompt_sets = discover.read_prompt_sets(args.prompts) if args.prompts else None
    with _progress(None) as step:
        step(f"loading {args.model}")
        loaded = _load(args.model, args)
        for note in loaded.notes:
            print(f"note: {note}", file=sys.stderr)
        result = measure.measure_model(
            loaded,
            prompt_sets or discover.default_prompt_sets(loaded),
            roles=tuple(args.role or ()),
            heads=tuple(args.head or ()),
            top=args.top,
            progress=step,
        )
    if args.json:
        json.dump(versioned("measure", measure.to_json(result)), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        measure.print_measurements(result, sys.stdout)
    return 0


def _readable_spec(path: Path) -> None:
    """A missing, unreadable, oversized, non-UTF-8 or non-regular spec file is one line, before any model loads."""
    from interp_assert.spec.yamlsource import read_spec_text

    if not path.exists():
        raise InterpAssertError(f"{path}: no such spec file")
    read_spec_text(path)


def _load(reference: str, args: argparse.Namespace) -> Any:
    from interp_assert.measure.loading.models import load_model

    options = _run_options(args)
    load = options.load_options(reference, revision=args.revision)
    return load_model(options.overrides.get(reference, reference), load)


@contextmanager
def _progress(total: int | None) -> Iterator[Callable[[str], None]]:
    """A progress bar of named steps on a terminal; silent in CI logs and when piped."""
    from tqdm import tqdm

    from interp_assert.measure.loading.models import show_progress

    bar = tqdm(total=total, disable=not show_progress(), file=sys.stderr, leave=False, unit="step")
    started = False

    def step(description: str) -> None:
        nonlocal started
        if started:
            bar.update(1)
        started = True
        bar.set_description(description)

    try:
        yield step
    finally:
        bar.close()


# ---- argument types ----


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside (0, 1]")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not at least 1")
    return value


def _mapping(text: str) -> str:
    name, sep, target = text.partition("=")
    if not sep or not name or not target:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH_OR_ID")
    return text


def _head(text: str) -> str:
    from interp_assert.vocab import parse_head

    try:
        parse_head(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


if __name__ == "__main__":
    sys.exit(main())
