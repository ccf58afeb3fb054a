"""pytest hooks, wired to classes imported lazily.

``pytest --help`` in a project that never collects a spec imports neither
torch nor transformers from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SPEC_DIR_NAME = "model_specs"
STALE_KEY = pytest.StashKey[list[str]]()
NOTES_KEY = pytest.StashKey[list[str]]()  # lines for the terminal summary, filled by spec items


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("interp_assert", "model-internals specs (interp_assert)")
    group.addoption(
        "--interp-model",
        action="append",
        default=[],
        metavar="SPEC_MODEL=PATH_OR_ID",
        help="run specs that name SPEC_MODEL against PATH_OR_ID instead (repeatable)",
    )
    group.addoption(
        "--interp-missing",
        choices=("error", "skip"),
        default="error",
        help="what to do when a spec's model cannot be loaded offline: error (default) or skip with the reason",
    )
    group.addoption("--interp-device", default=None, help="device for every spec's model (overrides the spec)")
    group.addoption(
        "--interp-dtype",
        choices=("float32", "float16", "bfloat16"),
        default=None,
        help="dtype for every spec's model (overrides the spec)",
    )
    group.addoption(
        "--interp-trust-remote-code",
        action="store_true",
        default=False,
        help="allow models whose code lives in their repository (off by default: it runs arbitrary code)",
    )
    group.addoption(
        "--interp-allow-pickle",
        action="store_true",
        default=False,
        help="allow pickled (.bin/.pt) weights; by default only safetensors load",
    )
    group.addoption(
        "--interp-artifacts",
        default=None,
        metavar="DIR",
        help="for each failed expectation, write heatmaps of the head concerned into DIR and name them in the failure",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "interp_model(name): a spec item and the model it runs on")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml") or "__snapshots__" in file_path.parts:
        return None
    if file_path.parent.name != SPEC_DIR_NAME and not parent.session.isinitpath(file_path):
        return None
    from interp_assert.collect import SpecCollector

    return SpecCollector.from_parent(parent, path=file_path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from interp_assert.collect import order_by_model

    items[:] = order_by_model(config, items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    from interp_assert.collect import RAN_SPECS_KEY, stale_snapshots

    if RAN_SPECS_KEY in session.config.stash:
        session.config.stash[STALE_KEY] = stale_snapshots(session.config)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    lines = config.stash.get(NOTES_KEY, []) + config.stash.get(STALE_KEY, [])
    if lines:
        terminalreporter.section("interp_assert snapshots")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_report_header(config: pytest.Config) -> Any:
    overrides = config.getoption("--interp-model")
    return f"interp_assert: model overrides {', '.join(overrides)}" if overrides else None
