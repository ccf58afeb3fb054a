"""``pytest --interp-checkpoints`` judges a training run by a gate, one item per expectation, with
every checkpoint's cell as detail: on the shipped phase-change run (its findings form at step 250)."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from interp_assert.commands.tracking import Row
from interp_assert.evaluation import Evaluation, ModelIdentity
from interp_assert.measure.loading.checkpoints import Checkpoint
from interp_assert.outcome import Outcome
from interp_assert.pytest_plugin.gates import parse_gate, verdict

REPO = Path(__file__).resolve().parents[2]
STEPS = (0, 200, 250, 1000)


@pytest.fixture
def run(pytester: pytest.Pytester) -> pytest.Pytester:
    """The phase-change spec's three findings from prompts (its model: checkpoint-1000, beside it)
    and four of its checkpoints."""
    for step in STEPS:
        shutil.copytree(REPO / f"examples/phase-change/checkpoint-{step}", pytester.path / f"checkpoint-{step}")
    text = (REPO / "examples/phase-change/spec.yaml").read_text()
    start = text.index("  - name: l0h3_keys_l1h2")  # the weight score forms a checkpoint earlier: its own test
    (pytester.path / "spec.yaml").write_text(text[:start] + text[text.index("  - name:", start + 1) :])
    return pytester


def gated(run: pytest.Pytester, *argv: str) -> pytest.RunResult:
    return run.runpytest("spec.yaml", "--interp-checkpoints", "checkpoint-*", "-p", "no:cacheprovider", *argv)


def test_the_default_gate_is_the_last_checkpoint(run: pytest.Pytester) -> None:
    """Steps 0 and 200 fail every expectation (history); the last holds, so the run passes."""
    result = gated(run, "--junitxml=gate.xml")
    result.assert_outcomes(passed=3)
    cases = {case.get("name"): case for case in ET.parse(run.path / "gate.xml").getroot().iter("testcase")}
    assert sorted(cases) == ["l1h2_induction", "layer_1_heads_carry_the_copy", "loss_on_the_repeats"]
    properties = {p.get("name"): p.get("value") for p in cases["l1h2_induction"].iter("property")}
    assert properties["gate"] == "last" and properties["passed"] == "true"
    assert properties["cell.checkpoint-0"] == "fail 0.0592" and properties["cell.checkpoint-1000"] == "pass 0.8272"

    each = gated(run, "--interp-gate", "each")  # the strict form: one item per (expectation, checkpoint)
    each.assert_outcomes(passed=6, failed=6)


def test_forms_by_a_step_and_never_breaks(run: pytest.Pytester) -> None:
    gated(run, "--interp-gate", "never-breaks").assert_outcomes(passed=3)  # by:250 and the rest: test_gate_rules
    early = gated(run, "--interp-gate", "by:200")
    early.assert_outcomes(failed=3)
    early.stdout.fnmatch_lines(
        [
            "spec.yaml:*: expectation 'l1h2_induction' (head_score) failed the gate --interp-gate by:200 (forms by*",
            "  does not hold by step 200: fails on 1 of the 3 checkpoints from step 200 on, first step 200: *",
            "  cells: checkpoint-0 FAIL 0.0592 | checkpoint-200 FAIL 0.5681 | checkpoint-250 0.6853 | checkpoint-1000*",
        ]
    )
    ours = early.stdout.lines[
        : next((i for i, line in enumerate(early.stdout.lines) if "warnings summary" in line), None)
    ]
    long = [line for line in ours if not line.startswith(("FAILED", "=")) and len(line) > 120]  # pytest's own aside
    assert not long, long
    wrong = gated(run, "--interp-gate", "by:5000")
    wrong.assert_outcomes(errors=3)
    wrong.stdout.fnmatch_lines(["*--interp-gate by:5000: no checkpoint is at step 5000 or later (the last is 1000)"])
    refused = gated(run, "--interp-gate", "soon")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert "--interp-gate 'soon' is not a gate; use last, never-breaks, by:STEP (e.g. by:500) or each" in (
        refused.stderr.str()
    )


def test_a_checkpoint_the_gate_reads_that_cannot_load_is_a_setup_error(run: pytest.Pytester) -> None:
    weights = run.path / "checkpoint-200" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    gated(run).assert_outcomes(passed=3)  # the last checkpoint decides; step 200 is not read
    never = gated(run, "--interp-gate", "never-breaks")
    never.assert_outcomes(errors=3)
    never.stdout.fnmatch_lines(
        [
            "0 expectations held, 0 failed, 3 could not run",
            "  3 could not run: model not available: checkpoint checkpoint-200 (the errors above say why)",
        ]
    )


def _row(*passes: bool | None) -> tuple[Row, tuple[Checkpoint, ...]]:
    """A row of cells (None: the checkpoint could not load) at steps 0, 10, 20, ..."""
    cells = tuple(
        Evaluation("spec.yaml", "x", "head_score", "prompts", ModelIdentity("model"), state="unavailable", error="gone")
        if passed is None
        else Evaluation(
            "spec.yaml", "x", "head_score", "prompts", ModelIdentity("model"),
            Outcome(passed, "headline", value=1.0 if passed else 0.0, shown="1" if passed else "0"),
        )
        for passed in passes
    )  # fmt: skip
    checkpoints = tuple(Checkpoint(f"c-{10 * i}", f"/c-{10 * i}", f"c-{10 * i}", 10 * i) for i in range(len(passes)))
    return Row(cells), checkpoints


@pytest.mark.parametrize(
    ("passes", "gate", "expected"),
    [
        ((False, True, False, True), "last", True),
        ((True, True, True, False), "last", False),
        ((False, True, False, True), "never-breaks", False),  # broke at step 20, held again: it broke
        ((False, False, True, True), "never-breaks", True),
        ((False, False, False, False), "never-breaks", False),
        ((False, True, None, True), "never-breaks", None),  # a checkpoint it reads is missing: could not run
        ((False, True, True, True), "by:10", True),
        ((False, True, False, True), "by:10", False),
        ((None, False, True, True), "by:20", True),  # step 0 is not read by by:20
    ],
)
def test_gate_rules(passes: tuple[bool | None, ...], gate: str, expected: bool | None) -> None:
    row, checkpoints = _row(*passes)
    found = verdict(row, checkpoints, parse_gate(gate))
    assert (None if found.unavailable else found.passed) == expected, found
