"""What ``logit_diff`` and ``patching`` measure, as data: components and results, no torch.

The request itself is :class:`interp_assert.measure.counterfactual.pair_request.PairRequest`; one per
(direction, effect, component sets); every request on a prompt set shares the clean and corrupt
runs and the all-heads sweeps through the memo in :mod:`interp_assert.measure.counterfactual.patching`.

Logit difference of a prompt: ``logit(answer) - logit(wrong)`` at its last position, in nats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Direction = Literal["denoise", "noise"]
Effect = Literal["total", "direct"]
ComponentKind = Literal["head", "resid", "mlp"]


@dataclass(frozen=True)
class Component:
    """A head's output (its slice of the attention output projection's input), the residual
    stream entering block ``layer`` (``resid``), or block ``layer``'s MLP output; at
    ``positions`` (Python-style, negative from the end) or at every position (``None``)."""

    kind: ComponentKind
    layer: int
    head: int = 0
    positions: tuple[int, ...] | None = None


@dataclass(frozen=True)
class PairResult:
    """Per pair, in the set's order: clean and corrupt logit differences ``[N]``; for each set of
    the request the patched logit difference ``[N]`` (``None`` where the set names a component
    the model or the prompts lack: the check says which); with ``all_heads``, ``heads[L, H, N]``.
    ``lengths``: the token lengths of the prompts (positions are checked against them)."""

    clean: np.ndarray
    corrupt: np.ndarray
    patched: tuple[np.ndarray | None, ...] = ()
    heads: np.ndarray | None = None
    lengths: tuple[int, ...] = ()
    n_layers: int = 0
    n_heads: int = 0
    control_sets: tuple[tuple[tuple[int, int], ...], ...] = ()
    control_patched: tuple[np.ndarray, ...] = ()
    control_problem: str = ""  # why no control could be drawn, or ""
