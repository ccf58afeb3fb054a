"""``generated_text``: a behavioural check beside the mechanistic ones, on the prompt set's greedy continuation."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure.measurements import CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import CheckContext, Expectation, resolve_index


class GeneratedText(Expectation):
    property: Literal["generated_text"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        "`contains: TEXT` or `equals: TEXT`, `sequence` (optional index; default every sequence)",
        "the prompt set's greedy continuation (decoded, special tokens dropped) contains / equals the text",
    )
    contains: str | None = Field(default=None, min_length=1)
    equals: str | None = None
    sequence: int | None = Field(default=None, ge=0)

    edit_hint: ClassVar[bool] = False

    @model_validator(mode="after")
    def _one_test(self) -> GeneratedText:
        if (self.contains is None) == (self.equals is None):
            raise ValueError("give exactly one of 'contains' or 'equals'")
        return self

    def requirements(self) -> CaptureRequest:
        return CaptureRequest()  # generation happens for the prompt set itself

    def check(self, context: CheckContext) -> Outcome:
        texts = context.measurements.generated_texts
        if not texts:
            raise CheckInputError(f"prompt set {self.prompts!r} generates nothing; give it 'generate: N'")
        indices = range(len(texts)) if self.sequence is None else [resolve_index(self.sequence, len(texts), "sequence")]
        wanted = f"contain {self.contains!r}" if self.contains is not None else f"equal {self.equals!r}"
        failing = [i for i in indices if not self._holds(texts[i])]
        shown = tuple(f"sequence {i} generated: {texts[i]!r}" for i in indices)
        text = texts[failing[0] if failing else indices[0]]
        measured: dict[str, float | str] = {"failing_sequences": len(failing), "generated_text": text}
        if failing:
            headline = f"{len(failing)} of {len(indices)} generated text(s) do not {wanted}: {text!r}"
            return Outcome(False, headline, shown, measured, value=text, shown=repr(text))
        return Outcome(True, f"generated text(s) {wanted}: {text!r}", shown, measured, value=text, shown=repr(text))

    def _holds(self, text: str) -> bool:
        return self.contains in text if self.contains is not None else text == self.equals
