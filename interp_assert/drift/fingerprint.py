"""A model's numeric fingerprint: build it from measurements, write it as text, read it
back, and compare two with per-quantity tolerances. Pure: no model, no files.

The text is line-based so that a snapshot diff in a pull request reads head by head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from interp_assert.drift import drift_summary
from interp_assert.measure import head_tables as scores
from interp_assert.measure.measurements import Measurements
from interp_assert.vocab import ROLES, Role, head_name

FORMAT = "interp_assert fingerprint v1"
RELATIVE_FLOOR = 5.0  # relative change counts only where |base| >= this many atol
LABEL_THRESHOLD = 0.5


@dataclass(frozen=True)
class Tolerance:
    rtol: float = 0.0
    atol: float = 0.0

    def allows(self, before: float, after: float) -> bool:
        if math.isnan(before) or math.isnan(after):
            return math.isnan(before) and math.isnan(after)
        return abs(after - before) <= self.atol + self.rtol * abs(before)

    def scaled(self, factor: float) -> Tolerance:
        return Tolerance(self.rtol * factor, self.atol * factor)


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "role_scores": Tolerance(atol=0.02),
    "layer_stats": Tolerance(atol=0.02),
    "hidden_norms": Tolerance(rtol=0.02),
    # the parts a snapshot covers only when asked (``covers:``), so older snapshots stay valid
    "loss": Tolerance(rtol=0.02, atol=0.01),  # nats
    "layer_ablation": Tolerance(rtol=0.05, atol=0.02),  # nats
    "logit_lens": Tolerance(rtol=0.05, atol=0.02),  # agreement fractions and KL in nats
    "massive_activation": Tolerance(rtol=0.05),
    "sink_rate": Tolerance(atol=0.12),  # a fraction of a layer's heads: one head in 9 may cross eps
}
SINK_EPS = 0.3


@dataclass(frozen=True)
class Fingerprint:
    """Named numeric series (``role_scores.previous_token.L3`` -> one value per head), head labels,
    and the environment (recorded, never compared)."""

    values: dict[str, list[float]]
    labels: dict[str, list[str]] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)


def build(
    m: Measurements, covers: tuple[str, ...], roles: tuple[Role, ...], environment: dict[str, str]
) -> Fingerprint:
    values: dict[str, list[float]] = {}
    labels: dict[str, list[str]] = {}
    if "role_scores" in covers:
        for role in roles:
            for layer, row in enumerate(m.role_scores[role]):
                values[f"role_scores.{role}.L{layer}"] = [float(v) for v in row]
    if "role_labels" in covers:
        table = scores.head_labels(m.role_scores, LABEL_THRESHOLD)
        for layer, row in enumerate(table):
            labels[f"role_labels.L{layer}"] = [str(v) for v in row]
    if "layer_stats" in covers:
        assert m.max_weight is not None and m.mean_weight is not None
        values["layer_stats.max"] = [float(v) for v in m.max_weight.max(axis=1)]
        values["layer_stats.mean"] = [float(v) for v in m.mean_weight.mean(axis=1)]
        for role in ("focus", "breadth"):
            values[f"layer_stats.{role}"] = [float(v) for v in scores.layer_means(m.role_scores[role])]
    if "hidden_norms" in covers:
        assert m.hidden_norms is not None and m.hidden_norms_without_first is not None
        values["hidden_norms.without_first"] = [float(v) for v in m.hidden_norms_without_first]
        values["hidden_norms.with_first"] = [float(v) for v in m.hidden_norms]
    _build_opt_in(m, covers, values, labels)
    return Fingerprint(values, labels, environment)


def _build_opt_in(
    m: Measurements, covers: tuple[str, ...], values: dict[str, list[float]], labels: dict[str, list[str]]
) -> None:
    if "loss" in covers or "layer_ablation" in covers:
        assert m.token_losses is not None
        clean = float(np.concatenate([batch.ravel() for batch in m.token_losses]).mean())
        if "loss" in covers:
            values["loss.mean"] = [clean]
        if "layer_ablation" in covers:
            assert m.layer_ablation_losses is not None
            values["layer_ablation.effect"] = [float(v) - clean for v in m.layer_ablation_losses]
    if "logit_lens" in covers:
        assert m.logit_lens is not None
        values["logit_lens.agreement"] = [float(v) for v in m.logit_lens.agreement]
        values["logit_lens.kl"] = [float(v) for v in m.logit_lens.kl]
    if "massive_activation" in covers:
        peaks = m.activation_peaks
        assert peaks is not None
        values["massive_activation.peak"] = [float(v) for v in peaks.value]
        values["massive_activation.ratio"] = [
            float(v / d) if d > 0 else math.nan for v, d in zip(peaks.value, peaks.median, strict=True)
        ]
        labels["massive_activation.where"] = [
            f"p{int(p)}d{int(d)}" for p, d in zip(peaks.position, peaks.dimension, strict=True)
        ]
    if "sink_rate" in covers:
        values["sink_rate.by_layer"] = [float(v) for v in (m.role_scores["first_token"] > SINK_EPS).mean(axis=1)]


def render(fingerprint: Fingerprint) -> str:
    lines = [FORMAT, "[environment: recorded, not compared]"]
    lines += [f"{key} = {value}" for key, value in sorted(fingerprint.environment.items())]
    lines.append("[values]")
    lines += [f"{key} = {' '.join(_number(v) for v in series)}" for key, series in fingerprint.values.items()]
    if fingerprint.labels:
        lines.append("[labels]")
        lines += [f"{key} = {' '.join(series)}" for key, series in fingerprint.labels.items()]
    return "\n".join(lines)


def parse(text: str) -> Fingerprint:
    """Inverse of :func:`render`. Raises ``ValueError`` naming the line for anything else."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != FORMAT:
        raise ValueError(f"not an interp_assert fingerprint (first line should be {FORMAT!r})")
    section = ""
    fingerprint = Fingerprint({}, {}, {})
    for number, line in enumerate(lines[1:], start=2):
        if line.startswith("["):
            section = line
            continue
        key, sep, rest = line.partition(" = ")
        if not sep:
            raise ValueError(f"fingerprint line {number} is not 'key = value': {line!r}")
        if section.startswith("[environment"):
            fingerprint.environment[key] = rest
        elif section == "[values]":
            fingerprint.values[key] = [float(v) for v in rest.split()]
        elif section == "[labels]":
            fingerprint.labels[key] = rest.split()
    return fingerprint


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    short = f"{value:.6g}"
    return short if float(short) == value else repr(float(value))


