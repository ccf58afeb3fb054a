"""The terminal summary's count of spec items: how many expectations held, failed, and could not
run, and why (a model that cannot load is a setup error, never a failure).

Counted from the test reports, which pytest-xdist sends back to the controller, so a spread run
counts like a serial one. Nothing here imports torch.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import pytest

SPEC_SUFFIXES = (".yaml", ".yml")
MAX_REASON = 100


@dataclass
class Tally:
    held: int = 0
    failed: int = 0
    invalid: int = 0
    could_not_run: collections.Counter[str] = field(default_factory=collections.Counter)
    cached: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.held + self.failed + self.invalid + self.skipped + sum(self.could_not_run.values())


TALLY_KEY = pytest.StashKey[Tally]()


def is_spec_item(nodeid: str) -> bool:
    path = nodeid.split("::", 1)[0]
    return "::" in nodeid and path.endswith(SPEC_SUFFIXES)


def _reason(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        text = str(report.longrepr[2]).removeprefix("Skipped: ")
    else:
        text = report.longreprtext
    first = next((line.strip() for line in text.splitlines() if line.strip()), "unknown")
    _, sep, after = first.partition("model not available: ")  # "<nodeid>: model not available: model 'x': why"
    # which model, not again why: the error above says that once, in full
    reason = f"model not available: {after.split(': ')[0]} (the errors above say why)" if sep else first
    _, sep, after = first.partition(": could not run: ")  # "<nodeid>: could not run: OutOfMemoryError: ..."
    reason = after.split(" (infrastructure")[0] if sep else reason
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"


def count(config: pytest.Config, report: pytest.TestReport) -> None:
    if not is_spec_item(report.nodeid):
        return
    tally = config.stash.setdefault(TALLY_KEY, Tally())
    if report.when == "setup" and (report.failed or report.skipped):
        tally.could_not_run[_reason(report)] += 1
    elif report.when == "call" and report.passed:
        tally.held += 1
        tally.cached += ("cached", "true") in report.user_properties
    elif report.when == "call" and report.skipped:
        tally.skipped += 1
    elif report.when == "call" and report.failed:
        if report.longreprtext.startswith("invalid spec"):
            tally.invalid += 1
        else:
            tally.failed += 1


class Counter:
    """Registered as a plugin at configure time: counts every report this session receives."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        count(self.config, report)


def lines(config: pytest.Config, smoke: str = "") -> list[str]:
    tally = config.stash.get(TALLY_KEY, None)
    if tally is None or tally.total == 0:
        return []
    unavailable = sum(tally.could_not_run.values())
    head = f"{tally.held} expectations held, {tally.failed} failed"
    head += f", {tally.invalid} invalid" if tally.invalid else ""
    head += f", {tally.skipped} skipped" if tally.skipped else ""
    head += f", {unavailable} could not run" if unavailable else ""
    head += f"; {tally.cached} held from the result cache (--interp-cache)" if tally.cached else ""
    said = [head + (f" ({smoke})" if smoke else "")]
    said += [f"  {n} could not run: {reason}" for reason, n in tally.could_not_run.most_common()]
    return said
