"""What every property is made of: a strict pydantic model of its spec keys, what it needs from
capture, its check, and (optionally) what report draws for it and how audit compares it.

A property module subclasses :class:`Expectation` (or :class:`Bounded`), narrows ``property``
to its own ``Literal`` tag, and implements :meth:`Expectation.requirements` and
:meth:`Expectation.check`. Everything else (the spec union, the JSON Schema, dispatch, report
plans) is built from the registry in :mod:`interp_assert.properties`. Pure: numbers in, an
:class:`~interp_assert.outcome.Outcome` out; no torch, no files (the snapshot property reaches
its files through :mod:`interp_assert.drift.snapshot`, imported when it runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import AfterValidator, Field, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure import head_tables as scores
from interp_assert.measure.measurements import CaptureRequest, Measurements
from interp_assert.outcome import Outcome
from interp_assert.strict import Strict
from interp_assert.vocab import TARGET_ROLES, Role, TargetRole, parse_head

if TYPE_CHECKING:
    from interp_assert.drift import fingerprint as fp_types

NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
TOP_SHOWN = 5


def _valid_head(name: str) -> str:
    parse_head(name)
    return name


HeadName = Annotated[str, AfterValidator(_valid_head)]


def _ordered_range(bounds: list[int]) -> list[int]:
    first, last = bounds
    if (first < 0) == (last < 0) and first > last:
        raise ValueError(f"range [{first}, {last}] is empty: the first index must not come after the last")
    return bounds


LayerRange = Annotated[list[int], Field(min_length=2, max_length=2), AfterValidator(_ordered_range)]


@dataclass(frozen=True)
class CheckContext:
    """What a check may use beyond its own keys: the prompt set's measurements and, for the
    snapshot property, where the spec lives, its spec-wide tolerances and the run's environment."""

    measurements: Measurements
    spec_path: str = ""
    snapshot_tolerance: Mapping[Any, Any] = field(default_factory=dict)  # the header's snapshot_tolerance
    environment: Mapping[str, str] = field(default_factory=dict)  # model, weights hash, versions
    update_snapshots: bool = False


@dataclass(frozen=True)
class FigureNeeds:
    """Which of report's standard figures show this expectation (see :mod:`interp_assert.commands.report`)."""

    roles: tuple[Role, ...] = ()  # layers x heads heatmaps of these role scores
    heads: tuple[str, ...] = ()  # attention patterns of these heads
    norms: bool = False  # the hidden-norm curve (``layers`` shaded when ``span``)
    fractions: bool = False  # head-label fractions by layer
    stats: bool = False  # attention statistics by layer
    span: tuple[int, int] | None = None  # the layer range to shade on the figure (Python-style indices)
    label_threshold: float | None = None  # the threshold the head labels are drawn at (fractions)
    series: str | None = None  # the attention statistic to draw beside the standard ones (stats)


@dataclass(frozen=True)
class ModelDrift:
    """How one model moved from another, as audit shows it."""

    within: bool
    headline: str
    details: tuple[str, ...] = ()
    summary: tuple[str, ...] = ()  # by layer and role, in words
    before: fp_types.Fingerprint | None = None
    after: fp_types.Fingerprint | None = None


class Expectation(Strict):
    """One expectation of a spec: the keys every property has, and the hooks each implements."""

    property: str  # each subclass narrows this to its own Literal tag
    name: str = Field(pattern=NAME_PATTERN)
    prompts: str
    description: str | None = None

    # The spec loader refuses a prompt set without pairs for properties that compare prompt pairs.
    needs_pairs: ClassVar[bool] = False
    # Failure text ends with "edit the bound in the spec" for properties that have one.
    edit_hint: ClassVar[bool] = True
    # The properties page's row (keys, passes when): ``python scripts/gen_docs.py`` writes docs/properties.md.
    reference: ClassVar[tuple[str, str]] = ("", "")

    def requirements(self) -> CaptureRequest:
        """What capture must compute for this expectation."""
        raise NotImplementedError(f"{type(self).__name__} does not say what it needs from capture")

    def check(self, context: CheckContext) -> Outcome:
        """Measurements -> outcome. Raises :class:`CheckInputError` for a head or layer the model lacks."""
        raise NotImplementedError(f"{type(self).__name__} has no check")

    def figures(self) -> FigureNeeds:
        return FigureNeeds()

    def own_figures(self, context: CheckContext, out_dir: Path) -> list[tuple[str, str]]:
        """Figures only this property draws, written into ``out_dir``: (file name, caption) pairs."""
        return []

    def audit_figures(self, base: CheckContext, checkpoint: CheckContext, out_dir: Path) -> list[tuple[str, str]]:
        """Figures of this expectation's numbers on base and checkpoint, side by side, written into
        ``out_dir`` for ``audit --report``: (file name, caption) pairs. Default: none."""
        return []

    def audit_drift(self, base: CheckContext, checkpoint: CheckContext) -> ModelDrift | None:
        """For properties that compare a model with another (snapshot): how ``checkpoint`` moved
        from ``base``. ``None`` (the default): audit checks the expectation on each model instead."""
        return None

    def bounds(self) -> tuple[float | None, float | None]:
        """The expectation's (lower, upper) bounds on its headline value, ``None`` where it has none."""
        return getattr(self, "at_least", None), getattr(self, "at_most", None)

    def flagged_role(self) -> TargetRole | None:
        """The role whose score a failure names a head for, when a frequent query token may explain it
        (the runner then adds a ``flag:`` line); ``None`` for properties that do not score a role."""
        role = getattr(self, "role", None)
        return role if role in TARGET_ROLES else None

    def evaluate(self, context: CheckContext) -> Outcome:
        """:meth:`check`, with the bounds recorded and the headline value formatted."""
        from dataclasses import replace

        from interp_assert.outcome import format_value

        outcome = self.check(context)
        low, high = self.bounds()
        return replace(outcome, shown=outcome.shown or format_value(outcome.value), bound_low=low, bound_high=high)