def rounded(fingerprint: Fingerprint, tolerances: dict[str, Tolerance]) -> Fingerprint:
    """Values rounded to a hundredth of what each quantity's tolerance can see, so recording
    an unchanged model again rewrites no line (and a diff shows only real moves)."""
    values = {
        key: [_round(v, tolerances.get(key.split(".")[0], Tolerance())) for v in series]
        for key, series in fingerprint.values.items()
    }
    return Fingerprint(values, dict(fingerprint.labels), dict(fingerprint.environment))


def _round(value: float, tolerance: Tolerance) -> float:
    if not math.isfinite(value) or value == 0.0:
        return value
    candidates = []
    if tolerance.atol > 0:
        candidates.append(math.ceil(-math.log10(tolerance.atol / 100)))
    if tolerance.rtol > 0:
        magnitude = math.floor(math.log10(abs(value)))
        candidates.append(math.ceil(-math.log10(tolerance.rtol / 100)) - magnitude)
    if not candidates:
        return value  # a zero tolerance compares exactly: keep every digit
    return round(value, max(candidates))  # the finer of the two steps


@dataclass(frozen=True)
class QuantityDrift:
    quantity: str
    compared: int
    beyond: int
    max_abs: float
    mean_abs: float
    max_rel: float  # nan when no base value reaches ``relative_floor``
    mean_rel: float
    tolerance: Tolerance
    relative_floor: float = 0.0


