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

import torch

from interp_assert.vocab import POSITIONAL_LABELS, TARGET_ROLES, Role


@dataclass
class BlockSums:
    """Sums over the rows of one block; add blocks together, divide at the end.

    ``role_sums[role]`` is ``[H]``; ``role_rows[role]`` is how many rows counted
    (the same for every head). ``max_weight[H]`` is the largest weight seen;
    ``visible_sum[H]`` / ``visible_entries`` gives the mean visible weight.
    ``row_sums[B, H, R]`` (the scored rows only) is for :func:`check_rows`.
    """

    role_sums: dict[Role, torch.Tensor] = field(default_factory=dict)
    role_rows: dict[Role, int] = field(default_factory=dict)
    max_weight: torch.Tensor | None = None
    visible_sum: torch.Tensor | None = None
    visible_entries: int = 0
    row_sums: torch.Tensor | None = None


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


def row_entropy(weights: torch.Tensor) -> torch.Tensor:
    """``-sum_j w log w`` of every row: ``[..., R]`` for ``weights[..., R, T]`` (0 log 0 = 0)."""
    entropy: torch.Tensor = -torch.special.xlogy(weights, weights).sum(-1)
    return entropy


def entropy_from_logits(
    weights: torch.Tensor, shifted_logits: torch.Tensor, row_max: torch.Tensor, row_sums: torch.Tensor
) -> torch.Tensor:
    """:func:`row_entropy` of ``weights = softmax(shifted_logits)`` without a log per entry.

    ``shifted_logits`` are the logits minus each row's maximum (so the large weights sit near
    0, where float32 is exact), and a hidden key holds a finite, very negative value, never
    -inf, so that ``0 * logit`` stays 0. Then the largest weight is ``1 / normaliser``, and
    ``-sum w log w = log(normaliser) * sum w - sum w * shifted``: one product-sum, which
    einsum runs as a batched matmul without materialising a ``[..., R, T]`` product.
    """
    return -torch.log(row_max) * row_sums - torch.einsum("...k,...k->...", weights, shifted_logits)


@dataclass(frozen=True)
class BlockTargets:
    """Where the target roles' targets are in a block, all roles in one ``(batch, row in block, key)``
    index (``segment`` says which role each belongs to), and how many rows have one. They depend on
    the tokens and rows, not on the weights, so one instance serves every layer with the same window."""

    roles: tuple[Role, ...]
    batch_index: torch.Tensor
    row_index: torch.Tensor
    key_index: torch.Tensor
    segment: torch.Tensor
    counted_rows: dict[Role, int]


def block_targets(
    tokens: torch.Tensor, row_start: int, n_rows: int, n_keys: int, roles: tuple[Role, ...], window: int | None
) -> BlockTargets:
    """The targets of ``roles`` for rows ``row_start .. row_start + n_rows - 1`` (row 0 never counts)."""
    skip = 1 if row_start == 0 else 0
    first_row, scored = row_start + skip, n_rows - skip
    batch, device = tokens.shape[0], tokens.device
    tokens = tokens[:, :n_keys]
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    counted: dict[Role, int] = {}
    wanted = tuple(role for role in roles if role in TARGET_ROLES and scored > 0)
    for role in wanted:
        if role in POSITIONAL_LABELS:  # one target per row: no mask needed
            rows = torch.arange(first_row, first_row + scored, device=device)
            keys = {"previous_token": rows - 1, "first_token": torch.zeros_like(rows), "self": rows}[role]
            if window is not None:
                rows, keys = rows[rows - keys < window], keys[rows - keys < window]
            batch_index = torch.arange(batch, device=device).repeat_interleave(len(rows))
            found.append((batch_index, (rows - row_start).repeat(batch), keys.repeat(batch)))
            counted[role] = batch * len(rows)
        else:
            targets = target_mask(role, tokens, first_row, scored)
            if window is not None:
                targets &= visible_keys(n_keys, first_row, scored, window, device)
            batch_index, row_index, key_index = targets.nonzero(as_tuple=True)
            found.append((batch_index, row_index + skip, key_index))
            counted[role] = int(targets.any(-1).sum())
    empty = torch.zeros(0, dtype=torch.long, device=device)
    segment = [torch.full_like(where[0], index) for index, where in enumerate(found)]
    return BlockTargets(
        wanted,
        torch.cat([where[0] for where in found]) if found else empty,
        torch.cat([where[1] for where in found]) if found else empty,
        torch.cat([where[2] for where in found]) if found else empty,
        torch.cat(segment) if found else empty,
        counted,
    )


