"""``ov_copying``: a head's copying score read from the weights (no prompts, no forward pass), after
Elhage et al. 2021: ``Σλ / Σ|λ|`` over the eigenvalues of ``W_E OV W_U`` (1: the head copies the
token it attends to into the logits; -1: it suppresses it). Computed through the ``d_head x
d_head`` matrix ``O (W_U W_E) V`` (same non-zero eigenvalues); conventions in
:mod:`interp_assert.measure.weights.circuits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import CheckContext, HeadName, head_index
from interp_assert.properties.composition import WeightExpectation, head_name
from interp_assert.vocab import parse_head

Head = tuple[int, int]


@dataclass(frozen=True)
class CopyingRequest:
    """Every head's copying score."""

    weights_only: ClassVar[bool] = True  # reads no activations: the runner skips the forward pass

    def run(self, loaded: Any, batches: list[Any]) -> dict[Head, float]:
        from interp_assert.measure.weights import circuits as weights

        return weights.copying_scores(loaded.model)


class OvCopying(WeightExpectation):
    property: Literal["ov_copying"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        "`head` with bounds, or `k` and `include: [heads]`. No `prompts`",
        (
            "read from the weights: the head's copying score Σλ/Σ\\|λ\\| over the eigenvalues of W_E·OV·W_U "
            "(in [-1, 1]) is within bounds; or the `k` highest-scoring heads include the listed heads"
        ),
    )
    head: HeadName | None = None
    k: int | None = Field(default=None, ge=1)
    include: list[HeadName] | None = Field(default=None, min_length=1)

    unit_bounds: ClassVar[bool] = False  # in [-1, 1], checked below
    bounds_required: ClassVar[bool] = False

    @model_validator(mode="after")
    def _one_form(self) -> OvCopying:
        for key in ("at_least", "at_most"):
            value = getattr(self, key)
            if value is not None and not -1.0 <= value <= 1.0:
                raise ValueError(f"{key}: {value} is outside [-1, 1], the range of a copying score")
        bounded = self.at_least is not None or self.at_most is not None
        if self.head is not None:
            if self.k is not None or self.include is not None:
                raise ValueError("give 'head' with bounds, or 'k' and 'include', not both")
            if not bounded:
                raise ValueError("give at least one bound: 'at_least' and/or 'at_most'")
        elif self.k is None or self.include is None or bounded:
            raise ValueError("give 'head' with bounds, or 'k' and 'include: [heads]' (no bounds)")
        elif len(self.include) > self.k:
            raise ValueError(f"{len(self.include)} heads listed but k is {self.k}")
        return self

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(extras=frozenset([CopyingRequest()]))

    def check(self, context: CheckContext) -> Outcome:
        m = context.measurements
        found: dict[Head, float] | None = m.extras.get(CopyingRequest())
        if found is None:
            raise CheckInputError("copying scores were not measured")
        for name in [self.head] if self.head else self.include or []:
            head_index(name, m)
        ranked = sorted(found.items(), key=lambda hv: -hv[1])
        names = [head_name(h) for h, _ in ranked]
        top_line = "top copying heads: " + ", ".join(f"{head_name(h)} {v:.4f}" for h, v in ranked[:5])
        if self.head is not None:
            value = found[parse_head(self.head)]
            passed, line = self.within(f"{self.head} copying score", value)
            return Outcome(passed, line, (top_line,), {self.head: value}, (self.head,), value=value)
        assert self.k is not None and self.include is not None
        if self.k > len(ranked):
            raise CheckInputError(f"k is {self.k} but this model has only {len(ranked)} heads")
        top = names[: self.k]
        missing = [n for n in self.include if n not in top]
        if missing:
            where = ", ".join(f"{n} {ranked[names.index(n)][1]:.4f} (rank {names.index(n) + 1})" for n in missing)
            headline = f"top {self.k} copying heads do not include the expected heads; missing: {where}"
        else:
            headline = f"top {self.k} copying heads include {', '.join(self.include)}"
        measured: dict[str, float | str] = {f"top{self.k}": ",".join(top)}
        measured |= {n: found[parse_head(n)] for n in self.include}
        return Outcome(not missing, headline, (top_line,), measured, tuple(missing or top), value=" ".join(top))


# ---- what discover writes ----


def findings(scores: dict[Head, float], max_heads: int, keep: float, used_names: set[str]) -> Any:
    """The strongest copying heads, each bounded at ``keep`` of its measured score."""
    from interp_assert.properties.findings import Section, lower_bound, unique_name

    section = Section("copying heads (read from the weights: Σλ/Σ|λ| of W_E OV W_U)")
    ranked = sorted(scores.items(), key=lambda hv: -hv[1])
    for rank, (head, value) in enumerate(ranked[:max_heads], start=1):
        if value <= 0:
            break
        section.expectations.append(
            {
                "name": unique_name(f"{head_name(head).lower()}_copies", "weights", used_names),
                "description": f"measured {value:.4f} (rank {rank} of {len(ranked)})",
                "property": "ov_copying",
                "head": head_name(head),
                "at_least": lower_bound(value, keep),
            }
        )
    return section
