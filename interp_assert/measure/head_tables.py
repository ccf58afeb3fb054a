"""Layer-level summaries over per-head score tables ``[L, H]``. Pure numpy: no torch, no model."""

from __future__ import annotations

import numpy as np

from interp_assert.vocab import POSITIONAL_LABELS, Label, Role, head_name


def layer_means(scores: np.ndarray) -> np.ndarray:
    """Mean of a role score over each layer's heads: ``[L]``."""
    means: np.ndarray = scores.mean(axis=1)
    return means


def dominant_layer(scores: np.ndarray) -> int:
    """The layer whose heads' mean score is highest (lowest index on a tie)."""
    return int(np.argmax(layer_means(scores)))


def ranked_heads(scores: np.ndarray) -> list[tuple[str, float]]:
    """All heads by descending score; ties keep (layer, head) order. NaN scores last."""
    flat = [(head_name(l, h), float(scores[l, h])) for l in range(scores.shape[0]) for h in range(scores.shape[1])]
    return sorted(flat, key=lambda item: -item[1] if not np.isnan(item[1]) else np.inf)


def head_labels(role_scores: dict[Role, np.ndarray], threshold: float) -> np.ndarray:
    """Label every head ``[L, H]`` (object array of label strings).

    A head is labelled with the positional role (previous_token, first_token,
    self) of its highest score if that score is at least ``threshold``; else
    ``focused`` if its focus score is at least ``threshold``; else ``broad``.
    """
    stacked = np.stack([role_scores[role] for role in POSITIONAL_LABELS])  # [3, L, H]
    best = np.argmax(stacked, axis=0)
    best_score = np.take_along_axis(stacked, best[None], axis=0)[0]
    labels = np.empty(best.shape, dtype=object)
    focused = role_scores["focus"] >= threshold
    for index, label in enumerate(POSITIONAL_LABELS):
        labels[best == index] = label
    fallback = np.where(focused, "focused", "broad")
    return np.where(best_score >= threshold, labels, fallback)


def label_fraction(labels: np.ndarray, label: Label, first: int, last: int) -> float:
    """Fraction of heads in layers ``first..last`` (inclusive) carrying ``label``."""
    chosen = labels[first : last + 1]
    return float((chosen == label).mean())


def draw_controls(
    heads: tuple[tuple[int, int], ...], n_heads: int, count: int, seed: int, *, verb: str = "ablated"
) -> tuple[tuple[tuple[int, int], ...], ...]:
    """``count`` random head sets with as many heads in each layer as ``heads`` has, drawn
    (seeded, without replacement) from that layer's other heads. Raises ``ValueError`` when a
    layer has no other heads to draw from."""
    if count == 0:
        return ()
    per_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        per_layer.setdefault(layer, []).append(head)
    for layer, named in per_layer.items():
        if len(named) * 2 > n_heads:
            raise ValueError(
                f"layer {layer} has {n_heads} heads and {len(named)} of them are {verb}: too few others to draw "
                f"a control of {len(named)} from"
            )
    generator = np.random.default_rng(seed)
    drawn = []
    for _ in range(count):
        chosen: list[tuple[int, int]] = []
        for layer, named in sorted(per_layer.items()):
            others = [h for h in range(n_heads) if h not in named]
            chosen += [(layer, int(h)) for h in sorted(generator.choice(others, size=len(named), replace=False))]
        drawn.append(tuple(chosen))
    return tuple(drawn)
