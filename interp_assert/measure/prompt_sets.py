"""A spec's prompt sets, as data: literal texts or repeated random tokens, and the BOS policy.

Torch-free, and below the properties: :mod:`interp_assert.measure.prompts` turns these into
token batches without importing the spec (or, through it, the property registry).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from interp_assert.strict import Strict
from interp_assert.vocab import BosPolicy

# The ``prompts`` of expectations read from the weights alone: no prompt set, no forward pass.
WEIGHTS_ONLY = "(weights)"
MAX_SEQUENCE_TOKENS = 1 << 20  # length * repeats of one random-token sequence (models' contexts are far shorter)
MAX_BATCH_TOKENS = 1 << 20  # count * length * repeats: one batch, measured in one pass


class RandomTokens(Strict):
    """``count`` sequences, each one random block of ``length`` tokens repeated ``repeats`` times."""

    length: int = Field(ge=1, le=MAX_SEQUENCE_TOKENS)
    repeats: int = Field(default=2, ge=2, le=1024)
    count: int = Field(default=4, ge=1, le=256)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)

    @model_validator(mode="after")
    def _sizes(self) -> RandomTokens:
        tokens = self.length * self.repeats
        if tokens > MAX_SEQUENCE_TOKENS:
            raise ValueError(
                f"length * repeats = {tokens} tokens per sequence; at most {MAX_SEQUENCE_TOKENS} "
                "(and no more than the model's context)"
            )
        if tokens * self.count > MAX_BATCH_TOKENS:
            raise ValueError(f"count * length * repeats = {tokens * self.count} tokens; at most {MAX_BATCH_TOKENS}")
        return self


class PromptSet(Strict):
    """Literal texts or repeated random tokens; BOS policy always explicit."""

    bos: BosPolicy
    texts: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    random_tokens: RandomTokens | None = None
    generate: int = Field(default=0, ge=0, le=4096)

    @model_validator(mode="after")
    def _one_source(self) -> PromptSet:
        if (self.texts is None) == (self.random_tokens is None):
            raise ValueError("give exactly one of 'texts' or 'random_tokens'")
        return self


def limited(prompt_set: PromptSet, limit: int | None) -> PromptSet:
    """The first ``limit`` prompts of a set (a smoke run's ``--interp-limit``); the set itself without one."""
    if limit is None:
        return prompt_set
    if prompt_set.texts is not None and len(prompt_set.texts) > limit:
        return prompt_set.model_copy(update={"texts": prompt_set.texts[:limit]})
    if prompt_set.random_tokens is not None and prompt_set.random_tokens.count > limit:
        tokens = prompt_set.random_tokens.model_copy(update={"count": limit})
        return prompt_set.model_copy(update={"random_tokens": tokens})
    return prompt_set
