"""One expectation checked on one model: the record every front-end renders.

The runner makes one :class:`Evaluation` per (expectation, model, checkpoint). The pytest item,
its JUnit properties, ``report``, ``audit``, ``track`` and the Python API read it and nothing else:
whether it passed, the property's tag and bounds, the headline, the measured numbers, the heads
concerned, and which model it was measured on. An expectation that could not be checked on that
model (a head it lacks, a checkpoint that does not load) is an evaluation too, with ``error`` set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from interp_assert.outcome import Outcome, format_value

State = Literal["measured", "error", "unavailable", "invalid"]


@dataclass(frozen=True)
class ModelIdentity:
    """Which model an evaluation was measured on."""

    name: str  # as the user named it: the spec's model, or what replaced it
    source: str = ""  # the file, folder or hub id it was loaded from
    weights_sha256: str = ""
    revision: str | None = None  # the hub revision asked for
    commit: str | None = None  # the hub commit it resolved to
    checkpoint: str | None = None  # the checkpoint's label, in a track or under --interp-checkpoints
    step: int | None = None

    def record(self) -> dict[str, str]:
        """The keys JUnit and the result cache store (``model_source``, ``weights_sha256``, ...)."""
        found = {"model_source": self.source, "weights_sha256": self.weights_sha256}
        found |= {key: value for key, value in (("revision", self.revision), ("commit", self.commit)) if value}
        return found

    @staticmethod
    def from_record(name: str, record: dict[str, str]) -> ModelIdentity:
        return ModelIdentity(
            name,
            record.get("model_source", ""),
            record.get("weights_sha256", ""),
            record.get("revision"),
            record.get("commit"),
        )


@dataclass(frozen=True)
class Evaluation:
    """One expectation on one model: its outcome, or why there is none."""

    spec: str  # the spec file's path
    name: str  # the expectation's name
    tag: str  # the property's tag ("" for an entry that is not a valid expectation)
    prompts: str  # the prompt set it reads ("" for weight-only properties)
    model: ModelIdentity
    outcome: Outcome | None = None
    state: State = "measured"
    error: str = ""  # why there is no outcome (one line)
    bound_low: float | None = None
    bound_high: float | None = None
    cached: bool = False  # answered by --interp-cache, measured earlier under the same key
    figures: tuple[str, ...] = ()  # files drawn for it (failure artifacts, report figures)
    # The error itself, for a front-end that re-raises it (the pytest item shows a spec error as one).
    problem: Exception | None = field(default=None, compare=False, repr=False)

    @property
    def passed(self) -> bool:
        return self.outcome is not None and self.outcome.passed

    @property
    def status(self) -> str:
        """``passed``, ``failed``, ``error``, ``unavailable`` or ``invalid``."""
        if self.outcome is None:
            return self.state
        return "passed" if self.outcome.passed else "failed"

    @property
    def unavailable(self) -> bool:
        return self.state == "unavailable"

    @property
    def value(self) -> float | int | str | None:
        return None if self.outcome is None else self.outcome.value

    @property
    def shown(self) -> str:
        """The headline value as a table shows it."""
        if self.outcome is None:
            return self.state
        return self.outcome.shown or format_value(self.outcome.value)

    @property
    def headline(self) -> str:
        return self.error if self.outcome is None else self.outcome.headline

    @property
    def details(self) -> tuple[str, ...]:
        return () if self.outcome is None else self.outcome.details

    @property
    def heads(self) -> tuple[str, ...]:
        return () if self.outcome is None else self.outcome.heads

    @property
    def notes(self) -> tuple[str, ...]:
        return () if self.outcome is None else self.outcome.notes

    @property
    def measured(self) -> dict[str, float | str]:
        return {} if self.outcome is None else self.outcome.measured

    @property
    def series(self) -> tuple[float, ...]:
        """The value's curve, where the property draws one (a probe's AUROC by block)."""
        return () if self.outcome is None else self.outcome.series

    def to_json(self) -> dict[str, Any]:
        """A JSON document :meth:`from_json` reads back (a resumed ``track`` keeps its cells so)."""
        # what a reader of the file wants first (as audit and track show a cell), then the record itself
        shown = {
            "passed": self.passed,
            "value": self.value,
            "shown": self.shown,
            "headline": self.headline,
            "unavailable": self.unavailable,
        }
        found = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "problem"}
        found["model"] = asdict(self.model)
        found["outcome"] = None if self.outcome is None else asdict(self.outcome)
        document: dict[str, Any] = json_safe(shown | found)
        return document

    @staticmethod
    def from_json(data: dict[str, Any]) -> Evaluation:
        outcome = data.get("outcome")
        return Evaluation(
            data["spec"],
            data["name"],
            data["tag"],
            data["prompts"],
            ModelIdentity(**data["model"]),
            None if outcome is None else outcome_from_json(outcome),
            data["state"],
            data["error"],
            data["bound_low"],
            data["bound_high"],
            data["cached"],
            tuple(data["figures"]),
        )


def outcome_from_json(data: dict[str, Any]) -> Outcome:
    fields = dict(data)
    for key in ("details", "heads", "notes"):
        fields[key] = tuple(fields[key])
    fields["written"] = None if fields["written"] is None else tuple(fields["written"])
    # JSON has no NaN: a curve's missing points come back as null
    fields["series"] = tuple(math.nan if x is None else float(x) for x in fields.get("series") or ())
    return Outcome(**fields)


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON: NaN and infinities become ``null`` (JSON has neither), tuples lists,
    numpy scalars Python numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if hasattr(value, "item"):  # numpy scalars
        return json_safe(value.item())
    return value
