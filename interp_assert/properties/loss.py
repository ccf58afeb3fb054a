"""``loss``: the model's mean next-token loss, in nats, over a token range of a prompt set.

The loss at position t is ``-log p(token t | tokens before t)``; ``positions: [a, b]`` picks the
positions that count (Python-style, negative from the end; default ``[1, -1]``, every token with
a predecessor). On a random block repeated after a BOS, ``[L + 2, -1]`` is the repeats less
their unpredictable first token: the loss an induction circuit drives down. It costs nothing
beyond the capture's own forward pass, which computes the losses from its final hidden state.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from interp_assert.errors import CheckInputError
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.ablation_effect import mean_loss, span_words
from interp_assert.properties.base import Bounded, CheckContext, LayerRange


class NextTokenLoss(Bounded):
    property: Literal["loss"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        "`positions: [a, b]` (default `[1, -1]`), bounds (nats)",
        "the mean next-token loss `-log p(token t | tokens before t)` over token positions a..b is within bounds",
    )
    positions: LayerRange | None = None

    unit_bounds: ClassVar[bool] = False  # nats

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(losses=True)

    def check(self, context: CheckContext) -> Outcome:
        losses = context.measurements.token_losses
        if losses is None:
            raise CheckInputError("the next-token losses were not captured for this prompt set")
        value = mean_loss(losses, self.positions)
        passed, line = self.within(f"mean next-token loss on {span_words(self.positions)} (nats)", value)
        return Outcome(passed, line, (), {"loss": value}, value=value)