class Bounded(Expectation):
    """An expectation on one number, with explicit ``at_least`` and/or ``at_most``."""

    at_least: float | None = None
    at_most: float | None = None

    unit_bounds: ClassVar[bool] = True  # the number is a score in [0, 1]
    bounds_required: ClassVar[bool] = True  # False: the property states other things too

    @model_validator(mode="after")
    def _check_bounds(self) -> Bounded:
        if self.bounds_required and self.at_least is None and self.at_most is None:
            raise ValueError("give at least one bound: 'at_least' and/or 'at_most'")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError(f"at_least ({self.at_least}) is greater than at_most ({self.at_most})")
        if self.unit_bounds:
            for key in ("at_least", "at_most"):
                value = getattr(self, key)
                if value is not None and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{key}: {value} is outside [0, 1], the range of this score")
        return self

    def within(self, subject: str, value: float) -> tuple[bool, str]:
        """Compare ``value`` to the bounds; the message says by how much."""
        low, high = self.at_least, self.at_most
        wanted = " and ".join(
            part
            for part in (
                f"at_least {low:g}" if low is not None else "",
                f"at_most {high:g}" if high is not None else "",
            )
            if part
        )
        if not wanted:
            return True, f"{subject} = {value:.4f}"
        if np.isnan(value):
            return False, f"{subject} could not be measured (no query row had a target); expected {wanted}"
        if low is not None and value < low:
            return False, f"{subject} = {value:.4f}, expected {wanted}: short by {low - value:.4f}"
        if high is not None and value > high:
            return False, f"{subject} = {value:.4f}, expected {wanted}: over by {value - high:.4f}"
        margins = [
            m
            for m in (value - low if low is not None else None, high - value if high is not None else None)
            if m is not None
        ]
        return True, f"{subject} = {value:.4f}, expected {wanted} (margin {min(margins):.4f})"


# ---- helpers the built-in properties share ----


def measured_extra(context: CheckContext, request: object, what: str) -> dict[str, Any]:
    """What ``request`` (a :class:`~interp_assert.measure.measurements.MeasureRequest`) measured on the
    prompt set, or :class:`CheckInputError`: ``what`` was not measured, or the measurement said why not."""
    found = context.measurements.extras.get(request)
    if found is None:
        raise CheckInputError(f"{what} was not measured on this prompt set")
    if "error" in found:
        raise CheckInputError(found["error"])
    result: dict[str, Any] = found
    return result


def resolve_index(index: int, count: int, what: str) -> int:
    """A Python-style index (negative from the end) into ``count`` items, or :class:`CheckInputError`."""
    resolved = index + count if index < 0 else index
    if not 0 <= resolved < count:
        raise CheckInputError(f"{what} {index} is out of range: this model has {count} ({-count} to {count - 1})")
    return resolved


def resolve_range(bounds: list[int], count: int, what: str) -> tuple[int, int]:
    first, last = (resolve_index(b, count, what) for b in bounds)
    if first > last:
        raise CheckInputError(f"{what} range {bounds} is empty: the first must not come after the last")
    return first, last


def resolve_steps(bounds: list[int], count: int, what: str, check: str) -> tuple[int, int]:
    """:func:`resolve_range` for a check over steps k -> k+1: a range that resolves to one index
    (``[1, 1]``, or ``[-1, 2]`` on a 2-layer model) has no step, so it would check nothing."""
    first, last = resolve_range(bounds, count, what)
    if first == last:
        raise CheckInputError(
            f"{what} range {bounds} is the single index {first} on this model: {check} needs at least one step "
            f"(indices run 0 to {count - 1})"
        )
    return first, last


def single_index_problem(bounds: list[int] | None, check: str) -> str | None:
    """For a spec's validator: ``[k, k]`` is one index whatever the model, so a check of steps is empty."""
    if bounds is not None and bounds[0] == bounds[1]:
        return (
            f"[{bounds[0]}, {bounds[1]}] is a single index: {check} needs at least one step, "
            "so give two different indices, e.g. [0, -1]"
        )
    return None


def head_index(name: str, m: Measurements) -> tuple[int, int]:
    layer, head = parse_head(name)
    if not (0 <= layer < m.n_layers and 0 <= head < m.n_heads):
        raise CheckInputError(
            f"head {name} is out of range: this model has layers 0-{m.n_layers - 1} and heads 0-{m.n_heads - 1} "
            f"(L0H0 to L{m.n_layers - 1}H{m.n_heads - 1})"
        )
    return layer, head


def role_table(m: Measurements, role: Role) -> np.ndarray:
    return m.role_scores[role]


def top_line(table: np.ndarray, role: str, k: int = TOP_SHOWN) -> str:
    ranked = scores.ranked_heads(table)[:k]
    return f"top {k} {role} heads: " + ", ".join(f"{name} {value:.4f}" for name, value in ranked)


def layer_line(table: np.ndarray, role: str) -> str:
    means = scores.layer_means(table)
    order = np.argsort(-means, kind="stable")[:TOP_SHOWN]
    return f"layers by mean {role}: " + ", ".join(f"{int(i)} {means[i]:.4f}" for i in order)


def norms(m: Measurements, include_first: bool) -> np.ndarray:
    found = m.hidden_norms if include_first else m.hidden_norms_without_first
    assert found is not None
    return found
