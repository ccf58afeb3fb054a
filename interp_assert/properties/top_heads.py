"""``top_heads``: the k highest-scoring heads of a role include (or equal) a listed set."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure import head_tables
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import (
    TOP_SHOWN,
    CheckContext,
    Expectation,
    FigureNeeds,
    HeadName,
    head_index,
    top_line,
)
from interp_assert.vocab import Role


class TopHeads(Expectation):
    property: Literal["top_heads"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        "`role`, `k`, `include: [heads]` or `equals: [heads]`",
        "the `k` highest-scoring heads include (or are exactly) the listed heads",
    )
    role: Role
    k: int = Field(ge=1)
    include: list[HeadName] | None = Field(default=None, min_length=1)
    equals: list[HeadName] | None = Field(default=None, min_length=1)

    @field_validator("include", "equals")
    @classmethod
    def _each_once(cls, heads: list[str] | None) -> list[str] | None:
        repeated = sorted({head for head in heads or [] if heads and heads.count(head) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} is listed more than once; list each head once")
        return heads

    @model_validator(mode="after")
    def _one_set(self) -> TopHeads:
        if (self.include is None) == (self.equals is None):
            raise ValueError("give exactly one of 'include' or 'equals'")
        heads = self.include or self.equals or []
        if len(heads) > self.k:
            raise ValueError(f"{len(heads)} heads listed but k is {self.k}; they cannot all be in the top {self.k}")
        if self.equals is not None and len(self.equals) != self.k:
            raise ValueError(f"'equals' lists {len(self.equals)} heads; it must list exactly k={self.k}")
        return self

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(roles=frozenset([self.role]))

    def check(self, context: CheckContext) -> Outcome:
        m = context.measurements
        total = m.n_layers * m.n_heads
        if self.k > total:
            raise CheckInputError(
                f"k is {self.k} but this model has only {total} heads ({m.n_layers} layers x {m.n_heads} heads); "
                f"k must be between 1 and {total}"
            )
        table = m.role_scores[self.role]
        ranked = head_tables.ranked_heads(table)
        top = [name for name, _ in ranked[: self.k]]
        wanted = self.include or self.equals or []
        for name in wanted:
            head_index(name, m)
        missing = [name for name in wanted if name not in top]
        values = dict(ranked)
        passed = not missing if self.include else set(top) == set(wanted)
        relation = "include" if self.include else "equal"
        if passed:
            headline = f"top {self.k} {self.role} heads {relation} {', '.join(wanted)}"
        else:
            order = [r for r, _ in ranked]
            shown = ", ".join(f"{n} {values[n]:.4f} (rank {order.index(n) + 1})" for n in missing)
            extra = [n for n in top if n not in wanted]
            headline = f"top {self.k} {self.role} heads do not {relation} the expected set; missing: {shown}"
            if self.equals and extra:
                headline += f"; unexpected: {', '.join(extra)}"
        kth = ranked[self.k - 1][1]
        return Outcome(
            passed,
            headline,
            (top_line(table, self.role, max(self.k, TOP_SHOWN)),),
            {f"top{self.k}": ",".join(top), f"rank{self.k}_score": kth},
            tuple(missing or top),
            value=" ".join(top),
        )

    def figures(self) -> FigureNeeds:
        return FigureNeeds(roles=(self.role,), heads=tuple(self.include or self.equals or ()))