@dataclass(frozen=True)
class HeadMove:
    head: str
    role: str
    before: float
    after: float
    label_before: str = ""
    label_after: str = ""

    @property
    def size(self) -> float:
        return abs(self.after - self.before) if not (math.isnan(self.before) or math.isnan(self.after)) else 0.0


@dataclass(frozen=True)
class Drift:
    quantities: tuple[QuantityDrift, ...]
    heads: tuple[HeadMove, ...]  # largest moves first; label changes included
    missing: tuple[str, ...]  # series in one fingerprint but not the other
    summary: tuple[str, ...] = ()  # by layer and role, in words (see drift_summary)

    @property
    def within(self) -> bool:
        return not self.missing and all(q.beyond == 0 for q in self.quantities)

    @property
    def moved(self) -> int:
        return sum(q.beyond for q in self.quantities)

    @property
    def compared(self) -> int:
        return sum(q.compared for q in self.quantities)


def compare(before: Fingerprint, after: Fingerprint, tolerances: dict[str, Tolerance]) -> Drift:
    """Compare every value of ``before`` with ``after`` under each quantity's tolerance."""
    missing = sorted(set(before.values) ^ set(after.values))
    by_quantity: dict[str, list[tuple[float, float]]] = {}
    for key in before.values.keys() & after.values.keys():
        pairs = list(zip(before.values[key], after.values[key], strict=False))
        if len(before.values[key]) != len(after.values[key]):
            missing.append(f"{key} (length {len(before.values[key])} -> {len(after.values[key])})")
        by_quantity.setdefault(key.split(".")[0], []).extend(pairs)
    quantities = tuple(_quantity_drift(name, pairs, tolerances[name]) for name, pairs in sorted(by_quantity.items()))
    words = drift_summary.summarise(before, after, tolerances["role_scores"].atol or 0.02)
    return Drift(quantities, _head_moves(before, after), tuple(missing), words)


def _quantity_drift(name: str, pairs: list[tuple[float, float]], tolerance: Tolerance) -> QuantityDrift:
    array = np.array([p for p in pairs if not (math.isnan(p[0]) or math.isnan(p[1]))], dtype=float).reshape(-1, 2)
    beyond = sum(not tolerance.allows(a, b) for a, b in pairs)
    if len(array) == 0:
        return QuantityDrift(name, len(pairs), beyond, 0.0, 0.0, 0.0, 0.0, tolerance)
    absolute = np.abs(array[:, 1] - array[:, 0])
    # A relative change of a value near zero is noise (0.001 -> 0.02 is "+1900%"): only
    # base values that the absolute tolerance would call large enough count.
    floor = RELATIVE_FLOOR * tolerance.atol
    large = np.abs(array[:, 0]) >= max(floor, 1e-12)
    relative = absolute[large] / np.abs(array[large, 0])
    return QuantityDrift(
        name,
        len(pairs),
        beyond,
        float(absolute.max()),
        float(absolute.mean()),
        float(relative.max()) if relative.size else math.nan,
        float(relative.mean()) if relative.size else math.nan,
        tolerance,
        floor,
    )


def _head_moves(before: Fingerprint, after: Fingerprint) -> tuple[HeadMove, ...]:
    moves: list[HeadMove] = []
    for role in ROLES:
        layer = 0
        while (key := f"role_scores.{role}.L{layer}") in before.values and key in after.values:
            label_key = f"role_labels.L{layer}"
            old_labels = before.labels.get(label_key, [])
            new_labels = after.labels.get(label_key, [])
            for head, (old, new) in enumerate(zip(before.values[key], after.values[key], strict=False)):
                old_label = old_labels[head] if head < len(old_labels) else ""
                new_label = new_labels[head] if head < len(new_labels) else ""
                moves.append(HeadMove(head_name(layer, head), role, old, new, old_label, new_label))
            layer += 1
    label_changed = {m.head for m in moves if m.label_before != m.label_after}
    moves.sort(key=lambda m: (-m.size, m.head not in label_changed))
    return tuple(moves)
