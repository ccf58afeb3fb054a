"""Pure scoring functions over attention patterns. No model runs here.

Shapes: a pattern block is ``weights[B, H, R, T]``: B sequences, H heads, R
query rows (rows ``row_start .. row_start + R - 1`` of the full T x T pattern),
T key positions. ``tokens[B, T]`` are the sequence's token ids. Inputs are
never modified.

Every role score of a head is a mean over the query rows that have a target
(a row with no target is not counted, so a perfect previous-token head scores
exactly 1.0). Query position 0 is never a row. A key position the layer cannot
see (above the diagonal, or outside a local-attention window) is never a
target.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from interp_assert.vocab import POSITIONAL_LABELS, TARGET_ROLES, Label, Role, head_name

ROW_STATS = ("max", "mean_sum", "mean_count")


@dataclass
class BlockSums:
    """Sums over the rows of one block; add blocks together, divide at the end.

    ``role_sums[role]`` is ``[H]``; ``role_rows[role]`` is how many rows counted
    (the same for every head). ``max_weight[H]`` is the largest weight seen;
    ``visible_sum[H]`` / ``visible_entries`` gives the mean visible weight.
    """

    role_sums: dict[Role, torch.Tensor] = field(default_factory=dict)
    role_rows: dict[Role, int] = field(default_factory=dict)
    max_weight: torch.Tensor | None = None
    visible_sum: torch.Tensor | None = None
    visible_entries: int = 0


def visible_keys(
    n_keys: int, row_start: int, n_rows: int, window: int | None, device: torch.device | None = None
) -> torch.Tensor:
    """``[R, T]`` bool: which keys each query row can see (causal, optional local window)."""
    rows = torch.arange(row_start, row_start + n_rows, device=device).unsqueeze(1)
    keys = torch.arange(n_keys, device=device).unsqueeze(0)
    seen = keys <= rows
    if window is not None:
        seen &= rows - keys < window
    return seen


def target_mask(role: Role, tokens: torch.Tensor, row_start: int, n_rows: int) -> torch.Tensor:
    """``[B, R, T]`` bool: the keys that count as ``role``'s target for each query row."""
    batch, n_keys = tokens.shape
    device = tokens.device
    rows = torch.arange(row_start, row_start + n_rows, device=device).view(1, -1, 1)
    keys = torch.arange(n_keys, device=device).view(1, 1, -1)
    if role == "previous_token":
        return (keys == rows - 1).expand(batch, -1, -1)
    if role == "first_token":
        return (keys == 0).expand(batch, n_rows, -1)
    if role == "self":
        return (keys == rows).expand(batch, -1, -1)
    query_tokens = tokens[:, row_start : row_start + n_rows].unsqueeze(2)
    if role == "duplicate_token":
        return (tokens.unsqueeze(1) == query_tokens) & (keys < rows)
    if role == "induction":
        # key j is a target when the token before it equals the query's token: j - 1 is an earlier copy.
        before = torch.cat([tokens.new_full((batch, 1), -1), tokens[:, :-1]], dim=1)
        return (before.unsqueeze(1) == query_tokens) & (keys < rows) & (keys >= 1)
    raise ValueError(f"role {role!r} has no target mask")


