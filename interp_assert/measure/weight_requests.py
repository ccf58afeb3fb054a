"""What the weight properties ask capture for (torch-free; :mod:`interp_assert.measure.weights`
does the arithmetic when a request runs). Equal requests are shared: pair expectations into the
same receiver, or from the same sender, are scored by one request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Head = tuple[int, int]
Side = Literal["receiver", "sender"]  # the single head: everything into it, or everything from it


@dataclass(frozen=True)
class CompositionScores:
    """Per candidate head (``[N]``, in ``heads`` order): the raw score and its z-score."""

    heads: tuple[Head, ...]
    score: np.ndarray
    z: np.ndarray


@dataclass(frozen=True, kw_only=True)
class CompositionRequest:
    """``kind``-composition of every head of an earlier layer into ``head`` (``side="receiver"``),
    or of ``head`` into every head of a later layer (``side="sender"``), with ``draws`` seeded
    rotations for the null."""

    kind: Literal["Q", "K", "V"]
    head: Head
    side: Side
    draws: int
    seed: int

    def run(self, loaded: Any, batches: list[Any]) -> CompositionScores:
        from interp_assert.measure import weights

        parts, found = weights.for_model(loaded.model)
        layer, index = self.head
        if not (0 <= layer < parts.n_layers and 0 <= index < parts.n_heads):  # the check names it
            return CompositionScores((), np.zeros(0), np.zeros(0))
        if self.side == "receiver":
            others = [(l, h) for l in range(layer) for h in range(parts.n_heads)]
        else:
            others = [(l, h) for l in range(layer + 1, parts.n_layers) for h in range(parts.n_heads)]
        if not others:
            return CompositionScores((), np.zeros(0), np.zeros(0))
        rotated = weights.rotations(parts.d_model, self.draws, self.seed)
        if self.side == "receiver":
            scored = weights.into_receiver(found, self.kind, others, self.head, rotated)
        else:
            scored = weights.from_sender(found, self.kind, self.head, others, rotated)
        return CompositionScores(tuple(others), scored.score.numpy(), scored.z.numpy())


@dataclass(frozen=True)
class CopyingRequest:
    """Every head's OV copying score, ``[L, H]``."""

    def run(self, loaded: Any, batches: list[Any]) -> np.ndarray:
        from interp_assert.measure import weights

        parts, found = weights.for_model(loaded.model)
        return weights.copying_scores(parts, found).numpy()
