"""Which query tokens a head's role score comes from. Pure: numbers in, numbers out.

A duplicate-token "head" whose score is commas attending to earlier commas is a fact about
commas, not a mechanism. Given one head's attention pattern on one sequence and that
sequence's tokens, :func:`row_scores` gives each query row's contribution exactly as the
role score counts it, and :func:`dominant_token` says when one token carries most of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from interp_assert.vocab import Role

DOMINANT_SHARE = 0.5  # one token carrying more than this share of a head's score is flagged,
MIN_ROWS = 3  # ... when the token is the query on at least this many rows (a frequent token)


def row_scores(pattern: np.ndarray, tokens: Sequence[str], role: Role) -> np.ndarray:
    """``pattern[T, T]`` (rows = queries) -> each row's score for ``role``; NaN where the row does
    not count (no target, or position 0). Visibility is taken from the pattern: a key with zero
    weight above the diagonal is not visible, which is all causal attention needs here."""
    size = pattern.shape[0]
    rows = np.full(size, np.nan)
    for i in range(1, size):
        row = pattern[i, : i + 1]
        if role == "previous_token":
            rows[i] = row[i - 1]
        elif role == "first_token":
            rows[i] = row[0]
        elif role == "self":
            rows[i] = row[i]
        elif role == "focus":
            rows[i] = row.max()
        elif role == "breadth":
            kept = row[row > 0]
            rows[i] = float(-(kept * np.log(kept)).sum() / np.log(i + 1))
        elif role == "duplicate_token":
            targets = [j for j in range(i) if tokens[j] == tokens[i]]
            if targets:
                rows[i] = row[targets].sum()
        elif role == "induction":
            targets = [j for j in range(1, i) if tokens[j - 1] == tokens[i]]
            if targets:
                rows[i] = row[targets].sum()
    return rows


@dataclass(frozen=True)
class TokenShare:
    token: str
    share: float  # of the head's summed row scores
    rows: int  # rows whose query is this token
    counted_rows: int  # rows counted at all


def dominant_token(rows: np.ndarray, tokens: Sequence[str]) -> TokenShare | None:
    """The query token carrying most of the score, when it carries more than :data:`DOMINANT_SHARE`
    of it over at least :data:`MIN_ROWS` rows; else ``None``. Copying roles count only rows with
    a target, so on prose their rows are often all one token (commas after commas): that is
    exactly the case to flag."""
    counted = [i for i in range(len(rows)) if not np.isnan(rows[i])]
    total = float(sum(rows[i] for i in counted))
    if not counted or total <= 0:
        return None
    by_token: dict[str, list[int]] = {}
    for i in counted:
        by_token.setdefault(tokens[i], []).append(i)
    token, positions = max(by_token.items(), key=lambda item: sum(rows[i] for i in item[1]))
    share = float(sum(rows[i] for i in positions)) / total
    if share <= DOMINANT_SHARE or len(positions) < MIN_ROWS:
        return None
    return TokenShare(token, share, len(positions), len(counted))


def describe(head: str, role: str, found: TokenShare) -> str:
    return (
        f"{head}'s {role} score comes mostly from one token: {found.share:.0%} of it from the {found.rows} rows "
        f"whose query is {found.token!r} (of {found.counted_rows} rows counted, sequence 0); "
        "it may describe that token rather than a mechanism"
    )
