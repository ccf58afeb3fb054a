"""``ov_copying``: a head's OV circuit copies the tokens it attends to, read from the weights: the
copying score ``sum(Re lambda) / sum(|lambda|)`` over the eigenvalues of ``W_E OV W_U``, in
[-1, 1] (see :mod:`interp_assert.measure.weights`). One head within bounds, or the ``top_k``
copying heads include a set."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure import head_tables
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.measure.prompt_sets import WEIGHTS_ONLY
from interp_assert.measure.weight_requests import CopyingRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, HeadName, head_index


class OvCopying(Bounded):
    property: Literal["ov_copying"]
    reference: ClassVar[tuple[str, str]] = (  # the README's property table: keys, passes when
        "`head` and bounds, or `top_k` with `include: [heads]`; no `prompts`",
        (
            "read from the weights: the head's OV copying score (sum of the eigenvalues' real parts over the sum "
            "of their magnitudes, of W_E OV W_U; 1 copies, -1 suppresses) is within bounds, or the `top_k` "
            "copying heads include the listed heads (see Weight scores)"
        ),
    )
    prompts: str = WEIGHTS_ONLY
    head: HeadName | None = None
    top_k: int | None = Field(default=None, ge=1)
    include: list[HeadName] | None = Field(default=None, min_length=1)

    unit_bounds: ClassVar[bool] = False  # [-1, 1]
    bounds_required: ClassVar[bool] = False

    @model_validator(mode="after")
    def _one_form(self) -> OvCopying:
        for key in ("at_least", "at_most"):
            value = getattr(self, key)
            if value is not None and not -1.0 <= value <= 1.0:
                raise ValueError(f"{key}: {value} is outside [-1, 1], the range of a copying score")
        if self.head is not None:
            if self.top_k is not None or self.include is not None:
                raise ValueError("give 'head' with bounds, or 'top_k' with 'include', not both")
            if self.at_least is None and self.at_most is None:
                raise ValueError("give at least one bound: 'at_least' and/or 'at_most'")
        elif self.top_k is None or self.include is None:
            raise ValueError("give 'head' with bounds, or 'top_k' with 'include'")
        elif len(self.include) > self.top_k:
            raise ValueError(f"{len(self.include)} heads listed but top_k is {self.top_k}")
        return self

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(extras=frozenset([CopyingRequest()]))

    def check(self, context: CheckContext) -> Outcome:
        m = context.measurements
        table: np.ndarray = m.extras[CopyingRequest()]
        ranked = head_tables.ranked_heads(table)
        top_line = "top copying heads: " + ", ".join(f"{name} {value:.4f}" for name, value in ranked[:5])
        if self.head is not None:
            layer, index = head_index(self.head, m)
            value = float(table[layer, index])
            passed, line = self.within(f"{self.head} OV copying score", value)
            return Outcome(passed, line, (top_line,), {self.head: value}, (self.head,), value=value)
        assert self.top_k is not None and self.include is not None
        for name in self.include:
            head_index(name, m)
        if self.top_k > table.size:
            raise CheckInputError(f"top_k is {self.top_k} but this model has only {table.size} heads")
        top = [name for name, _ in ranked[: self.top_k]]
        order = [name for name, _ in ranked]
        missing = [name for name in self.include if name not in top]
        headline = (
            f"top {self.top_k} copying heads include {', '.join(self.include)}"
            if not missing
            else f"top {self.top_k} copying heads do not include "
            + ", ".join(f"{name} (rank {order.index(name) + 1})" for name in missing)
        )
        return Outcome(not missing, headline, (top_line,), {f"top{self.top_k}": ",".join(top)}, tuple(missing or top),
                       value=" ".join(top))  # fmt: skip
