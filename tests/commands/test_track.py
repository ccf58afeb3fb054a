"""``interp-assert track`` and ``--interp-checkpoints`` on a real training run of tiny-neo.

The run (``tests/checkpoints.py``) trains L0H0 away from the previous token onto the first token
for 20 steps, then back for 20, saving ``checkpoint-0`` .. ``checkpoint-40`` every 10 steps:
the previous-token head and the induction head that reads it break at step 10 and come back
at step 30; a first-token head forms at step 10 and breaks at step 30.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import xml.etree.ElementTree as ET
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from interp_assert.commands.cli import main
from tests.checkpoints import train_run

SPEC = """\
model: tiny-neo
prompts:
  rep:
    bos: prepend
    random_tokens: {length: 12, repeats: 3, count: 4, seed: 0}
  words:
    bos: prepend
    texts: ["t5 t6 t7 t8 t9"]
expectations:
  - name: l0h0_previous_token
    property: head_score
    head: L0H0
    role: previous_token
    prompts: rep
    at_least: 0.5
  - name: l0h0_first_token
    property: head_score
    head: L0H0
    role: first_token
    prompts: rep
    at_least: 0.5
  - name: l1h0_induction
    property: head_score
    head: L1H0
    role: induction
    prompts: rep
    at_least: 0.5
  - name: induction_top
    property: top_heads
    role: induction
    prompts: rep
    k: 1
    include: [L1H0]
  - name: no_repeats_no_induction
    property: head_score
    head: L1H0
    role: induction
    prompts: words
    at_least: 0.5
  - name: fingerprint
    property: snapshot
    prompts: rep
"""
STEPS = (0, 10, 20, 30, 40)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``run/checkpoint-{0,10,20,30,40}`` and ``spec.yaml`` with its snapshot recorded
    on tiny-neo (the run's starting point)."""
    from interp_assert.runner import Runner, RunOptions
    from interp_assert.spec import load_spec

    root = tmp_path_factory.mktemp("track")
    saved = train_run(root / "run")
    assert [p.name for p in saved] == [f"checkpoint-{s}" for s in STEPS]
    (root / "spec.yaml").write_text(SPEC)
    spec = load_spec(root / "spec.yaml")
    entry = next(e for e in spec.entries if e.name == "fingerprint")
    assert Runner(RunOptions(update_snapshots=True)).evaluate(spec, entry).written
    return root


