"""pytest collection of spec files: one item per expectation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from interp_assert.errors import InterpAssertError, ModelLoadError, SpecError
from interp_assert.evaluation import Evaluation
from interp_assert.pytest_plugin import options
from interp_assert.pytest_plugin.stash import (
    CHECKPOINT_RUNNERS_KEY,
    CHECKPOINTS_KEY,
    GATE_TRACKS_KEY,
    NOTES_KEY,
    RAN_SPECS_KEY,
    RUNNER_KEY,
    WRITTEN_KEY,
)
from interp_assert.spec import Entry, SpecFile, load_spec


def runner_for(config: pytest.Config) -> Any:
    """The session's :class:`~interp_assert.runner.Runner`, built on first use."""
    if RUNNER_KEY not in config.stash:
        from interp_assert.runner import Runner

        config.stash[RUNNER_KEY] = Runner(run_options(config))
    return config.stash[RUNNER_KEY]


def item_runner(config: pytest.Config, spec: SpecFile, checkpoint: Any = None) -> Any:
    """The runner an item uses: the session's, or one per (spec model, checkpoint) that loads the
    checkpoint in place of the spec's model. Every other runner's model is released first, so a
    process holds one model at a time."""
    runner = runner_for(config)
    if checkpoint is not None and spec.header is not None:
        from interp_assert.runner import Runner

        runners = config.stash.setdefault(CHECKPOINT_RUNNERS_KEY, {})
        key = (spec.header.model, checkpoint.path)
        if key not in runners:
            base = runner.options
            runners[key] = Runner(base.replacing(spec.header.model, checkpoint.path))
        runner = runners[key]
    for other in (runner_for(config), *config.stash.get(CHECKPOINT_RUNNERS_KEY, {}).values()):
        if other is not runner:
            other.release()
    return runner


def run_options(config: pytest.Config) -> Any:
    """The run's options from its ``--interp-*`` flags and ini keys; a bad one is a usage error."""
    from interp_assert.errors import UsageError
    from interp_assert.option_table import flag_values
    from interp_assert.run_options import Flags, from_flags

    flags = Flags(
        **flag_values(lambda option: options.get(config, option.name)),
        update_snapshots=bool(getattr(config.option, "update_snapshots", False)),
    )
    try:
        return from_flags(flags, here=config.invocation_params.dir)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None


class ExpectationFailed(AssertionError):
    """An expectation was measured and did not hold."""

    def __init__(self, evaluation: Evaluation) -> None:
        super().__init__(evaluation.headline)
        self.evaluation = evaluation


