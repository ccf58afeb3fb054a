"""The ``interp-assert`` command: discover, report, audit.

Heavy imports (torch, transformers, matplotlib) happen inside the handlers, so
``interp-assert --help`` answers at once. Every error a user can cause is one
line on stderr, ``interp-assert: error: ...``, with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from interp_assert.errors import InterpAssertError

PROG = "interp-assert"
USAGE_ERROR = 2

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

MODEL (and --checkpoint) is a built-in alias (smollm2-135m-instruct, tiny-neo), a
model directory, a .gguf file, or a Hugging Face id already in the local cache
(nothing is downloaded). Progress bars appear on a terminal only, never when CI is set.
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
    _model_options(discover)
    discover.set_defaults(handler=_discover)

    report = commands.add_parser(
        "report",
        help="write an HTML page with heatmaps of a spec's expectations",
        description="Evaluate every expectation of SPEC and write DIR/index.html with PNG figures: a layers x "
        "heads heatmap per role score the spec uses (per prompt set), the attention pattern of each head "
        "the spec names (tokens on the axes), hidden norm by layer, and role fractions by depth. Failed "
        "expectations are red in the table; the heads they concern are outlined in red.",
    )
    report.add_argument("spec", type=Path, metavar="SPEC.yaml", help="spec file")
    report.add_argument("-o", "--output", required=True, type=Path, metavar="DIR", help="folder to write into")
    report.add_argument(
        "--model", metavar="PATH_OR_ID", help="run the spec against this checkpoint instead of its own model"
    )
    _model_options(report)
    report.set_defaults(handler=_report)

    audit = commands.add_parser(
        "audit",
        help="check whether a checkpoint keeps a spec's findings",
        description="Evaluate SPEC on CHECKPOINT (and on the spec's own model) and print which expectations "
        "hold and how far each number moved. Exit status 1 if any expectation fails on the checkpoint.",
    )
    audit.add_argument("spec", type=Path, metavar="SPEC.yaml", help="spec file")
    audit.add_argument("--checkpoint", required=True, metavar="PATH", help="the checkpoint to audit")
    audit.add_argument("--json", action="store_true", help="print the result as JSON")
    audit.set_defaults(handler=_audit)
    return parser


def _model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model loading")
    group.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="override the dtype")
    group.add_argument("--device", help="torch device, e.g. cpu or cuda (default: the spec's, else cpu)")
    group.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the model's repository (runs it)"
    )
    group.add_argument("--allow-pickle", action="store_true", help="allow .bin/.pt weights (default: safetensors)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except InterpAssertError as exc:
        return _fail(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)
    return USAGE_ERROR


# ---- handlers ----


def _discover(args: argparse.Namespace) -> int:
    from interp_assert import discover

    output: Path = args.output
    if output.exists() and not args.force:
        raise InterpAssertError(f"{output} exists; pass --force to overwrite it")
    prompt_sets = discover.read_prompt_sets(args.prompts) if args.prompts else None
    settings = discover.DiscoverSettings(threshold=args.threshold, max_heads=args.max_heads, keep=args.keep)
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
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(result.text, encoding="utf-8")
    print(f"wrote {output}: {result.n_expectations} expectations")
    return 0


def _report(args: argparse.Namespace) -> int:
    from interp_assert.report import build_report
    from interp_assert.runner import RunOptions

    spec_path: Path = args.spec
    if not spec_path.is_file():
        raise InterpAssertError(f"{spec_path}: no such spec file")
    options = RunOptions(
        device=args.device,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
    )
    with _progress(None) as step:
        summary = build_report(spec_path, args.output, options, model=args.model, progress=step)
    print(
        f"wrote {summary.index}: {summary.passed} passed, {summary.failed} failed"
        + (f", {summary.invalid} invalid" if summary.invalid else "")
        + f"; {len(summary.images)} figures"
    )
    return 0


def _audit(args: argparse.Namespace) -> int:
    from interp_assert.audit import main_audit  # type: ignore[import-not-found,unused-ignore]

    return int(main_audit(str(args.spec), args.checkpoint, args.json))


def _load(reference: str, args: argparse.Namespace) -> Any:
    from interp_assert.models import LoadOptions, load_model

    options = LoadOptions(
        device=args.device or "cpu",
        dtype=args.dtype or "float32",
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
    )
    return load_model(reference, options)


@contextmanager
def _progress(total: int | None) -> Iterator[Callable[[str], None]]:
    """A progress bar of named steps on a terminal; silent in CI logs and when piped."""
    from tqdm import tqdm

    from interp_assert.models import show_progress

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


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("interp-assert")
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
