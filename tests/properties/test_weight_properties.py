"""composition and ov_copying as spec expectations: no prompts, no forward pass, measured numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SPEC = """\
model: tiny-neo
expectations:
  - name: prev_feeds_induction
    property: composition
    composition: K
    sender: L0H0
    receiver: L1H0
    at_least: 30
  - name: prev_feeds_induction_raw
    property: composition
    composition: K
    sender: L0H0
    receiver: L1H0
    score: raw
    at_least: 0.4
  - name: induction_top_sender
    property: composition
    composition: K
    receiver: L1H0
    k: 1
    include: [L0H0]
  - name: prev_top_receiver
    property: composition
    composition: K
    sender: L0H0
    k: 1
    include: [L1H0]
  - name: induction_copies
    property: ov_copying
    head: L1H0
    at_least: 0.99
  - name: top_copier
    property: ov_copying
    k: 1
    include: [L1H0]
  - name: fails_v_composition
    property: composition
    composition: V
    sender: L0H0
    receiver: L1H0
    at_least: 0
"""


@pytest.fixture
def spec_and_runner(tmp_path: Path) -> tuple[Any, Any]:
    from interp_assert.runner import Runner, RunOptions
    from interp_assert.spec import load_spec

    (tmp_path / "spec.yaml").write_text(SPEC)
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.problems() == []
    return spec, Runner(RunOptions())


def test_a_spec_of_weight_properties_runs_no_forward_pass(spec_and_runner: tuple[Any, Any]) -> None:
    spec, runner = spec_and_runner
    loaded = runner.model_for(spec)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model ran a forward pass")

    handle = loaded.model.register_forward_pre_hook(refuse)
    try:
        outcomes = {entry.name: runner.evaluate(spec, entry) for entry in spec.entries}
    finally:
        handle.remove()
    failed = [name for name, outcome in outcomes.items() if not outcome.passed]
    assert failed == [
        "fails_v_composition"
    ]  # measured z -3.97: the previous-token head's OV is not read by L1H0's values
    pair = outcomes["prev_feeds_induction"]
    assert set(pair.measured) == {"score", "z"}  # JUnit measured.score, measured.z
    assert pair.measured["score"] == pytest.approx(0.4839, abs=1e-3)
    assert pair.measured["z"] == pytest.approx(pair.value)
    assert outcomes["prev_feeds_induction_raw"].value == pytest.approx(0.4839, abs=1e-3)
    assert (
        "z-score" in outcomes["fails_v_composition"].headline and "short by" in outcomes["fails_v_composition"].headline
    )


def test_the_tokenizer_is_never_asked(spec_and_runner: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from interp_assert import runner as runner_module

    spec, runner = spec_and_runner

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a prompt set was built")

    monkeypatch.setattr(runner_module, "build_batches", refuse)
    assert runner.evaluate(spec, spec.entries[0]).passed