class SpecCollector(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        shown = os.path.relpath(self.path, self.config.invocation_params.dir)
        spec = load_spec(self.path, shown=shown)  # malformed YAML: a collection error naming file:line
        from interp_assert.drift.snapshot_store import sharing_problem
        from interp_assert.errors import SnapshotFileError

        shared = sharing_problem(self.path)
        if shared:  # refused even without snapshot expectations: a stale-entry sweep would delete the other's
            raise SnapshotFileError(f"{shown}: {shared}")
        if spec.header is None:
            yield SpecItem.from_parent(self, name="spec", spec=spec, entry=None)
            return
        tracked = self.config.stash.get(CHECKPOINTS_KEY, ())
        if tracked and str(options.get(self.config, "interp_gate")) != "each":
            from interp_assert.pytest_plugin.gates import parse_gate

            gate = parse_gate(options.get(self.config, "interp_gate"))
            for entry in spec.entries:
                yield GateItem.from_parent(self, name=entry.name, spec=spec, entry=entry, gate=gate)
            return
        for checkpoint in tracked or (None,):
            for entry in spec.entries:
                if checkpoint is None:
                    yield SpecItem.from_parent(self, name=entry.name, spec=spec, entry=entry)
                    continue
                name = f"{entry.name}[{checkpoint.label}]"
                item = SpecItem.from_parent(self, name=name, spec=spec, entry=entry, checkpoint=checkpoint)
                item.add_marker(pytest.mark.xdist_group(checkpoint.label))
                yield item

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:  # type: ignore[override]
        if debugging(self.config):
            return super().repr_failure(excinfo)
        if isinstance(excinfo.value, InterpAssertError):
            return str(excinfo.value)
        return one_line_error(str(self.path), excinfo.value) or super().repr_failure(excinfo)


class SpecItem(pytest.Item):
    """One expectation of a spec file (or, for an invalid header, the whole file)."""

    def __init__(self, *, spec: SpecFile, entry: Entry | None, checkpoint: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.entry = entry
        self.checkpoint = checkpoint  # a checkpoints.Checkpoint under --interp-checkpoints

    def runner(self) -> Any:
        return item_runner(self.config, self.spec, self.checkpoint)

    def reportinfo(self) -> tuple[Any, int, str]:
        line = self.entry.location.line - 1 if self.entry else 0
        return self.path, line, self.name

    @property
    def problems(self) -> list[Any]:
        if self.entry is None:
            return self.spec.problems()
        return list(self.spec.header_problems) + list(self.entry.problems)

    def setup(self) -> None:
        if self.problems:
            return
        try:
            if self.entry is not None and self.runner().cached_outcome(self.spec, self.entry) is not None:
                return  # --interp-cache holds its outcome: the model need not load
            loaded = self.runner().model_for(self.spec)
            said = self.config.stash.setdefault(NOTES_KEY, [])
            said.extend(note for note in loaded.notes if note not in said)  # once per model, not per item
            self._capture_or_fail()
            return
        except ModelLoadError as exc:
            if debugging(self.config):
                raise  # with its traceback and cause
            error = exc
        # raised outside the except block, so the load error is said once, not again as the "context"
        if options.get(self.config, "interp_missing") == "skip":
            # reported at the expectation's line in the spec, not at this line
            raise pytest.skip.Exception(f"model not available: {error}", _use_item_location=True)
        pytest.fail(
            f"{self.nodeid}: model not available: {error}\n"
            "(pass --interp-missing=skip to skip specs whose model is missing)",
            pytrace=False,
        )

    def _capture_or_fail(self) -> None:
        """Capture the prompt set here, in setup, so that a machine that runs out of memory (or
        another infrastructure failure) makes the item a setup error, never a failed expectation.
        Any other error is the expectation's own: runtest meets it again and reports it."""
        from interp_assert import exit_codes

        expectation = self.entry.expectation if self.entry is not None else None
        if expectation is None:
            return
        try:
            self.runner().measurements(self.spec, expectation.prompts)
            return
        except Exception as exc:
            if exit_codes.code_for(exc) != exit_codes.INFRASTRUCTURE:
                return
            if debugging(self.config):
                raise
            error = exc
        # raised outside the except block: said once, not again as the "context" of another error
        first = (str(error).strip().splitlines() or [""])[0]
        pytest.fail(
            f"{self.nodeid}: could not run: {type(error).__name__}: {first} (infrastructure, not a verdict on "
            "the model: free memory, or use a smaller --interp-dtype or --interp-device-map)",
            pytrace=False,
        )

    def runtest(self) -> None:
        if self.problems:
            raise SpecError(self.problems)
        assert self.entry is not None
        self.config.stash.setdefault(RAN_SPECS_KEY, {})[self.spec.path] = self.spec
        runner = self.runner()
        expectation = self.entry.expectation
        if runner.options.limit is not None and expectation is not None and expectation.property == "snapshot":
            raise pytest.skip.Exception(
                f"{runner.options.smoke}: a snapshot compares whole prompt sets; not compared, not written",
                _use_item_location=True,
            )
        evaluation = runner.evaluation(self.spec, self.entry, checkpoint=self.checkpoint)
        if evaluation.problem is not None:
            raise evaluation.problem  # a spec error on this model: shown as one, not as a failure
        self.user_properties.extend(junit_properties(evaluation))
        if evaluation.cached:
            self.user_properties.append(("cached", "true"))
        if runner.options.limit is not None:
            self.user_properties.append(("smoke", f"{runner.options.limit} prompts per set"))
        for note in evaluation.notes:
            self.config.stash.setdefault(NOTES_KEY, []).append(f"{self.nodeid}: {note}")
        if evaluation.outcome is not None and evaluation.outcome.written:
            self.config.stash.setdefault(WRITTEN_KEY, []).append(evaluation.outcome.written)
        if not evaluation.passed:
            artifacts = options.get(self.config, "interp_artifacts")
            if artifacts:
                from interp_assert.commands.report import write_failure_artifacts

                here = self.config.invocation_params.dir
                try:
                    written = write_failure_artifacts(runner, self.spec, self.entry, evaluation, here / artifacts)
                    self.artifact_lines = [f"  heatmap: {_shown_path(path, here)}" for path in written]
                except (InterpAssertError, OSError) as exc:  # a picture must never hide the failure itself
                    self.artifact_lines = [f"  heatmap not written: {exc}"]
            raise ExpectationFailed(evaluation)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        error = excinfo.value
        if isinstance(error, ExpectationFailed):
            return self._failure_text(error.evaluation)
        if debugging(self.config):
            return super().repr_failure(excinfo, style=style)
        if isinstance(error, SpecError):
            return "invalid spec:\n" + str(error)
        if isinstance(error, InterpAssertError):
            return f"{self.nodeid}: {error}"
        return one_line_error(self.nodeid, error) or super().repr_failure(excinfo, style=style)

    def _failure_text(self, evaluation: Evaluation) -> str:
        assert self.entry is not None and self.entry.expectation is not None and self.spec.header is not None
        expectation = self.entry.expectation
        runner = self.runner()
        used = runner.model_named(self.spec)
        flag = "a checkpoint of --interp-checkpoints" if self.checkpoint is not None else "--interp-model"
        model = f"{used!r} ({flag}, in place of the spec's {self.spec.header.model!r})"
        if not runner.overridden(self.spec):
            model = repr(used)
        lines = [
            f"{self.entry.location}: expectation {self.entry.name!r} ({expectation.property}) failed"
            + (f" on {self.checkpoint.label}" if self.checkpoint is not None else ""),
            f"  {evaluation.headline}",
            *(f"  {detail}" for detail in evaluation.details),
            f"  prompts: {evaluation.prompts!r}; model: {model}",
        ]
        if runner.options.limit is not None:
            lines[0] = f"[{runner.options.smoke}] " + lines[0]
        if evaluation.cached:
            lines.append("  (from the result cache: measured earlier under the same key; --interp-cache)")
        lines += getattr(self, "artifact_lines", [])
        if runner.overridden(self.spec):
            lines.append("  the bound describes the spec's own model; a replacement missing it is no reason to edit it")
        elif expectation.edit_hint:
            lines.append("  if the model changed on purpose, edit the bound in the spec")
        return "\n".join(lines)


class GateItem(SpecItem):
    """One expectation over every checkpoint of ``--interp-checkpoints``, judged by a gate
    (:mod:`interp_assert.pytest_plugin.gates`); the cells are computed once per spec, as ``track`` does."""

    def __init__(self, *, gate: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    def setup(self) -> None:
        if self.problems:
            return
        from interp_assert.pytest_plugin.gates import verdict

        track = self._track()
        row = next(row for row in track.rows if self.entry is not None and row.name == self.entry.name)
        try:
            self.verdict = verdict(row, track.checkpoints, self.gate)
        except ValueError as exc:  # a gate these checkpoints cannot answer (no step numbers, none that late)
            pytest.fail(f"{self.nodeid}: {exc}", pytrace=False)
        if self.verdict.unavailable:  # a checkpoint the gate reads could not load: the item could not run
            pytest.fail(
                f"{self.nodeid}: model not available: checkpoint {self.verdict.unavailable[0]}"
                + (f" (and {len(self.verdict.unavailable) - 1} more)" if len(self.verdict.unavailable) > 1 else ""),
                pytrace=False,
            )
        self.row, self.track = row, track

    def _track(self) -> Any:
        from interp_assert.commands.track_state import run_with_state

        tracks = self.config.stash.setdefault(GATE_TRACKS_KEY, {})
        if self.spec.path not in tracks:
            for runner in (runner_for(self.config), *self.config.stash.get(CHECKPOINT_RUNNERS_KEY, {}).values()):
                runner.release()  # one model in memory: the checkpoints load one at a time
            checkpoints = self.config.stash.get(CHECKPOINTS_KEY, ())
            tracks[self.spec.path] = run_with_state(self.spec, checkpoints, run_options(self.config))[0]
        return tracks[self.spec.path]

    def runtest(self) -> None:
        if self.problems:
            raise SpecError(self.problems)
        from interp_assert.pytest_plugin.gates import junit_cells

        assert self.entry is not None
        last = self.row.cells[-1]
        self.user_properties.extend(
            [
                ("property", self.row.kind),
                ("passed", "true" if self.verdict.passed else "false"),
                ("gate", str(self.gate)),
                ("value", "" if last.value is None else last.value),
                ("bound_low", "" if self.row.bound_low is None else self.row.bound_low),
                ("bound_high", "" if self.row.bound_high is None else self.row.bound_high),
                ("headline", self.verdict.headline),
                *junit_cells(self.row, self.track.checkpoints),
            ]
        )
        if not self.verdict.passed:
            raise GateFailed(self.verdict.headline)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if not isinstance(excinfo.value, GateFailed):
            return super().repr_failure(excinfo, style=style)
        from interp_assert.pytest_plugin.gates import cell_lines

        assert self.entry is not None and self.spec.header is not None
        checkpoints = self.track.checkpoints
        lines = [
            f"{self.entry.location}: expectation {self.entry.name!r} ({self.row.kind}) failed the gate "
            f"--interp-gate {self.gate} ({self.gate.rule}) over {len(checkpoints)} checkpoints",
            f"  {self.verdict.headline}",
            *(f"  {line}" for line in cell_lines(self.row, checkpoints)),
            f"  checkpoints in place of the spec's model {self.spec.header.model!r}; "
            "--interp-gate each makes one item per checkpoint",
        ]
        return "\n".join(wrap_lines(lines))


def wrap_lines(lines: list[str], width: int = 120) -> list[str]:
    """Lines longer than a CI log's ``width`` wrapped, continuations indented past the line's own indent."""
    import textwrap

    wrapped = []
    for line in lines:
        indent = " " * (len(line) - len(line.lstrip()))
        wrapped += textwrap.wrap(line, width, subsequent_indent=indent + "    ", break_long_words=False) or [""]
    return wrapped


class GateFailed(AssertionError):
    """A gate over the checkpoints did not pass."""


def check_run(session: pytest.Session, items: list[pytest.Item]) -> None:
    """Refuse, before anything loads, a run that would measure the wrong thing or nothing: an
    ``--interp-model`` name no collected spec uses (a typo would silently test the base model), a
    repeated one, and an ``--interp-device`` that is not valid or not available here."""
    config = session.config
    # parsed only when given: run_options imports the runner (and torch), which a run without specs never needs
    given = any(
        options.get(config, name)
        for name in ("interp_model", "interp_revision", "interp_device_map", "interp_max_memory")
    ) or options.get(config, "interp_offload_folder")
    parsed = run_options(config) if given else None  # a repeated name or a bad value: a usage error
    overrides = parsed.overrides if parsed is not None else {}
    revisions = parsed.revisions if parsed is not None else {}
    specs = [item.spec for item in items if isinstance(item, SpecItem)]
    # Python tests using the ``interp`` fixture name their models in code, so a run with only
    # those cannot know the names; with spec files, every name must be one of theirs.
    only_fixture_users = not specs and any("interp" in getattr(item, "fixturenames", ()) for item in items)
    if (overrides or revisions) and not session.testsfailed and not only_fixture_users:  # collection errors first
        named = models_named(specs, overrides)
        for flag, pairs in (("--interp-model", overrides), ("--interp-revision", revisions)):
            for name in pairs:
                if name not in named:
                    used = ", ".join(sorted(named)) if named else "none (no spec file was collected)"
                    raise pytest.UsageError(
                        f"{flag} {name}={pairs[name]}: no collected spec uses a model named {name!r}, "
                        f"so the override would change nothing; models the collected specs use: {used}"
                    )
    checkpoints = config.stash.get(CHECKPOINTS_KEY, ())
    if (overrides or checkpoints) and specs and not session.testsfailed:
        check_shapes(specs, overrides, checkpoints)
    device = options.get(config, "interp_device")
    if device is not None and specs:
        from interp_assert.measure.loading.models import device_problem

        problem = device_problem(device)
        if problem:
            raise pytest.UsageError(f"--interp-device {device}: {problem}")


def check_shapes(specs: list[SpecFile], overrides: dict[str, str], checkpoints: Any) -> None:
    """An ``--interp-model`` replacement or a checkpoint with another layers x heads shape than the
    spec's model is a usage error, before anything loads (read from config.json or the GGUF header)."""
    from pathlib import Path

    from interp_assert.measure.loading.checkpoints import check_against_spec

    for spec in {spec.path: spec for spec in specs}.values():
        header = spec.header
        if header is None:
            continue
        replacement = overrides.get(header.model)
        for flag, targets in (
            ("--interp-model", [(replacement, None, f"{header.model}={replacement}")] if replacement else []),
            ("--interp-checkpoints", [(c.path, None, f"checkpoint {c.given!r}") for c in checkpoints]),
        ):
            try:
                check_against_spec(
                    header.model, Path(spec.path).parent, header.revision, targets, f"run {spec.path} on its own model"
                )
            except InterpAssertError as exc:
                raise pytest.UsageError(f"{flag}: {exc}") from None


def models_named(specs: list[SpecFile], overrides: dict[str, str]) -> set[str]:
    """Every model name the specs reach: their own, and the base named by an adapter folder
    among them or among the overrides' targets (an override may replace that base too)."""
    from pathlib import Path

    named: set[str] = set()
    seen: set[tuple[str, Path]] = set()
    todo = [(spec.model, Path(spec.path).parent, True) for spec in specs if spec.model]
    while todo and len(seen) < 1000:
        reference, base_dir, is_name = todo.pop()
        if (reference, base_dir) in seen:
            continue
        seen.add((reference, base_dir))
        if is_name:
            named.add(reference)
            if reference in overrides:
                todo.append((overrides[reference], base_dir, False))  # as the runner: spec folder, then cwd
        base = _adapter_base(reference, base_dir)
        if base is not None:
            todo.append((base, base_dir / reference, True))
    return named


def _adapter_base(reference: str, base_dir: Any) -> str | None:
    """The base model an adapter folder names, if ``reference`` is one (a broken config names none
    here; loading it says what is wrong)."""
    from pathlib import Path

    from interp_assert.measure.loading.models import adapter_base_name

    for folder in (base_dir / reference, Path(reference).expanduser()):
        try:
            base = adapter_base_name(folder)
        except ModelLoadError:
            return None
        if base is not None:
            return base
    return None


def debugging(config: pytest.Config) -> bool:
    """Tracebacks are shown only with --interp-debug or pytest's --full-trace."""
    return bool(options.get(config, "interp_debug") or config.getoption("fulltrace", False))


def one_line_error(where: str, error: BaseException) -> str | None:
    """An unexpected exception as one line (its traceback only with --interp-debug); ``None`` for
    pytest's own outcomes (fail, skip, exit), which pytest shows as it always does."""
    if isinstance(error, pytest.fail.Exception | pytest.skip.Exception | pytest.exit.Exception | KeyboardInterrupt):
        return None
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return (
        f"{where}: {type(error).__name__}: {first} "
        "(an unexpected error inside interp_assert or a library it uses; rerun with --interp-debug for the traceback)"
    )


def _shown_path(path: Any, base: Any) -> str:
    """``path`` relative to where pytest was invoked, or absolute when it lies outside."""
    relative = os.path.relpath(path, base)
    return str(path) if relative.startswith("..") else relative


def stale_snapshots(config: pytest.Config) -> list[str]:
    """After the run: delete (under --snapshot-update) or list snapshots whose expectation is gone.

    Only spec files with a valid header, at least one of whose items ran, are looked at;
    a skipped or deselected expectation still exists in its spec, so its snapshot is kept.
    """
    from interp_assert.drift import snapshot_store as store

    update = bool(getattr(config.option, "update_snapshots", False))
    lines = []
    for spec in config.stash.get(RAN_SPECS_KEY, {}).values():
        current = {entry.name for entry in spec.entries}
        try:
            stale = store.stored_names(spec.path) - current
        except InterpAssertError as exc:
            lines.append(str(exc))
            continue
        if not stale:
            continue
        where = store.describe(store.snapshot_file(spec.path))
        if update and spec.problems():
            # An expectation that did not validate may be the one a snapshot belongs to (a mistyped
            # 'name' key): never delete on the word of a spec that did not validate.
            lines.append(
                f"{where}: snapshot(s) {', '.join(sorted(stale))} match no expectation, but {spec.path} has "
                "invalid expectations; kept (fix the spec, then pytest --snapshot-update deletes them)"
            )
        elif update:
            try:
                store.delete(spec.path, stale)
            except InterpAssertError as exc:
                lines.append(str(exc))
                continue
            config.stash.setdefault(WRITTEN_KEY, []).extend(("deleted", where) for _ in stale)
            lines.append(f"deleted {len(stale)} stale snapshot(s) from {where}: {', '.join(sorted(stale))}")
        else:
            lines.append(
                f"{where}: snapshot(s) {', '.join(sorted(stale))} match no expectation in {spec.path}; "
                "kept (pytest --snapshot-update deletes them)"
            )
    return lines


def order_by_model(config: pytest.Config, items: list[pytest.Item]) -> list[pytest.Item]:
    """Keep non-spec items first in their order; group spec items by model so each loads once."""
    others = [item for item in items if not isinstance(item, SpecItem)]
    specs = [item for item in items if isinstance(item, SpecItem)]
    if not specs:
        return items
    from interp_assert.runner import model_key

    options = run_options(config)
    rank: dict[object, int] = {}

    def key(item: SpecItem) -> int:
        model: tuple[Any, Any] = model_key(item.spec, options) if item.spec.header else ("", None)
        if item.checkpoint is not None and item.spec.header is not None:  # loaded in place of the spec's model
            model = (item.checkpoint.path, model[1])
        return rank.setdefault(model, len(rank))

    return others + sorted(specs, key=key)


def written_summary(config: pytest.Config) -> list[str]:
    """``N snapshots written / updated / deleted, in FILES``: every change to disk is said."""
    changes = config.stash.get(WRITTEN_KEY, [])
    if not changes:
        return []
    counts = {action: sum(a == action for a, _ in changes) for action in ("written", "updated", "deleted")}
    files = sorted({file for _, file in changes})
    said = " / ".join(f"{n} {action}" for action, n in counts.items())
    return [f"snapshots: {said}, in {', '.join(files)}"]


def junit_properties(evaluation: Evaluation) -> list[tuple[str, object]]:
    """The item's stable record for JUnit XML and dashboards (documented in docs/ci.md):
    ``property``, ``passed``, ``value``, ``bound_low``, ``bound_high``, ``model``,
    ``model_source``, ``weights_sha256``, ``revision`` and ``commit`` (hub models), ``headline``,
    ``checkpoint`` and ``step`` (under ``--interp-checkpoints``), ``generated_text`` (text checks),
    ``note`` (repeatable), then ``measured.<name>`` for every other number."""
    model = evaluation.model
    value = evaluation.value
    properties: list[tuple[str, object]] = [
        ("property", evaluation.tag),
        ("passed", "true" if evaluation.passed else "false"),
        ("value", "" if value is None else value),
        ("bound_low", "" if evaluation.bound_low is None else evaluation.bound_low),
        ("bound_high", "" if evaluation.bound_high is None else evaluation.bound_high),
        ("model", model.name),
        *model.record().items(),
        ("headline", evaluation.headline),
    ]
    if model.checkpoint is not None:
        properties += [("checkpoint", model.checkpoint), ("step", "" if model.step is None else model.step)]
    measured = evaluation.measured
    if "generated_text" in measured:
        properties.append(("generated_text", measured["generated_text"]))
    properties += [("note", note) for note in evaluation.notes]
    properties += [(f"measured.{key}", number) for key, number in measured.items() if key != "generated_text"]
    return properties
