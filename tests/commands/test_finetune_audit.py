"""Audits of real fine-tunes: a LoRA adapter trained for a few steps on SmolLM2 and saved by
peft the ordinary way (a relative ``base_model_name_or_path``), audited in one command.

Training happens once per module (tests/finetunes.py: seeded, CPU, a few seconds).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest

from interp_assert.commands.cli import main, main_audit
from tests.finetunes import HUB_ID, FineTune, train_lora

SPEC = """\
model: smollm2-135m-instruct
prompts:
  prose:
    bos: prepend
    texts:
      - "The old lighthouse keeper climbed the spiral stairs every evening to light the lamp."
      - "Bread is made from flour, water, salt and yeast, kneaded, left to rise and baked."
  capital:
    bos: prepend
    texts: ["The capital of France is"]
    generate: 3
expectations:
  - name: l16h0_previous_token
    property: head_score
    head: L16H0
    role: previous_token
    prompts: prose
    at_least: 0.6
  - name: l19h2_first_token
    description: 0.628 on the base; the LoRA of tests/finetunes.py (8 steps) takes it to 0.368
    property: head_score
    head: L19H2
    role: first_token
    prompts: prose
    at_least: 0.5
  - name: previous_top3
    property: top_heads
    role: previous_token
    k: 3
    include: [L16H0]
    prompts: prose
  - name: norms_rise_late
    property: hidden_norm_trend
    layers: [13, 30]
    direction: increasing
    tolerance: 0.05
    prompts: prose
  - name: knows_paris
    property: generated_text
    contains: Paris
    prompts: capital
  - name: fingerprint
    property: snapshot
    prompts: prose
