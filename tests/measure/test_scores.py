"""Every score on hand-built attention patterns with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interp_assert.measure.capture import scores

T = 8


def one_hot_pattern(targets: list[int]) -> torch.Tensor:
    """A [1, T, T] pattern whose row i puts all its weight on key targets[i]."""
    pattern = torch.zeros(1, len(targets), len(targets))
    for row, key in enumerate(targets):
        pattern[0, row, key] = 1.0
    return pattern


def uniform_pattern(n: int = T, window: int | None = None) -> torch.Tensor:
    seen = scores.visible_keys(n, 0, n, window).float()
    return (seen / seen.sum(-1, keepdim=True)).unsqueeze(0)


def test_perfect_previous_token_head_scores_one() -> None:
    pattern = one_hot_pattern([0, *range(T - 1)])
    result = scores.pattern_scores(pattern)
    assert result["previous_token"].item() == 1.0
    assert result["self"].item() == 0.0
    assert result["focus"].item() == 1.0
    assert result["breadth"].item() == 0.0
    # only row 1 (whose previous token is position 0) lands on the first token
    assert result["first_token"].item() == pytest.approx(1 / (T - 1))


def test_perfect_first_token_and_self_heads() -> None:
    sink = scores.pattern_scores(one_hot_pattern([0] * T))
    assert sink["first_token"].item() == 1.0
    own = scores.pattern_scores(one_hot_pattern(list(range(T))))
    assert own["self"].item() == 1.0
    assert own["first_token"].item() == 0.0


def test_uniform_head_scores() -> None:
    result = scores.pattern_scores(uniform_pattern())
    expected = sum(1 / (i + 1) for i in range(1, T)) / (T - 1)
    for role in ("previous_token", "first_token", "self", "focus"):
        assert result[role].item() == pytest.approx(expected)
    assert result["breadth"].item() == pytest.approx(1.0)


def test_induction_and_duplicate_on_repeated_sequence() -> None:
    block = [5, 9, 7, 3]
    tokens = torch.tensor([0, *block, *block])  # BOS + block twice; second copy at positions 5..8
    n = len(tokens)
    induction_targets = list(range(n))
    duplicate_targets = list(range(n))
    for i in range(5, n):
        duplicate_targets[i] = i - 4  # earlier copy of the same token
        induction_targets[i] = i - 3  # the token after the earlier copy
    induction = scores.pattern_scores(one_hot_pattern(induction_targets), tokens)
    duplicate = scores.pattern_scores(one_hot_pattern(duplicate_targets), tokens)
    assert induction["induction"].item() == 1.0
    assert induction["duplicate_token"].item() == 0.0
    assert duplicate["duplicate_token"].item() == 1.0
    assert duplicate["induction"].item() == 0.0


def test_rows_without_target_do_not_count() -> None:
    # Only the last 4 rows have an earlier copy; the first rows would drag a
    # TransformerLens-style mean down, ours ignores them.
    tokens = torch.tensor([0, 5, 9, 7, 3, 5, 9, 7, 3])
    targets = [0, 0, 0, 0, 0, 2, 3, 4, 5]
    result = scores.pattern_scores(one_hot_pattern(targets), tokens)
    assert result["induction"].item() == 1.0


def test_no_target_anywhere_gives_nan() -> None:
    result = scores.pattern_scores(uniform_pattern(), torch.arange(T))
    assert math.isnan(result["induction"].item())
    assert math.isnan(result["duplicate_token"].item())


def test_local_window_hides_first_token_from_far_rows() -> None:
    window = 3
    pattern = uniform_pattern(T, window)
    result = scores.pattern_scores(pattern, window=window)
    # rows 1 and 2 can see position 0 (weights 1/2 and 1/3); later rows cannot and are not counted
    assert result["first_token"].item() == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert result["breadth"].item() == pytest.approx(1.0)  # uniform over the visible window


def test_scores_do_not_mutate_input() -> None:
    pattern = uniform_pattern()
    before = pattern.clone()
    scores.pattern_scores(pattern, torch.arange(T))
    assert torch.equal(pattern, before)


def test_batched_rows_are_pooled() -> None:
    prev = one_hot_pattern([0, *range(T - 1)])
    sink = one_hot_pattern([0] * T)
    both = torch.stack([prev, sink])  # [B=2, H=1, T, T]
    result = scores.pattern_scores(both)
    assert result["previous_token"].item() == pytest.approx((T - 1 + 1) / (2 * (T - 1)))


def test_check_block_names_bad_heads() -> None:
    good = uniform_pattern().unsqueeze(0)
    assert scores.check_block(good, 0, None, 1e-4) == []
    leaky = good.clone()
    leaky[0, 0, 2, 5] = 0.5  # above the diagonal
    assert any("head 0" in p for p in scores.check_block(leaky, 0, None, 1e-4))
    nan = good.clone()
    nan[0, 0, 3, 1] = float("nan")
    assert "not finite" in scores.check_block(nan, 0, None, 1e-4)[0]
    outside = uniform_pattern(T).unsqueeze(0)
    assert scores.check_block(outside, 0, 3, 1e-4), "weight outside a local window must be reported"


def test_head_labels_and_fractions() -> None:
    tables = {
        "previous_token": np.array([[0.9, 0.1], [0.1, 0.2]]),
        "first_token": np.array([[0.05, 0.8], [0.1, 0.2]]),
        "self": np.array([[0.0, 0.0], [0.1, 0.2]]),
        "focus": np.array([[0.9, 0.8], [0.7, 0.3]]),
    }
    labels = scores.head_labels(tables, 0.5)  # type: ignore[arg-type]
    assert labels.tolist() == [["previous_token", "first_token"], ["focused", "broad"]]
    assert scores.label_fraction(labels, "broad", 0, 1) == 0.25
    assert scores.dominant_layer(tables["previous_token"]) == 0
    assert scores.ranked_heads(tables["first_token"])[0] == ("L0H1", 0.8)
