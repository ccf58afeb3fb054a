"""What a capture is asked for and what it returns: numbers only, no torch.

Properties, checks, fingerprints and reports depend on these two types; only
:mod:`interp_assert.capture` (which runs the model) fills them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from interp_assert.vocab import Role


@dataclass(frozen=True, kw_only=True)
class CaptureRequest:
    """What to compute. ``patterns`` asks for the full ``[T, T]`` attention of a few
    ``(layer, head)`` pairs on the first sequence only (for pictures, never for scores)."""

    roles: frozenset[Role] = frozenset()
    attention_stats: bool = False
    hidden_norms: bool = False
    patterns: frozenset[tuple[int, int]] = frozenset()

    @property
    def needs_attention(self) -> bool:
        return bool(self.roles) or self.attention_stats or bool(self.patterns)

    def __or__(self, other: CaptureRequest) -> CaptureRequest:
        return CaptureRequest(
            roles=self.roles | other.roles,
            attention_stats=self.attention_stats or other.attention_stats,
            hidden_norms=self.hidden_norms or other.hidden_norms,
            patterns=self.patterns | other.patterns,
        )


@dataclass(frozen=True)
class Measurements:
    """Numbers measured on one prompt set. Arrays are ``[L, H]`` or ``[L + 1]`` (hidden states)."""

    n_layers: int
    n_heads: int
    role_scores: dict[Role, np.ndarray] = field(default_factory=dict)
    max_weight: np.ndarray | None = None
    mean_weight: np.ndarray | None = None
    # index k: the residual stream after k blocks (0 = embeddings; last = before the final norm)
    hidden_norms: np.ndarray | None = None
    hidden_norms_without_first: np.ndarray | None = None
    # (layer, head) -> [T, T] attention on the first sequence, and that sequence's tokens as text
    patterns: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    pattern_tokens: tuple[str, ...] = ()
    # for prompt sets with ``generate``: each sequence's greedy continuation, decoded
    generated_texts: tuple[str, ...] = ()
