"""pytest hooks, wired to classes imported lazily.

``pytest --help`` in a project that never collects a spec imports neither
torch nor transformers from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from interp_assert.pytest_plugin.stash import NOTES_KEY, RAN_SPECS_KEY, STALE_KEY

SPEC_DIR_NAME = "model_specs"


def pytest_addoption(parser: pytest.Parser) -> None:
    from interp_assert.pytest_plugin.options import add_options

    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    from interp_assert.option_table import OPTIONS
    from interp_assert.pytest_plugin import options

    config.addinivalue_line("markers", "interp_model(name): a spec item and the model it runs on")
    for option in OPTIONS:
        options.get(config, option.name)  # an invalid ini value is a usage error now, not in every item
    updating = bool(getattr(config.option, "update_snapshots", False))
    if updating and options.get(config, "interp_model") and not options.get(config, "interp_allow_override_update"):
        raise pytest.UsageError(
            "--snapshot-update with --interp-model would store the override's numbers as the spec's own "
            "snapshot; run the update without --interp-model, or pass --interp-allow-override-update if "
            "recording the other model is what you mean"
        )
    if options.get(config, "interp_checkpoints"):
        options.configure_checkpoints(config, updating=updating)
    artifacts = options.get(config, "interp_artifacts")
    if artifacts:  # refused now, not after the first failure: the pictures must not replace the user's files
        from interp_assert.commands.report import artifacts_folder_problem

        problem = artifacts_folder_problem(config.invocation_params.dir / artifacts)
        if problem:
            raise pytest.UsageError(f"--interp-artifacts {artifacts}: {problem}")
    options.configure_ci(config, updating=updating)
    from interp_assert.pytest_plugin.summary import Counter

    config.pluginmanager.register(Counter(config), "interp_assert_counter")


def smoke_label(config: pytest.Config) -> str:
    from interp_assert.pytest_plugin.options import get

    limit = get(config, "interp_limit")
    return f"smoke run: {limit} prompts per set" if limit else ""


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml") or "__snapshots__" in file_path.parts:
        return None
    if file_path.parent.name != SPEC_DIR_NAME and not parent.session.isinitpath(file_path):
        return None
    from interp_assert.pytest_plugin.collect import SpecCollector

    return SpecCollector.from_parent(parent, path=file_path)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Do not follow a directory symlink back into a folder it sits in (``model_specs/loop -> ..``):
    pytest would collect the same specs again at every level, without end."""
    if not collection_path.is_symlink() or not collection_path.is_dir():
        return None
    try:
        target = collection_path.resolve(strict=True)
    except (OSError, RuntimeError):
        return True  # a link that cannot be resolved (it loops on itself) holds nothing to collect
    if any(ancestor.resolve() == target for ancestor in collection_path.parents):
        return True
    return None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    from interp_assert.pytest_plugin.collect import check_run, order_by_model

    check_run(session, items)
    items[:] = order_by_model(config, items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    from interp_assert.pytest_plugin.collect import stale_snapshots

    if RAN_SPECS_KEY in session.config.stash:
        session.config.stash[STALE_KEY] = stale_snapshots(session.config)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    from interp_assert.pytest_plugin import summary
    from interp_assert.pytest_plugin.collect import written_summary

    counted = summary.lines(config, smoke_label(config))
    if counted:
        terminalreporter.section("interp_assert")
        for line in counted:
            terminalreporter.write_line(line)
    lines = config.stash.get(NOTES_KEY, []) + written_summary(config) + config.stash.get(STALE_KEY, [])
    if lines:
        terminalreporter.section("interp_assert snapshots")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_report_header(config: pytest.Config) -> Any:
    from interp_assert.pytest_plugin.options import get

    overrides = get(config, "interp_model")
    lines = [f"interp_assert: model overrides {', '.join(overrides)}"] if overrides else []
    if smoke_label(config):
        lines.append(f"interp_assert: SMOKE RUN ({smoke_label(config)}): snapshots are skipped and never written")
    return lines or None


@pytest.fixture(scope="session")
def interp(pytestconfig: pytest.Config) -> Any:
    """State a spec's properties from a Python test: ``interp.model("tiny-neo").expect(...)``.
    Honours the ``--interp-*`` options (overrides, device, dtype) like spec files do."""
    from interp_assert.api import Interp
    from interp_assert.pytest_plugin.collect import run_options

    return Interp(run_options(pytestconfig))
