"""A spec's prompt sets, as data: literal texts, repeated random tokens or prompt pairs, and the BOS policy.

Torch-free, and below the properties: :mod:`interp_assert.measure.capture.prompts` turns these into
token batches without importing the spec (or, through it, the property registry).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from interp_assert.strict import Strict
from interp_assert.vocab import BosPolicy

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


class PromptPair(Strict):
    """A clean prompt, its corrupted twin (same token length), the answer the clean prompt should
    be continued with and the wrong answer (the one the corrupt prompt points to): one token each."""

    clean: str = Field(min_length=1)
    corrupt: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    wrong: str = Field(min_length=1)

    @model_validator(mode="after")
    def _differ(self) -> PromptPair:
        if self.clean == self.corrupt:
            raise ValueError(f"clean and corrupt are identical ({self.clean!r}): a pair must differ somewhere")
        if self.answer == self.wrong:
            raise ValueError(f"answer and wrong are both {self.answer!r}: the logit difference would be 0")
        return self


class PairTemplate(Strict):
    """Pairs written once: every text of ``texts`` filled with every mapping of ``fills``, in
    that order (text-major). Each fill names a value for its slots; ``clean`` and ``corrupt`` fill
    the remaining slots by naming a fill slot to copy (``{S2: S}``: slot ``S2`` takes slot
    ``S``'s value). ``answer`` and ``wrong`` are texts with slots, filled from the fill."""

    texts: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    fills: list[dict[str, str]] = Field(min_length=1)
    clean: dict[str, str] = Field(default_factory=dict)
    corrupt: dict[str, str] = Field(default_factory=dict)
    answer: str = Field(min_length=1)
    wrong: str = Field(min_length=1)

    @model_validator(mode="after")
    def _slots(self) -> PairTemplate:
        import string

        if set(self.clean) != set(self.corrupt):
            raise ValueError(
                f"clean fills slots {sorted(self.clean)} but corrupt fills {sorted(self.corrupt)}: "
                "both must fill the same slots"
            )
        for index, fill in enumerate(self.fills):
            if set(fill) != set(self.fills[0]):
                raise ValueError(f"fills[{index}] names slots {sorted(fill)}; fills[0] names {sorted(self.fills[0])}")
        known = set(self.fills[0])
        for side, mapping in (("clean", self.clean), ("corrupt", self.corrupt)):
            for slot, source in mapping.items():
                if source not in known:
                    raise ValueError(f"{side}: {slot}: {source!r} is not a fill slot; fill slots: {sorted(known)}")
        every = known | set(self.clean)
        for text in (*self.texts, self.answer, self.wrong):
            used = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
            unknown = used - (every if text in self.texts else known)
            if unknown:
                raise ValueError(f"{text!r} uses slot(s) {sorted(unknown)}; known slots: {sorted(every)}")
        return self

    def pairs(self) -> list[PromptPair]:
        found = []
        for text in self.texts:
            for fill in self.fills:
                clean = fill | {slot: fill[source] for slot, source in self.clean.items()}
                corrupt = fill | {slot: fill[source] for slot, source in self.corrupt.items()}
                found.append(
                    PromptPair(
                        clean=text.format(**clean),
                        corrupt=text.format(**corrupt),
                        answer=self.answer.format(**fill),
                        wrong=self.wrong.format(**fill),
                    )
                )
        return found


class PromptSet(Strict):
    """Literal texts, repeated random tokens, or clean/corrupt prompt pairs; BOS policy always explicit.

    A pair set (``pairs`` or ``pair_template``) is measured on its clean prompts by every
    property; ``logit_diff`` and ``patching`` also use the corrupt prompts and the answers."""

    bos: BosPolicy
    texts: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    random_tokens: RandomTokens | None = None
    pairs: list[PromptPair] | None = None
    pair_template: PairTemplate | None = None
    generate: int = Field(default=0, ge=0, le=4096)

    @model_validator(mode="before")
    @classmethod
    def _pairs_given(cls, data: Any) -> Any:
        if isinstance(data, dict) and "pairs" in data and not data["pairs"]:
            raise ValueError("'pairs' is empty: list at least one {clean, corrupt, answer, wrong}")
        return data

    @model_validator(mode="after")
    def _one_source(self) -> PromptSet:
        sources = [self.texts, self.random_tokens, self.pairs, self.pair_template]
        if sum(source is not None for source in sources) != 1:
            raise ValueError("give exactly one of 'texts', 'random_tokens', 'pairs' or 'pair_template'")
        if self.is_pairs and self.generate:
            raise ValueError("'generate' does not apply to prompt pairs: remove it (or use 'texts')")
        if self.pair_template is not None:
            for index, pair in enumerate(self.pair_template.pairs()):
                if pair.clean == pair.corrupt:
                    raise ValueError(
                        f"pair_template: pair {index} has identical clean and corrupt prompts ({pair.clean!r}): "
                        "clean and corrupt must fill some slot differently"
                    )
        return self

    @property
    def is_pairs(self) -> bool:
        return self.pairs is not None or self.pair_template is not None

    def expanded_pairs(self) -> list[PromptPair]:
        """The set's pairs, in order (a template expanded text-major); [] for a set without pairs."""
        if self.pair_template is not None:
            return self.pair_template.pairs()
        return list(self.pairs or [])


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
