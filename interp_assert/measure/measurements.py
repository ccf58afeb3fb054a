"""What a capture is asked for and what it returns: numbers only, no torch.

Properties, checks, fingerprints and reports depend on these two types; only
:mod:`interp_assert.measure.capture.run` (which runs the model) fills them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from interp_assert.vocab import Role

AblationMode = Literal["zero", "mean"]
Head = tuple[int, int]  # (layer, head)


@dataclass(frozen=True, kw_only=True)
class AblationRequest:
    """Run the model once more with ``heads``' contributions to their layer's attention output
    projection set to zero (``zero``) or to their mean over the prompt set's positions
    (``mean``), and ``controls`` more times with as many heads per layer drawn at random
    (``seed``) from the other heads of the same layers. Losses are kept per position, so
    expectations over different token ranges share the runs."""

    heads: tuple[Head, ...]
    mode: AblationMode = "zero"
    controls: int = 0
    seed: int = 0


class MeasureRequest(Protocol):
    """A measurement that a property module brings with it (patching, weight scores, SAE features):
    a frozen dataclass (hashable, so expectations that ask for the same one share it) whose
    :meth:`run` capture calls once per prompt set, after the clean pass. What it returns is kept
    in :attr:`Measurements.extras` under the request itself; tensors must not be returned."""

    def run(self, loaded: Any, batches: list[Any]) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class CaptureRequest:
    """What to compute. ``patterns`` asks for the full ``[T, T]`` attention of a few
    ``(layer, head)`` pairs on the first sequence only (for pictures, never for scores)."""

    roles: frozenset[Role] = frozenset()
    attention_stats: bool = False
    hidden_norms: bool = False
    patterns: frozenset[tuple[int, int]] = frozenset()
    activation_peaks: bool = False  # per hidden state: the largest |x|, where it sits, the median |x|
    logit_lens: bool = False  # per hidden state: agreement with the final prediction, KL from it
    ablations: frozenset[AblationRequest] = frozenset()  # the clean run also gives the clean losses
    losses: bool = False  # the clean next-token losses
    layer_ablations: bool = False  # per layer: the mean loss with all of that layer's heads zeroed
    extras: frozenset[MeasureRequest] = frozenset()  # measurements property modules bring (see MeasureRequest)

    @property
    def needs_losses(self) -> bool:
        return self.losses or self.layer_ablations or bool(self.ablations)

    @property
    def needs_hidden_states(self) -> bool:
        return self.hidden_norms or self.activation_peaks

    @property
    def needs_attention(self) -> bool:
        return bool(self.roles) or self.attention_stats or bool(self.patterns)

    def __or__(self, other: CaptureRequest) -> CaptureRequest:
        return CaptureRequest(
            roles=self.roles | other.roles,
            attention_stats=self.attention_stats or other.attention_stats,
            hidden_norms=self.hidden_norms or other.hidden_norms,
            patterns=self.patterns | other.patterns,
            activation_peaks=self.activation_peaks or other.activation_peaks,
            logit_lens=self.logit_lens or other.logit_lens,
            ablations=self.ablations | other.ablations,
            losses=self.losses or other.losses,
            layer_ablations=self.layer_ablations or other.layer_ablations,
            extras=self.extras | other.extras,
        )


@dataclass(frozen=True)
class LogitLens:
    """Per hidden-state index k (0 = embeddings): each depth read through the final norm and
    unembedding, over query positions >= 1 (see :mod:`interp_assert.measure.capture.lens`)."""

    agreement: np.ndarray  # [L + 1]: fraction of positions whose top-1 token is the final top-1
    kl: np.ndarray  # [L + 1]: mean KL(final || lens_k) in nats


@dataclass(frozen=True)
class ActivationPeaks:
    """Per hidden-state index k (0 = embeddings, last = last block before the final norm): the
    largest magnitude |x| of any element over the prompt set, the sequence, position and feature
    dimension where it sits, and the median |x| of that sequence's hidden state at that depth
    (all its positions and dimensions), after Sun et al. 2024 ("Massive activations in LLMs")."""

    value: np.ndarray  # [L + 1]
    median: np.ndarray  # [L + 1]
    sequence: np.ndarray  # [L + 1], ints: index in the prompt set, in batch order
    position: np.ndarray  # [L + 1], ints
    dimension: np.ndarray  # [L + 1], ints
    longest: int = 0  # token positions of the set's longest sequence (0: not recorded)
    width: int = 0  # feature dimensions of the hidden state (0: not recorded)


@dataclass(frozen=True)
class AblatedLosses:
    """Next-token losses (nats) with an :class:`AblationRequest`'s heads ablated, laid out like
    :attr:`Measurements.token_losses`, and the same for each random control set."""

    losses: tuple[np.ndarray, ...]
    control_heads: tuple[tuple[Head, ...], ...] = ()
    control_losses: tuple[tuple[np.ndarray, ...], ...] = ()
    # why no control could be drawn (a layer whose every head is ablated), or ""
    control_problem: str = ""


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
    activation_peaks: ActivationPeaks | None = None
    logit_lens: LogitLens | None = None
    # per batch, ``[B, T - 1]``: entry t - 1 is -log p(token t | tokens before t) on the clean model
    token_losses: tuple[np.ndarray, ...] | None = None
    ablations: dict[AblationRequest, AblatedLosses] = field(default_factory=dict)
    # [L]: the mean next-token loss over positions >= 1 with every head of layer l zeroed
    layer_ablation_losses: np.ndarray | None = None
    # each MeasureRequest of the capture request -> what its run returned
    extras: dict[Any, Any] = field(default_factory=dict)
