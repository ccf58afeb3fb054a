"""``head_score``: one head's role score within bounds ("L5H8 is a previous-token head")."""

from __future__ import annotations

from typing import ClassVar, Literal

from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, FigureNeeds, HeadName, head_index, top_line
from interp_assert.vocab import Role


class HeadScore(Bounded):
    property: Literal["head_score"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        "`head`, `role`, bounds",
        "the head's role score is within bounds",
    )
    head: HeadName
    role: Role

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(roles=frozenset([self.role]))

    def check(self, context: CheckContext) -> Outcome:
        m = context.measurements
        layer, head = head_index(self.head, m)
        table = m.role_scores[self.role]
        value = float(table[layer, head])
        passed, line = self.within(f"{self.head} {self.role}", value)
        return Outcome(passed, line, (top_line(table, self.role),), {self.head: value}, (self.head,), value=value)

    def figures(self) -> FigureNeeds:
        return FigureNeeds(roles=(self.role,), heads=(self.head,))