def score_block(
    weights: torch.Tensor,
    tokens: torch.Tensor,
    row_start: int,
    roles: tuple[Role, ...],
    window: int | None = None,
) -> BlockSums:
    """Sum each role's per-row score over the rows of one block that have a target."""
    batch, _, n_rows, n_keys = weights.shape
    skip = 1 if row_start == 0 else 0  # query position 0 is never a row
    w = weights[:, :, skip:, :].float()
    first_row = row_start + skip
    n_rows -= skip
    sums = BlockSums()
    if n_rows <= 0:
        return sums
    seen = visible_keys(n_keys, first_row, n_rows, window, weights.device)
    for role in roles:
        if role in TARGET_ROLES:
            targets = target_mask(role, tokens, first_row, n_rows) & seen
            has_target = targets.any(-1)  # [B, R]
            per_row = (w * targets.unsqueeze(1)).sum(-1)  # [B, H, R]
            sums.role_sums[role] = (per_row * has_target.unsqueeze(1)).sum((0, 2))
            sums.role_rows[role] = int(has_target.sum())
        elif role == "focus":
            sums.role_sums[role] = w.amax(-1).sum((0, 2))
            sums.role_rows[role] = batch * n_rows
        elif role == "breadth":
            n_seen = seen.sum(-1)  # [R]
            entropy = -torch.special.xlogy(w, w).sum(-1)  # [B, H, R]
            normalised = entropy / torch.log(n_seen.clamp(min=2).float())
            scorable = n_seen >= 2
            sums.role_sums[role] = normalised[:, :, scorable].sum((0, 2))
            sums.role_rows[role] = batch * int(scorable.sum())
    sums.max_weight = w.amax((0, 2, 3))
    sums.visible_sum = (w * seen).sum((0, 2, 3))
    sums.visible_entries = batch * int(seen.sum())
    return sums


def check_block(weights: torch.Tensor, row_start: int, window: int | None, tolerance: float) -> list[str]:
    """Problems with a captured block: non-finite values, rows not summing to 1, weight on hidden keys.

    Returns one message per offending head, naming the head index and the worst value.
    """
    problems: list[str] = []
    w = weights.float()
    n_keys = w.shape[-1]
    seen = visible_keys(n_keys, row_start, w.shape[2], window, w.device)
    finite = torch.isfinite(w).flatten(2).all(-1).all(0)  # [H]
    row_error = (w.sum(-1) - 1.0).abs().amax((0, 2))  # [H]
    hidden_mass = (w * ~seen).abs().amax((0, 2, 3))  # [H]
    for head in range(w.shape[1]):
        if not bool(finite[head]):
            problems.append(f"head {head}: attention weights are not finite (NaN or inf)")
        elif float(row_error[head]) > tolerance:
            problems.append(f"head {head}: a row sums to {1.0 + float(row_error[head]):.6g}, not 1")
        elif float(hidden_mass[head]) > tolerance:
            problems.append(
                f"head {head}: weight {float(hidden_mass[head]):.3g} on a key the layer cannot see "
                "(above the diagonal or outside its window)"
            )
    return problems


def pattern_scores(
    pattern: torch.Tensor,
    tokens: torch.Tensor | None = None,
    roles: tuple[Role, ...] | None = None,
    window: int | None = None,
) -> dict[Role, torch.Tensor]:
    """Role scores ``[H]`` of a full pattern ``[H, T, T]`` or ``[B, H, T, T]``.

    NaN where no row had a target. ``tokens`` (``[T]`` or ``[B, T]``) is needed
    only for duplicate_token and induction.
    """
    if pattern.dim() == 3:
        pattern = pattern.unsqueeze(0)
    batch, _, _, n_keys = pattern.shape
    if tokens is None:
        tokens = torch.arange(n_keys).expand(batch, -1)  # all distinct: no duplicates
    elif tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    all_roles: tuple[Role, ...] = roles or (
        "previous_token",
        "first_token",
        "self",
        "duplicate_token",
        "induction",
        "focus",
        "breadth",
    )
    sums = score_block(pattern, tokens, 0, all_roles, window)
    return {
        role: sums.role_sums[role] / sums.role_rows[role]
        if sums.role_rows[role]
        else torch.full_like(sums.role_sums[role], float("nan"))
        for role in all_roles
    }


# ---- layer-level summaries over per-head score tables [L, H] (numpy) ----


def layer_means(scores: np.ndarray) -> np.ndarray:
    """Mean of a role score over each layer's heads: ``[L]``."""
    return scores.mean(axis=1)


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
