"""Difference-in-means probes in closed form, on numbers only (numpy; no torch, no sklearn).

A probe separates two labelled sets of residual-stream vectors (``positive``, ``negative``):

- its direction is ``mean(positive) - mean(negative)`` (Marks & Tegmark 2023: the most causal
  of the usual probes, and deterministic);
- a vector's score is its dot product with the direction;
- AUROC is the probability that a positive vector scores above a negative one (ties count
  half: the Mann-Whitney U statistic over both sets' sizes);
- the control task (Hewitt & Liang 2019) gives the same vectors labels shuffled with a seed,
  fits on the training half and scores the held-out half under the shuffled labels;
  selectivity is AUROC minus the control's mean AUROC.
"""

from __future__ import annotations

import numpy as np

MIN_PER_CLASS = 4  # two to fit, two to hold out
MAX_IMBALANCE = 2.0  # the larger class at most twice the smaller


def balance_problem(n_positive: int, n_negative: int, holdout: float) -> str | None:
    """Why two sets of these sizes cannot make a probe with a held-out part, or None."""
    small, large = sorted((n_positive, n_negative))
    if small < MIN_PER_CLASS:
        return (
            f"too few prompts: {n_positive} positive and {n_negative} negative; each class needs at least "
            f"{MIN_PER_CLASS} (some to fit the direction, some held out)"
        )
    if large > MAX_IMBALANCE * small:
        return (
            f"unbalanced classes: {n_positive} positive and {n_negative} negative; the larger may be at most "
            f"{MAX_IMBALANCE:g}x the smaller"
        )
    for n in (n_positive, n_negative):
        held = held_out_count(n, holdout)
        if held < 1 or held >= n:
            return f"holdout {holdout:g} of {n} prompts leaves {held} held out and {n - held} to fit; both must be >= 1"
    return None


def held_out_count(n: int, holdout: float) -> int:
    return round(n * holdout)


def split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held out) of n items, by a seeded permutation."""
    order = np.random.default_rng(seed).permutation(n)
    held = held_out_count(n, holdout)
    return np.sort(order[held:]), np.sort(order[:held])


def direction(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    found: np.ndarray = positive.mean(0) - negative.mean(0)
    return found


def auroc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    p = np.asarray(positive_scores, dtype=np.float64)[:, None]
    n = np.asarray(negative_scores, dtype=np.float64)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def evaluate(positive: np.ndarray, negative: np.ndarray, holdout: float, seed: int, controls: int) -> dict[str, float]:
    """Fit on the training part of each class, AUROC on the held-out part; the control task's
    mean held-out AUROC over ``controls`` seeded label shuffles; selectivity = the difference."""
    fit_p, test_p = split(len(positive), holdout, seed)
    fit_n, test_n = split(len(negative), holdout, seed + 1)
    d = direction(positive[fit_p], negative[fit_n])
    real = auroc(positive[test_p] @ d, negative[test_n] @ d)
    train_x = np.concatenate([positive[fit_p], negative[fit_n]])
    test_x = np.concatenate([positive[test_p], negative[test_n]])
    train_y = np.r_[np.ones(len(fit_p)), np.zeros(len(fit_n))].astype(bool)
    test_y = np.r_[np.ones(len(test_p)), np.zeros(len(test_n))].astype(bool)
    rng = np.random.default_rng(seed + 1000)
    control_scores = []
    for _ in range(controls):
        shuffled_train, shuffled_test = rng.permutation(train_y), rng.permutation(test_y)
        dc = direction(train_x[shuffled_train], train_x[~shuffled_train])
        scores = test_x @ dc
        control_scores.append(auroc(scores[shuffled_test], scores[~shuffled_test]))
    control = float(np.mean(control_scores)) if control_scores else float("nan")
    all_auroc = auroc(positive @ d, negative @ d)
    return {
        "auroc": real,
        "auroc_all": all_auroc,
        "control_auroc": control,
        "selectivity": real - control,
        "fit": float(len(fit_p) + len(fit_n)),
        "held_out": float(len(test_p) + len(test_n)),
    }
