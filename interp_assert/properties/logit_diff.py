"""``logit_diff``: the behaviour a pair set tests, ``logit(answer) - logit(wrong)`` at the last
position of each clean prompt, in nats: its mean within bounds, and at most a fraction of the
pairs below 0 (a mean hides a failing tail)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure.counterfactual.pair_request import PairRequest
from interp_assert.measure.measurements import CaptureRequest, Measurements
from interp_assert.measure.pair_requests import PairResult
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext


class LogitDiff(Bounded):
    property: Literal["logit_diff"]
    reference: ClassVar[tuple[str, str]] = (
        "bounds (nats) on the mean, `below_zero_at_most: fraction`; a pair set",
        "the mean over pairs of `logit(answer) - logit(wrong)` at the last position of each clean prompt is within "
        "bounds, and at most `below_zero_at_most` of the pairs have a difference below 0 (see Prompt pairs)",
    )
    below_zero_at_most: float | None = Field(default=None, ge=0.0, le=1.0)

    unit_bounds: ClassVar[bool] = False
    bounds_required: ClassVar[bool] = False
    needs_pairs: ClassVar[bool] = True  # the spec loader refuses a prompt set without pairs

    @model_validator(mode="after")
    def _states_something(self) -> LogitDiff:
        if self.at_least is None and self.at_most is None and self.below_zero_at_most is None:
            raise ValueError("state something to check: 'at_least' and/or 'at_most' (nats), or below_zero_at_most")
        return self

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(extras=frozenset([PairRequest()]))

    def check(self, context: CheckContext) -> Outcome:
        result = pair_result(context.measurements, PairRequest())
        clean = result.clean
        mean = float(clean.mean())
        below = float((clean < 0).mean())
        subject = f"mean logit difference over {len(clean)} pairs"
        passed, line = self.within(subject, mean)
        spread = spread_line("per pair", clean)
        details = [spread, f"corrupt prompts: mean {float(result.corrupt.mean()):.4f}"]
        if self.below_zero_at_most is not None:
            ok = below <= self.below_zero_at_most
            tail = f"{int((clean < 0).sum())} of {len(clean)} pairs ({below:.3f}) below 0"
            if ok:
                details.insert(0, f"{tail}, expected at most {self.below_zero_at_most:g}")
            else:
                worst = np.argsort(clean)[:3]
                shown = ", ".join(f"pair {int(i)} {clean[i]:+.3f}" for i in worst if clean[i] < 0)
                line = f"{line}; {tail}, expected at most {self.below_zero_at_most:g} ({shown})"
                if self.at_least is None and self.at_most is None:
                    line = f"{tail}, expected at most {self.below_zero_at_most:g} ({shown})"
            passed = passed and ok
        measured: dict[str, float | str] = {
            "clean_mean": mean,
            "corrupt_mean": float(result.corrupt.mean()),
            "below_zero": below,
            "min": float(clean.min()),
            "pairs": float(len(clean)),
        }
        return Outcome(passed, line, tuple(details), measured, value=mean)


def pair_result(m: Measurements, request: Any) -> PairResult:
    found = m.extras.get(request)
    if not isinstance(found, PairResult):
        raise CheckInputError("the logit differences were not captured for this prompt set (it needs pairs)")
    return found


def spread_line(what: str, values: np.ndarray) -> str:
    q = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    return (
        f"{what}: min {q[0]:.4f}, 10% {q[1]:.4f}, median {q[2]:.4f}, 90% {q[3]:.4f}, max {q[4]:.4f} "
        f"(std {float(values.std()):.4f})"
    )