def merge_targets(parts: list[tuple[int, BlockTargets]]) -> BlockTargets:
    """One :class:`BlockTargets` for the rows of several blocks, ``(row_start, targets)`` each (all
    of the same roles): row indices counted from row 0, each role's targets together, in order.

    For scoring whole sequences at once while building the target masks a block at a time (a
    ``[B, R, T]`` mask per block instead of ``[B, T, T]``)."""
    roles = parts[0][1].roles
    columns: list[list[torch.Tensor]] = [[], [], [], []]
    counted = dict.fromkeys(roles, 0)
    for index, role in enumerate(roles):
        for row_start, part in parts:
            mine = part.segment == index
            columns[0].append(part.batch_index[mine])
            columns[1].append(part.row_index[mine] + row_start)
            columns[2].append(part.key_index[mine])
            columns[3].append(part.segment[mine])
            counted[role] += part.counted_rows[role]
    if not roles:
        return parts[0][1]
    batch_index, row_index, key_index, segment = (torch.cat(column) for column in columns)
    return BlockTargets(roles, batch_index, row_index, key_index, segment, counted)


def score_block(
    weights: torch.Tensor,
    tokens: torch.Tensor,
    row_start: int,
    roles: tuple[Role, ...],
    window: int | None = None,
    *,
    shifted_logits: torch.Tensor | None = None,
    targets: BlockTargets | None = None,
    attention_stats: bool = True,
    hidden_are_zero: bool = False,
) -> BlockSums:
    """Sum each role's per-row score over the rows of one block that have a target.

    ``weights`` may hold fewer key columns than ``tokens`` (a row block needs only the keys up
    to its last row). Only what is asked for is computed, and nothing allocates another
    ``[B, H, R, T]`` tensor except ``breadth`` without ``shifted_logits``: target roles are
    gathered at their targets (``targets``, from :func:`block_targets`, may be passed in to
    share them between layers); ``shifted_logits`` (see :func:`entropy_from_logits`) saves
    ``breadth`` a log per weight. ``hidden_are_zero`` says the weights on keys the rows cannot
    see are exactly 0 (they were masked before the softmax), so the mean needs no mask.
    """
    batch, _, n_rows, n_keys = weights.shape
    skip = 1 if row_start == 0 else 0  # query position 0 is never a row
    first_row, scored = row_start + skip, n_rows - skip
    sums = BlockSums()
    if scored <= 0:
        return sums
    w = weights.float()
    if targets is None:
        targets = block_targets(tokens, row_start, n_rows, n_keys, roles, window)
    rows = torch.arange(first_row, first_row + scored, device=w.device)
    n_seen = torch.clamp(rows + 1, max=window) if window is not None else rows + 1  # [R]
    # Row reductions run over the whole block (row 0 too) and are sliced after: slicing first
    # would make every reduction work on a non-contiguous copy.
    row_sums = w.sum(-1)
    wants_entropy = "breadth" in roles and shifted_logits is not None
    row_max = w.amax(-1) if ("focus" in roles or attention_stats or wants_entropy) else None
    if targets.roles:  # every target of every role in one gather, then summed per role
        picked = w[targets.batch_index, :, targets.row_index, targets.key_index]  # [targets, H]
        per_role = picked.new_zeros(len(targets.roles), w.shape[1]).index_add_(0, targets.segment, picked)
        for index, role in enumerate(targets.roles):
            sums.role_sums[role] = per_role[index]
            sums.role_rows[role] = targets.counted_rows[role]
    for role in roles:
        if role == "focus":
            assert row_max is not None
            sums.role_sums[role] = row_max[:, :, skip:].sum((0, 2))
            sums.role_rows[role] = batch * scored
        elif role == "breadth":
            if shifted_logits is not None and row_max is not None:
                row_entropies = entropy_from_logits(w, shifted_logits, row_max, row_sums)[:, :, skip:]
            else:
                row_entropies = row_entropy(w[:, :, skip:])
            normalised = row_entropies / torch.log(n_seen.clamp(min=2).float())
            scorable = n_seen >= 2
            sums.role_sums[role] = normalised[:, :, scorable].sum((0, 2))
            sums.role_rows[role] = batch * int(scorable.sum())
    sums.row_sums = row_sums[:, :, skip:]
    if attention_stats:
        assert row_max is not None
        sums.max_weight = row_max[:, :, skip:].amax((0, 2))
        sums.visible_sum = sums.row_sums.sum((0, 2))
        if not hidden_are_zero:
            sums.visible_sum -= _hidden_sum(w[:, :, skip:], first_row, window)
        sums.visible_entries = batch * int(n_seen.sum())
    return sums


