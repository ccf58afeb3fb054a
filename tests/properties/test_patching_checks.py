"""The checks of ``logit_diff`` and ``patching`` on numbers whose answers are known by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from interp_assert.measure.counterfactual.pair_request import PairRequest
from interp_assert.measure.measurements import Measurements
from interp_assert.measure.pair_requests import PairResult
from interp_assert.properties.base import CheckContext
from interp_assert.properties.logit_diff import LogitDiff
from interp_assert.properties.patching import Patching, rank_correlation

CLEAN = np.array([4.0, 2.0, -1.0, 3.0])  # mean 2.0, one of four below 0
CORRUPT = np.array([-2.0, -1.0, -1.0, 0.0])  # mean -1.0: the gap is 3.0


def context(expectation: Any, patched: np.ndarray | None = None, heads: np.ndarray | None = None) -> CheckContext:
    extras: dict[Any, Any] = {PairRequest(): PairResult(CLEAN, CORRUPT, lengths=(5,), n_layers=2, n_heads=2)}
    for request in expectation.requirements().extras:
        if request != PairRequest():
            sets = (patched,) if request.sets else ()
            extras[request] = PairResult(CLEAN, CORRUPT, sets, heads, (5,), 2, 2)
    return CheckContext(Measurements(2, 2, extras=extras))


def make(cls: Any, **fields: Any) -> Any:
    return cls.model_validate({"name": "e", "prompts": "p"} | fields)


def test_logit_diff_mean_and_tail() -> None:
    passing = make(LogitDiff, property="logit_diff", at_least=1.9, below_zero_at_most=0.25)
    outcome = passing.check(context(passing))
    assert outcome.passed and outcome.value == pytest.approx(2.0)
    assert outcome.measured["below_zero"] == pytest.approx(0.25)
    strict = make(LogitDiff, property="logit_diff", below_zero_at_most=0.2)
    outcome = strict.check(context(strict))
    assert not outcome.passed
    assert "1 of 4 pairs (0.250) below 0, expected at most 0.2 (pair 2 -1.000)" in outcome.headline


def test_patching_normalises_over_the_means_in_both_directions() -> None:
    patched = np.array([1.0, 0.5, -1.0, 1.5])  # mean 0.5: (0.5 - -1) / 3 = 0.5 restored
    denoise = make(Patching, property="patching", heads=["L1H0"], at_least=0.49, at_most=0.51)
    outcome = denoise.check(context(denoise, patched))
    assert outcome.passed and outcome.value == pytest.approx(0.5)
    assert outcome.measured["clean_mean"] == 2.0 and outcome.measured["corrupt_mean"] == -1.0
    noise = make(Patching, property="patching", heads=["L1H0"], direction="noise", at_most=-0.49)
    outcome = noise.check(context(noise, patched))  # (0.5 - 2) / 3 = -0.5 destroyed
    assert outcome.passed and outcome.value == pytest.approx(-0.5)
    # the per-pair spread: pair 2 has no gap (clean = corrupt = -1), so three pairs count
    assert any(line.startswith("per pair: min") for line in outcome.details)


def test_top_ranks_by_direction() -> None:
    heads = np.empty((2, 2, 4))
    for (layer, head), value in {(0, 0): 0.5, (0, 1): -1.0, (1, 0): 2.0, (1, 1): -0.25}.items():
        heads[layer, head] = value  # patched mean: effects (v + 1) / 3 denoise, (v - 2) / 3 noise
    denoise = make(Patching, property="patching", top={"k": 1, "equals": ["L1H0"]})
    assert denoise.check(context(denoise, heads=heads)).passed
    noise = make(Patching, property="patching", direction="noise", top={"k": 2, "include": ["L0H1"]})
    outcome = noise.check(context(noise, heads=heads))
    assert outcome.passed and outcome.value == "L0H1 L1H1"
    wrong = make(Patching, property="patching", direction="noise", top={"k": 1, "equals": ["L1H0"]})
    outcome = wrong.check(context(wrong, heads=heads))
    assert not outcome.passed and "missing: L1H0 +0.0000 (rank 4)" in outcome.headline


def test_schema_refusals() -> None:
    for fields, message in (
        (dict(heads=["L0H0"]), "state something to check"),
        (dict(resid=[{"layer": 0, "position": 1}], effect="direct", at_least=0.1), "effect: direct is defined"),
        (dict(top={"k": 1, "include": ["L0H0"]}, at_least=0.1), "bounds and control need a named set"),
        (dict(mlp=[0], control={"samples": 2}, at_least=0.1), "control draws random heads"),
        (dict(top={"k": 2, "equals": ["L0H0"]}), "it must list exactly k=2"),
    ):
        with pytest.raises(ValidationError, match=message):
            make(Patching, property="patching", **fields)


def test_rank_correlation() -> None:
    assert rank_correlation(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert rank_correlation(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