def _cli(root: Path, *argv: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.chdir(root)
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


def test_track_table_milestones_json_and_report(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = _cli(
        run, "track", "spec.yaml", "--checkpoints", "run/checkpoint-*", "--json", "t.json", "--report", "rep",
        monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code == 1, out  # l0h0_first_token fails on the last checkpoint
    # the table is printed in blocks of checkpoints no wider than a CI log (120 columns)
    headers = [line for line in out.splitlines() if line.startswith("expectation ")]
    assert len(headers) > 1 and max(len(line) for line in out.splitlines()) <= 120
    labels = [label for header in headers for label in header.split()[1:]]
    assert labels == [f"checkpoint-{s}" for s in STEPS]  # by step: 0, 10, 20, 30, 40 (not 0, 10, 20...)
    milestone_block = next(block for block in out.split("\n\n") if "never holds" in block)
    summary = {line.split()[0]: line.split(None, 1)[1] for line in milestone_block.splitlines()}
    assert summary["l0h0_previous_token"] == "holds from step 0; breaks at step 10; holds again from step 30"
    assert summary["l1h0_induction"] == "holds from step 0; breaks at step 10; holds again from step 30"
    assert summary["l0h0_first_token"] == "forms at step 10; breaks at step 30"
    assert summary["induction_top"] == "holds from step 0 on"
    assert summary["no_repeats_no_induction"] == "never holds"
    # the snapshot was recorded on tiny-neo, which checkpoint-0 is: nothing moved there, then it drifts
    assert summary["fingerprint"] == "holds from step 0; breaks at step 10"
    assert "3 of 6 expectations hold on the last checkpoint" in out

    document = json.loads((run / "t.json").read_text())  # strict JSON: NaN written as null
    rows = {row["name"]: row for row in document["expectations"]}
    first = rows["l0h0_first_token"]
    assert (first["forms_at"], first["breaks_at"]) == ("checkpoint-10", "checkpoint-30")
    assert [c["step"] for c in document["checkpoints"]] == list(STEPS)
    for name in ("l0h0_previous_token", "l0h0_first_token", "l1h0_induction"):
        for cell in rows[name]["cells"]:
            # pass/fail is the bound's verdict, and no value sits near it (the run is not a coin toss)
            assert cell["passed"] == (cell["value"] >= 0.5) and abs(cell["value"] - 0.5) > 0.1, (name, cell)
    assert rows["l0h0_previous_token"]["cells"][0]["value"] > 0.99
    assert all(cell["value"] is None for cell in rows["no_repeats_no_induction"]["cells"])
    assert rows["fingerprint"]["cells"][0]["value"] == 0 and rows["fingerprint"]["cells"][1]["value"] > 0
    assert document["passed"] is False

    page = (run / "rep" / "index.html").read_text()
    assert "forms at step 10; breaks at step 30" in page
    for name in rows:
        assert (run / "rep" / f"track-{name}.png").stat().st_size > 1000

    # nothing is overwritten without --force, and a refused run writes nothing
    before = (run / "t.json").read_bytes()
    code, _ = _cli(run, "track", "spec.yaml", "--checkpoints", "run/*", "--json", "t.json", monkeypatch=monkeypatch)
    assert code == 2 and (run / "t.json").read_bytes() == before


def test_track_given_order_and_exit_zero(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--order given keeps the order on the command line; exit 0 when the last checkpoint passes."""
    spec = run / "prev.yaml"
    spec.write_text(SPEC.split("  - name: l0h0_first_token")[0])
    code, out = _cli(
        run, "track", "prev.yaml", "--checkpoint", "run/checkpoint-40", "--checkpoint", "run/checkpoint-10",
        "--checkpoint", "run/checkpoint-0", "--order", "given", monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code == 0, out
    assert "ordered as given" in out
    line = next(line for line in out.splitlines() if line.startswith("l0h0_previous_token "))
    assert re.match(r"l0h0_previous_token +0\.8\d+ +FAIL 0\.1\d+ +1\.0000$", line), line
    assert "holds from step 40; breaks at step 10; holds again from step 0" in out


def test_pytest_items_per_checkpoint_serial_equals_xdist(run: Path, pytester: pytest.Pytester) -> None:
    """One item per (expectation, checkpoint), grouped by checkpoint; ``-n 2 --dist loadgroup``
    gives the same verdicts and the same recorded values as a serial run."""
    (pytester.path / "model_specs").mkdir()
    lines = SPEC.split("  - name: l1h0_induction")[0]  # the two L0H0 expectations
    (pytester.path / "model_specs" / "tiny.yaml").write_text(lines)
    for step in (0, 20, 30):
        shutil.copytree(run / "run" / f"checkpoint-{step}", pytester.path / "run" / f"checkpoint-{step}")
    # the serial run reads the ini keys, the xdist run the command line
    # interp_gate = each: one item per (expectation, checkpoint) (the default gate makes one per expectation)
    ini = "[pytest]\ninterp_checkpoints = run/checkpoint-*\ninterp_checkpoint_order = step\ninterp_gate = each\n"
    pytester.makeini(ini)
    args = ("model_specs", "-p", "no:cacheprovider")

    serial = pytester.runpytest(*args, "-v", "--junitxml=serial.xml")
    serial.assert_outcomes(passed=3, failed=3)
    ran = [m.group(1) for m in re.finditer(r"tiny\.yaml::(\S+) (?:PASSED|FAILED)", serial.stdout.str())]
    assert [name.split("[")[1].rstrip("]") for name in ran] == [f"checkpoint-{s}" for s in (0, 0, 20, 20, 30, 30)]
    serial.stdout.fnmatch_lines(["*expectation 'l0h0_previous_token' (head_score) failed on checkpoint-20"])

    flags = ("--interp-checkpoints", "run/checkpoint-*", "--interp-gate", "each", "-n", "2", "--dist", "loadgroup")
    flags += ("--junitxml=xdist.xml",)
    spread = pytester.runpytest_subprocess(*args, *flags)
    spread.assert_outcomes(passed=3, failed=3)
    assert _records(pytester.path / "serial.xml") == _records(pytester.path / "xdist.xml")
    record = _records(pytester.path / "serial.xml")["l0h0_first_token[checkpoint-20]"]
    assert record["passed"] == "true" and record["checkpoint"] == "checkpoint-20" and record["step"] == "20"
    assert float(record["value"]) > 0.9


def _records(junit: Path) -> dict[str, dict[str, str]]:
    """Per test name (xdist's ``@group`` suffix dropped): pass/fail and every recorded property."""
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        properties = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        properties["outcome"] = "failed" if case.find("failure") is not None else "passed"
        found[case.get("name", "").split("@")[0]] = properties
    assert found
    return found


def test_the_shipped_phase_change_forms_at_step_250(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The checkpoints scripts/train_phase_change.py made (language-modelling loss alone): the
    induction head, the loss on the repeats and the ablation effect all form at step 250."""
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(
            ["track", "examples/phase-change/spec.yaml", "--checkpoints", "examples/phase-change/checkpoint-*",
             "--json", str(tmp_path / "track.json")]
        )  # fmt: skip
    assert status == 0, out.getvalue()
    for name in ("l1h2_induction", "loss_on_the_repeats", "layer_1_heads_carry_the_copy"):
        assert re.search(rf"^{name} +forms at step 250; holds to the last checkpoint$", out.getvalue(), re.M)
    # read from the weights: K-composition into the induction head rises with it, one checkpoint ahead
    assert re.search(r"^l0h3_keys_l1h2 +forms at step 200; holds to the last checkpoint$", out.getvalue(), re.M)
    document = json.loads((tmp_path / "track.json").read_text())
    assert len(document["checkpoints"]) == 13