def weights_from_normaliser(logits: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """Softmax weights ``exp(logit - lse)`` from each row's log-sum-exp (broadcast), in float32."""
    return torch.exp(logits.float() - lse.float())


def entropy_from_normaliser(lse: torch.Tensor, expected_logit: torch.Tensor) -> torch.Tensor:
    """A row's entropy ``-sum_j w_j log w_j`` with ``w_j = exp(s_j - lse)``: ``lse - sum_j w_j s_j``."""
    return lse.float() - expected_logit.float()


def score_rows(
    targets: BlockTargets,
    target_weights: torch.Tensor,
    row_start: int,
    n_rows: int,
    batch: int,
    roles: tuple[Role, ...],
    window: int | None = None,
    *,
    max_weight: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    attention_stats: bool = False,
) -> BlockSums:
    """:func:`score_block`'s sums from per-row quantities instead of a block of weights.

    ``target_weights[N, H]`` is the weight at each target of ``targets`` (in its order);
    ``max_weight`` and ``entropy`` are ``[B, H, R]`` for rows ``row_start ..`` (needed for focus
    and attention statistics, and for breadth). Rows sum to 1 by construction (the weights come
    from the softmax normaliser), so there are no row sums to check and the mean visible weight
    is one per row.
    """
    skip = 1 if row_start == 0 else 0
    first_row, scored = row_start + skip, n_rows - skip
    sums = BlockSums()
    if scored <= 0:
        return sums
    heads = target_weights.shape[1]
    if targets.roles:
        per_role = target_weights.new_zeros(len(targets.roles), heads).index_add_(
            0, targets.segment, target_weights.float()
        )
        for index, role in enumerate(targets.roles):
            sums.role_sums[role] = per_role[index]
            sums.role_rows[role] = targets.counted_rows[role]
    rows = torch.arange(first_row, first_row + scored, device=target_weights.device)
    n_seen = torch.clamp(rows + 1, max=window) if window is not None else rows + 1
    for role in roles:
        if role == "focus":
            if max_weight is None:
                raise ValueError("focus needs max_weight")
            sums.role_sums[role] = max_weight[:, :, skip:].float().sum((0, 2))
            sums.role_rows[role] = batch * scored
        elif role == "breadth":
            if entropy is None:
                raise ValueError("breadth needs entropy")
            normalised = entropy[:, :, skip:].float() / torch.log(n_seen.clamp(min=2).float())
            scorable = n_seen >= 2
            sums.role_sums[role] = normalised[:, :, scorable].sum((0, 2))
            sums.role_rows[role] = batch * int(scorable.sum())
    if attention_stats:
        if max_weight is None:
            raise ValueError("attention statistics need max_weight")
        sums.max_weight = max_weight[:, :, skip:].float().amax((0, 2))
        sums.visible_sum = torch.full((heads,), float(batch * scored), device=target_weights.device)
        sums.visible_entries = batch * int(n_seen.sum())
    return sums


def check_normaliser(lse: torch.Tensor) -> list[str]:
    """Problems with attention known by its rows' log-sum-exp ``lse[B, H, R]``: its rows sum to 1 by
    construction, so what can go wrong is a non-finite logit (NaN or inf), which makes ``lse`` so."""
    finite = torch.isfinite(lse).flatten(2).all(-1).all(0)  # [H]
    if bool(finite.all()):
        return []
    return [
        f"head {head}: attention weights are not finite (NaN or inf)" for head in range(len(finite)) if not finite[head]
    ]


def _hidden_sum(w: torch.Tensor, first_row: int, window: int | None) -> torch.Tensor:
    """``[H]``: total weight on keys the rows cannot see. Only the ragged edges (at most R x R per
    edge) are masked; fully hidden key ranges are summed as plain slices."""
    n_rows, n_keys = w.shape[2], w.shape[3]
    last_row = first_row + n_rows - 1
    total = w.new_zeros(w.shape[1])
    # (start, stop) column ranges: partly hidden ones get the mask, fully hidden ones do not
    ragged = [(first_row + 1, min(n_keys, last_row + 1))]
    full = [(last_row + 1, n_keys)]
    if window is not None:
        full.append((0, min(n_keys, first_row - window + 1)))
        ragged.append((max(0, first_row - window + 1), min(n_keys, last_row - window + 1)))
    for start, stop in full:
        if start < stop:
            total += w[..., start:stop].sum((0, 2, 3))
    for start, stop in ragged:
        if start < stop:
            hidden = ~visible_keys(n_keys, first_row, n_rows, window, w.device)[:, start:stop]
            total += (w[..., start:stop] * hidden).sum((0, 2, 3))
    return total


def check_rows(row_sums: torch.Tensor, tolerance: float, hidden_mass: torch.Tensor | None = None) -> list[str]:
    """Problems with captured attention, from its row sums ``[B, H, R]``: one message per offending head.

    A non-finite weight makes its row's sum non-finite, so this also catches NaN and inf.
    ``hidden_mass[H]``, if given, is the largest weight each head put on a key it cannot see.
    """
    problems: list[str] = []
    if row_sums.numel() == 0:
        return problems
    row_error = (row_sums - 1.0).abs().amax((0, 2))  # [H]; NaN where a row is NaN
    worst = row_error if hidden_mass is None else torch.maximum(row_error, hidden_mass)
    if bool((worst <= tolerance).all()):  # the common case: one comparison, no per-head loop
        return problems
    finite = torch.isfinite(row_sums).all(-1).all(0)  # [H]
    for head in range(row_sums.shape[1]):
        if not bool(finite[head]):
            problems.append(f"head {head}: attention weights are not finite (NaN or inf)")
        elif float(row_error[head]) > tolerance:
            problems.append(f"head {head}: a row sums to {1.0 + float(row_error[head]):.6g}, not 1")
        elif hidden_mass is not None and float(hidden_mass[head]) > tolerance:
            problems.append(
                f"head {head}: weight {float(hidden_mass[head]):.3g} on a key the layer cannot see "
                "(above the diagonal or outside its window)"
            )
    return problems


def check_block(weights: torch.Tensor, row_start: int, window: int | None, tolerance: float) -> list[str]:
    """Problems with a captured block: non-finite values, rows not summing to 1, weight on hidden keys.

    Returns one message per offending head, naming the head index and the worst value.
    """
    w = weights.float()
    seen = visible_keys(w.shape[-1], row_start, w.shape[2], window, w.device)
    hidden_mass = (w * ~seen).abs().amax((0, 2, 3))  # [H]
    return check_rows(w.sum(-1), tolerance, hidden_mass)


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


# Layer-level summaries over per-head score tables live in head_tables (numpy only, no torch),
# re-exported here for the callers that already import them from scores.
from interp_assert.measure.head_tables import (  # noqa: E402
    dominant_layer,
    head_labels,
    label_fraction,
    layer_means,
    ranked_heads,
)

__all__ = [
    "BlockSums",
    "BlockTargets",
    "block_targets",
    "check_block",
    "check_rows",
    "dominant_layer",
    "entropy_from_logits",
    "head_labels",
    "label_fraction",
    "layer_means",
    "pattern_scores",
    "ranked_heads",
    "row_entropy",
    "score_block",
    "target_mask",
    "visible_keys",
]