"""


@pytest.fixture(scope="module")
def trained(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FineTune:
    """A LoRA adapter trained where the user trained, from ``from_pretrained("smollm2-base")``."""
    run = train_lora(smollm2_dir, tmp_path_factory.mktemp("training"), steps=8, base_name="smollm2-base")
    assert run.losses[-1] < run.losses[0], "training lowered the loss"
    assert json.loads((run.path / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-base"
    return run


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "model_specs" / "smol.yaml"
    path.parent.mkdir()
    path.write_text(SPEC)
    return path


def audit(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_adapter_audits_in_one_command_from_where_it_was_trained(
    trained: FineTune, spec: Path, smollm2_dir: Path
) -> None:
    with contextlib.chdir(trained.path.parent):  # where training ran: "smollm2-base" is here
        code, out, _ = audit("audit", str(spec), "--checkpoint", str(trained.path))
    assert code in (0, 1), out
    assert "note: adapter" in out and "base 'smollm2-base' found in the working directory" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    # headline values per expectation, in their own columns
    assert "L16H0 L11H1 L1H2" in lines["previous_top3"] or "L16H0" in lines["previous_top3"]
    assert "'" in lines["knows_paris"], "the generated text is shown, not a count"
    assert "smallest step" in lines["norms_rise_late"] or "breaks at" in lines["norms_rise_late"]
    # a measurable change: the fingerprint moved and the table says where, by layer and role
    assert "snapshot 'fingerprint' drifted:" in out
    assert "by layer and role:" in out and "heads that moved most:" in out


def test_adapter_base_mapped_on_the_command_line(trained: FineTune, spec: Path, smollm2_dir: Path) -> None:
    elsewhere = spec.parent  # no "smollm2-base" here or next to the adapter
    with contextlib.chdir(elsewhere):
        code, _, err = audit("audit", str(spec), "--checkpoint", str(trained.path))
        assert code == 69  # the adapter's base cannot be loaded: infrastructure (exit_codes.py)
        assert "names its base 'smollm2-base'" in err and "--interp-model smollm2-base=PATH" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

        code, out, _ = audit(
            "audit", str(spec), "--checkpoint", str(trained.path), "--interp-model", f"smollm2-base={smollm2_dir}",
            "--json",
        )  # fmt: skip
    document = json.loads(out)
    assert code == (0 if document["passed"] else 1)
    assert any("--interp-model smollm2-base=" in note for note in document["notes"])
    rows = {row["name"]: row for row in document["expectations"]}
    assert isinstance(rows["knows_paris"]["checkpoint"]["value"], str)
    assert rows["l16h0_previous_token"]["bound_low"] == 0.6
    snapshot = document["snapshots"][0]
    assert snapshot["within"] is False and snapshot["summary"], "the LoRA moved the fingerprint"


def test_adapter_base_found_next_to_the_adapter(trained: FineTune, tmp_path: Path, smollm2_dir: Path) -> None:
    import shutil

    moved = tmp_path / "shipped-adapter"
    shutil.copytree(trained.path, moved)
    os.symlink(smollm2_dir, moved / "smollm2-base")
    from interp_assert.measure.loading.models import LoadOptions, load_model

    loaded = load_model(str(moved), LoadOptions())
    assert loaded.base_source == str(smollm2_dir.resolve())
    assert any("found next to the adapter" in note for note in loaded.notes)


def test_adapter_of_the_hub_model_runs_on_the_embedded_copy_with_a_note(smollm2_dir: Path, tmp_path: Path) -> None:
    run = train_lora(smollm2_dir, tmp_path / "hub-training", steps=2, base_name=HUB_ID, keep_base_link=False)
    assert not (tmp_path / "hub-training" / HUB_ID).exists()
    from interp_assert.measure.loading.models import LoadOptions, load_model

    loaded = load_model(str(run.path), LoadOptions())
    assert any(
        f"base {HUB_ID!r} from the embedded 'smollm2-135m-instruct' in its place (a dequantised Q4_1 copy" in note
        for note in loaded.notes
    ), loaded.notes


def test_pytest_runs_the_adapter_with_its_base_mapped(
    pytester: pytest.Pytester, trained: FineTune, smollm2_dir: Path
) -> None:
    (pytester.path / "model_specs").mkdir()
    (pytester.path / "model_specs" / "smol.yaml").write_text(SPEC)
    result = pytester.runpytest(
        "model_specs", "-k", "not fingerprint",
        f"--interp-model=smollm2-135m-instruct={trained.path}", f"--interp-model=smollm2-base={smollm2_dir}",
    )  # fmt: skip
    outcomes = result.parseoutcomes()
    assert outcomes.get("error", 0) == 0 and outcomes.get("passed", 0) + outcomes.get("failed", 0) == 5
    result.stdout.fnmatch_lines(["*adapter '*adapter': base 'smollm2-base' from --interp-model smollm2-base=*"])


def test_audit_report_pictures_base_against_checkpoint(trained: FineTune, spec: Path, tmp_path: Path) -> None:
    folder = tmp_path / "audit-report"
    with contextlib.chdir(trained.path.parent):
        code = main_audit(str(spec), str(trained.path), out=io.StringIO(), report_dir=folder)
    assert code in (0, 1)
    page = (folder / "index.html").read_text()
    pictures = sorted(p.name for p in folder.glob("*.png"))
    assert "delta-prose-previous_token.png" in pictures and "norms-prose.png" in pictures
    assert "labels-prose.png" in pictures and "snapshot-fingerprint-drift.png" in pictures
    # the failed head expectation links to that head's pattern on base and checkpoint, side by side
    assert "pattern-l19h2_first_token-L19H2-base.png" in pictures
    assert "pattern-l19h2_first_token-L19H2-checkpoint.png" in pictures
    assert "<a href='#pattern-l19h2_first_token-L19H2-base.png'>" in page
    for name in pictures:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"src='{name}'" in page
    # the report is the user's: a second audit into the folder needs --force
    with contextlib.chdir(trained.path.parent):
        code, _, err = audit("audit", str(spec), "--checkpoint", str(trained.path), "--report", str(folder))
    assert code == 2 and "is not empty (it holds " in err and "pass --force" in err
