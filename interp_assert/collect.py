"""pytest collection of spec files: one item per expectation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from interp_assert.errors import InterpAssertError, ModelLoadError, SpecError
from interp_assert.plugin import NOTES_KEY
from interp_assert.spec import Entry, SpecFile, load_spec

RUNNER_KEY = pytest.StashKey["Any"]()
RAN_SPECS_KEY = pytest.StashKey[dict[str, SpecFile]]()


def runner_for(config: pytest.Config) -> Any:
    """The session's :class:`~interp_assert.runner.Runner`, built on first use."""
    if RUNNER_KEY not in config.stash:
        from interp_assert.runner import Runner

        config.stash[RUNNER_KEY] = Runner(run_options(config))
    return config.stash[RUNNER_KEY]


def run_options(config: pytest.Config) -> Any:
    from interp_assert.runner import RunOptions

    overrides = {}
    for item in config.getoption("--interp-model"):
        name, sep, target = item.partition("=")
        if not sep or not name or not target:
            raise pytest.UsageError(f"--interp-model {item!r}: expected SPEC_MODEL=PATH_OR_ID")
        overrides[name] = target
    return RunOptions(
        overrides=overrides,
        device=config.getoption("--interp-device"),
        dtype=config.getoption("--interp-dtype"),
        trust_remote_code=config.getoption("--interp-trust-remote-code"),
        allow_pickle=config.getoption("--interp-allow-pickle"),
        missing=config.getoption("--interp-missing"),
        update_snapshots=bool(getattr(config.option, "update_snapshots", False)),
    )


class ExpectationFailed(AssertionError):
    """An expectation was measured and did not hold."""

    def __init__(self, outcome: Any) -> None:
        super().__init__(outcome.headline)
        self.outcome = outcome


class SpecCollector(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        shown = os.path.relpath(self.path, self.config.invocation_params.dir)
        spec = load_spec(self.path, shown=shown)  # malformed YAML: a collection error naming file:line
        if spec.header is None:
            yield SpecItem.from_parent(self, name="spec", spec=spec, entry=None)
            return
        for entry in spec.entries:
            yield SpecItem.from_parent(self, name=entry.name, spec=spec, entry=entry)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:  # type: ignore[override]
        if isinstance(excinfo.value, InterpAssertError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)


class SpecItem(pytest.Item):
    """One expectation of a spec file (or, for an invalid header, the whole file)."""

    def __init__(self, *, spec: SpecFile, entry: Entry | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.entry = entry

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
            runner_for(self.config).model_for(self.spec)
        except ModelLoadError as exc:
            if self.config.getoption("--interp-missing") == "skip":
                # reported at the expectation's line in the spec, not at this line
                raise pytest.skip.Exception(f"model not available: {exc}", _use_item_location=True) from None
            pytest.fail(
                f"{self.nodeid}: model not available: {exc}\n"
                "(pass --interp-missing=skip to skip specs whose model is missing)",
                pytrace=False,
            )

    def runtest(self) -> None:
        if self.problems:
            raise SpecError(self.problems)
        assert self.entry is not None
        self.config.stash.setdefault(RAN_SPECS_KEY, {})[self.spec.path] = self.spec
        outcome = runner_for(self.config).evaluate(self.spec, self.entry)
        for key, value in outcome.measured.items():
            self.user_properties.append((key, value))
        self.user_properties.append(("headline", outcome.headline))
        for note in outcome.notes:
            self.user_properties.append(("note", note))
            self.config.stash.setdefault(NOTES_KEY, []).append(f"{self.nodeid}: {note}")
        if not outcome.passed:
            artifacts = self.config.getoption("--interp-artifacts")
            if artifacts:
                from interp_assert.report import write_failure_artifacts

                here = self.config.invocation_params.dir
                try:
                    written = write_failure_artifacts(
                        runner_for(self.config), self.spec, self.entry, outcome, here / artifacts
                    )
                    self.artifact_lines = [f"  heatmap: {_shown_path(path, here)}" for path in written]
                except (InterpAssertError, OSError) as exc:  # a picture must never hide the failure itself
                    self.artifact_lines = [f"  heatmap not written: {exc}"]
            raise ExpectationFailed(outcome)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        error = excinfo.value
        if isinstance(error, ExpectationFailed):
            return self._failure_text(error.outcome)
        if isinstance(error, SpecError):
            return "invalid spec:\n" + str(error)
        if isinstance(error, InterpAssertError):
            return f"{self.nodeid}: {error}"
        return super().repr_failure(excinfo)

    def _failure_text(self, outcome: Any) -> str:
        assert self.entry is not None and self.entry.expectation is not None and self.spec.header is not None
        expectation = self.entry.expectation
        lines = [
            f"{self.entry.location}: expectation {self.name!r} ({expectation.property}) failed",
            f"  {outcome.headline}",
            *(f"  {detail}" for detail in outcome.details),
            f"  prompts: {expectation.prompts!r}; model: {self.spec.header.model!r}",
        ]
        lines += getattr(self, "artifact_lines", [])
        if expectation.property not in ("snapshot", "generated_text"):
            lines.append("  if the model changed on purpose, edit the bound in the spec")
        return "\n".join(lines)


def _shown_path(path: Any, base: Any) -> str:
    """``path`` relative to where pytest was invoked, or absolute when it lies outside."""
    relative = os.path.relpath(path, base)
    return str(path) if relative.startswith("..") else relative


def stale_snapshots(config: pytest.Config) -> list[str]:
    """After the run: delete (under --snapshot-update) or list snapshots whose expectation is gone.

    Only spec files with a valid header, at least one of whose items ran, are looked at;
    a skipped or deselected expectation still exists in its spec, so its snapshot is kept.
    """
    from interp_assert import snapshot

    update = bool(getattr(config.option, "update_snapshots", False))
    lines = []
    for spec in config.stash.get(RAN_SPECS_KEY, {}).values():
        current = {entry.name for entry in spec.entries}
        stale = snapshot.stored_names(spec.path) - current
        if not stale:
            continue
        where = snapshot.snapshot_file(spec.path)
        if update:
            snapshot.delete(spec.path, stale)
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
        model = model_key(item.spec, options) if item.spec.header else ("", "", "")
        return rank.setdefault(model, len(rank))

    return others + sorted(specs, key=key)
