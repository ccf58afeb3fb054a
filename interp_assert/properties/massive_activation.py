"""``massive_activation``: where a model's massive activation sits and from which depth, after
Sun et al. 2024 ("Massive activations in large language models").

At each hidden-state index k (0 = embeddings, last = last block before the final norm) the
largest magnitude |x| of any element is *massive* when it exceeds ``threshold`` (100) and is at
least ``factor`` (1000) times the median |x| of its sequence's hidden state at that depth.
A spec asserts any of: the position and feature dimension of the largest activation at the
massive indices, the first index where the criterion holds, and bounds on the largest ratio.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from interp_assert.errors import CheckInputError
from interp_assert.measure.measurements import ActivationPeaks, CaptureRequest
from interp_assert.outcome import Outcome
from interp_assert.properties.base import Bounded, CheckContext, FigureNeeds, LayerRange, resolve_range
from interp_assert.properties.findings import DiscoverSettings, Section, lower_bound, unique_name


class MassiveActivation(Bounded):
    property: Literal["massive_activation"]
    reference: ClassVar[tuple[str, str]] = (  # docs/properties.md: keys, passes when
        (
            "any of `position`, `dimension`, `first_index: [a, b]`, bounds on the largest ratio; `layers` "
            "(default all hidden-state indices), `threshold` (100), `factor` (1000)"
        ),
        (
            "at each hidden-state index the largest \\|x\\| is *massive* when it exceeds `threshold` and is at "
            "least `factor` x the median \\|x\\| of its sequence's hidden state there (Sun et al. 2024); the "
            "largest activation sits at `position` / `dimension` at every massive index, the first massive index "
            "lies in `first_index`, and the largest \\|x\\| / median ratio is within bounds"
        ),
    )
    layers: LayerRange | None = None  # hidden-state indices inspected; default all
    threshold: float = Field(default=100.0, gt=0.0)
    factor: float = Field(default=1000.0, gt=1.0)
    position: int | None = Field(default=None, ge=0)  # where the largest activation sits (massive indices)
    dimension: int | None = Field(default=None, ge=0)
    first_index: LayerRange | None = None  # the first massive index lies in [a, b]

    unit_bounds: ClassVar[bool] = False  # bounds are on a ratio of magnitudes
    bounds_required: ClassVar[bool] = False  # a spec may assert only where the activation sits

    @model_validator(mode="after")
    def _asserts_something(self) -> MassiveActivation:
        stated = (self.position, self.dimension, self.first_index, self.at_least, self.at_most)
        if all(v is None for v in stated):
            raise ValueError(
                "state something to check: 'position', 'dimension', 'first_index', or at_least / at_most "
                "on the largest ratio"
            )
        return self

    def requirements(self) -> CaptureRequest:
        return CaptureRequest(activation_peaks=True)

    def check(self, context: CheckContext) -> Outcome:
        peaks = context.measurements.activation_peaks
        if peaks is None:
            raise CheckInputError("activation peaks were not captured for this prompt set")
        first, last = resolve_range(self.layers or [0, -1], len(peaks.value), "hidden-state index")
        # a position or dimension the model never had would fail without saying why
        if self.position is not None and peaks.longest and self.position >= peaks.longest:
            raise CheckInputError(
                f"position {self.position} is beyond the prompts: the longest prompt of {self.prompts!r} is "
                f"{peaks.longest} tokens (positions 0 to {peaks.longest - 1})"
            )
        if self.dimension is not None and peaks.width and self.dimension >= peaks.width:
            raise CheckInputError(
                f"dimension {self.dimension} is beyond the hidden state: this model is {peaks.width} wide "
                f"(dimensions 0 to {peaks.width - 1})"
            )
        indices = range(first, last + 1)
        ratios = peaks.value / np.maximum(peaks.median, np.finfo(np.float64).tiny)
        massive = [k for k in indices if peaks.value[k] > self.threshold and ratios[k] >= self.factor]
        top = max(indices, key=lambda k: ratios[k])
        failures = []
        if self.first_index is not None:
            low, high = resolve_range(self.first_index, len(peaks.value), "hidden-state index")
            found = massive[0] if massive else None
            if found is None or not low <= found <= high:
                failures.append(f"first massive index is {found}, expected in [{low}, {high}]")
        where = massive or [top]
        if self.position is not None:
            off = [k for k in where if int(peaks.position[k]) != self.position]
            if off:
                failures.append(
                    f"largest activation not at position {self.position} at index {off[0]} "
                    f"(at position {int(peaks.position[off[0]])})"
                )
        if self.dimension is not None:
            off = [k for k in where if int(peaks.dimension[k]) != self.dimension]
            if off:
                failures.append(
                    f"largest activation not in dimension {self.dimension} at index {off[0]} "
                    f"(in dimension {int(peaks.dimension[off[0]])})"
                )
        ratio = float(ratios[top])
        bounded, line = self.within(f"largest |x| / median over indices {first}-{last} (at index {top})", ratio)
        if not bounded:
            failures.append(line)
        summary = _summary(peaks, ratios, massive, top)
        measured: dict[str, float | str] = {
            "first_massive_index": massive[0] if massive else "none",
            "largest_ratio": ratio,
            "position": int(peaks.position[top]),
            "dimension": int(peaks.dimension[top]),
        }
        details = (summary, "by index: " + ", ".join(f"{k}:{peaks.value[k]:.4g}/{ratios[k]:.3g}x" for k in indices))
        if failures:
            return Outcome(False, "; ".join(failures), details, measured, value=ratio, shown=summary)
        return Outcome(True, summary, details, measured, value=ratio, shown=summary)

    def figures(self) -> FigureNeeds:
        return FigureNeeds()


def _summary(peaks: ActivationPeaks, ratios: np.ndarray, massive: list[int], top: int) -> str:
    where = f"position {int(peaks.position[top])}, dimension {int(peaks.dimension[top])}"
    largest = f"largest |x| {peaks.value[top]:.4g} = {ratios[top]:.4g}x the median at index {top} ({where})"
    if not massive:
        return f"no massive activation; {largest}"
    return f"massive from index {massive[0]} ({len(massive)} indices); {largest}"


# ---- what discover writes ----


def findings(prompt_name: str, peaks: ActivationPeaks, settings: DiscoverSettings, used_names: set[str]) -> Section:
    """Sun et al. 2024's massive activation (|x| > 100 and >= 1000x its hidden state's median |x|):
    where it sits and the first depth where it holds; or a note that there is none."""
    section = Section(f"massive activations ({prompt_name}; |x| > 100 and >= 1000x the median |x|)")
    ratios = peaks.value / np.maximum(peaks.median, np.finfo(np.float64).tiny)
    massive = [k for k in range(len(ratios)) if peaks.value[k] > 100 and ratios[k] >= 1000]
    top = int(np.argmax(ratios))
    if not massive:
        section.notes.append(f"none: the largest |x| / median is {ratios[top]:.4g}x (index {top})")
        return section
    where = {(int(peaks.position[k]), int(peaks.dimension[k])) for k in massive}
    position, dimension = (int(peaks.position[top]), int(peaks.dimension[top]))
    expectation: dict[str, Any] = {
        "name": unique_name("massive_activation", prompt_name, used_names),
        "description": f"measured |x| = {peaks.value[top]:.5g} at position {position}, dimension {dimension}, "
        f"{ratios[top]:.5g}x the median (index {top}); massive at indices {massive[0]}-{massive[-1]}",
        "property": "massive_activation",
        "prompts": prompt_name,
        "first_index": [massive[0], massive[0]],
        "at_least": lower_bound(float(ratios[top]), settings.keep),
    }
    if len(where) == 1:  # the same element every time: claim where it sits
        expectation |= {"position": position, "dimension": dimension}
    section.expectations.append(expectation)
    return section
