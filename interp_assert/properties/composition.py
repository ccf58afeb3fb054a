"""``composition``: how much one head's output feeds another's query, key or value, read from
the weights (no prompts, no forward pass; see :mod:`interp_assert.measure.weights` for the
conventions). Asserted as a z-score against rotated residual bases by default, since a raw score
depends on the model's width (a random pair scores about ``1/sqrt(d_model)``).

Two forms: a pair (``sender`` and ``receiver``, bounds on the z-score or, with ``score: raw``,
on the raw score), or a ranking (``receiver`` with ``top_k`` and ``include``: the k strongest
senders into it include these; or ``sender`` with ``top_k`` and ``include``: the k strongest
receivers from it include these)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure.measurements import CaptureRequest, Measurements
from interp_assert.measure.prompt_sets import WEIGHTS_ONLY
from interp_assert.measure.weight_requests import CompositionRequest, CompositionScores, Side
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, HeadName, head_index
from interp_assert.vocab import head_name, parse_head

MAX_DRAWS = 2000


class Composition(Bounded):
    property: Literal["composition"]
    reference: ClassVar[tuple[str, str]] = (  # the README's property table: keys, passes when
        (
            "`composition: Q\\|K\\|V`, `sender` and/or `receiver`, bounds (z-score; `score: raw` for the raw "
            "score), or `top_k` with `include: [heads]`; `draws` (50), `seed` (0); no `prompts`"
        ),
        (
            "read from the weights: the sender's OV output feeds the receiver's query/key/value by a z-score "
            "(against `draws` Haar-rotated residual bases) within bounds; or the `top_k` senders into the "
            "receiver (receivers from the sender) include the listed heads (see Weight scores)"
        ),
    )
    prompts: str = WEIGHTS_ONLY
    composition: Literal["Q", "K", "V"]
    sender: HeadName | None = None
    receiver: HeadName | None = None
    score: Literal["z", "raw"] = "z"
    top_k: int | None = Field(default=None, ge=1)
    include: list[HeadName] | None = Field(default=None, min_length=1)
    draws: int = Field(default=50, ge=2, le=MAX_DRAWS)
    seed: int = Field(default=0, ge=0)

    unit_bounds: ClassVar[bool] = False
    bounds_required: ClassVar[bool] = False

    @model_validator(mode="after")
    def _one_form(self) -> Composition:
        ranking = self.top_k is not None or self.include is not None
        if ranking:
            if (self.sender is None) == (self.receiver is None):
                raise ValueError(
                    "a ranking names one head: 'receiver' (its top senders) or 'sender' (its top receivers)"
                )
            if self.top_k is None or self.include is None:
                raise ValueError("a ranking needs both 'top_k' and 'include'")
            if len(self.include) > self.top_k:
                raise ValueError(f"{len(self.include)} heads listed but top_k is {self.top_k}")
            if self.at_least is not None or self.at_most is not None:
                raise ValueError("a ranking has no bounds: give 'top_k' and 'include', or a pair with bounds")
            return self
        if self.sender is None or self.receiver is None:
            raise ValueError("give 'sender' and 'receiver' (a pair with bounds), or one of them with 'top_k'")
        if self.at_least is None and self.at_most is None:
            raise ValueError("give at least one bound: 'at_least' and/or 'at_most'")
        sender_layer, receiver_layer = parse_head(self.sender)[0], parse_head(self.receiver)[0]
        if receiver_layer <= sender_layer:
            raise ValueError(
                f"receiver {self.receiver} must be in a later layer than sender {self.sender}: a head reads only "
                "what earlier layers wrote"
            )
        return self

    def request(self) -> CompositionRequest:
        single = self.receiver if self.receiver is not None else self.sender
        side: Side = "receiver" if self.receiver is not None else "sender"
        assert single is not None
        return CompositionRequest(
            kind=self.composition,
            head=parse_head(single),
            side=side,
            draws=self.draws,
            seed=self.seed,
        )

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(extras=frozenset([self.request()]))

    def check(self, context: CheckContext) -> Outcome:
        m = context.measurements
        for head in (self.sender, self.receiver, *(self.include or ())):
            if head is not None:
                head_index(head, m)
        found: CompositionScores = m.extras[self.request()]
        if self.top_k is not None:
            return self._ranking(found, m)
        assert self.sender is not None and self.receiver is not None
        index = found.heads.index(parse_head(self.sender))  # a pair's request ranks every sender into the receiver
        raw, z = float(found.score[index]), float(found.z[index])
        subject = f"{self.composition}-composition {self.sender} -> {self.receiver}"
        value = z if self.score == "z" else raw
        passed, line = self.within(f"{subject} {'z' if self.score == 'z' else 'raw score'}", value)
        detail = f"raw score {raw:.4f}, z {z:.2f} against {self.draws} rotated residual bases (seed {self.seed})"
        return Outcome(passed, line, (detail,), {"score": raw, "z": z}, (self.sender, self.receiver), value=value)

    def _ranking(self, found: CompositionScores, m: Measurements) -> Outcome:
        assert self.top_k is not None and self.include is not None
        if self.top_k > len(found.heads):
            raise CheckInputError(f"top_k is {self.top_k} but only {len(found.heads)} heads can be ranked here")
        values = found.z if self.score == "z" else found.score
        order = sorted(range(len(found.heads)), key=lambda i: (-float(values[i]), found.heads[i]))
        ranked = [head_name(*found.heads[i]) for i in order]
        top = ranked[: self.top_k]
        missing = [name for name in self.include if name not in top]
        one = self.receiver or self.sender
        direction = "senders into" if self.receiver is not None else "receivers from"
        what = f"top {self.top_k} {self.composition}-composition {direction} {one}"
        shown = ", ".join(f"{ranked[i]} {float(values[order[i]]):.2f}" for i in range(min(len(ranked), self.top_k + 2)))
        if missing:
            ranks = ", ".join(f"{name} (rank {ranked.index(name) + 1})" for name in missing)
            headline = f"{what} do not include {ranks}"
        else:
            headline = f"{what} include {', '.join(self.include)}"
        return Outcome(
            not missing,
            headline,
            (f"by {'z' if self.score == 'z' else 'raw score'}: {shown}",),
            {f"top{self.top_k}": ",".join(top)},
            tuple(missing or top),
            value=" ".join(top),
        )
