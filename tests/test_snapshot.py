"""Fingerprint snapshots: lifecycle, tolerance, syrupy's unused-snapshot trap, xdist."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from interp_assert import fingerprint as fp
from tests.builders import llama_config, save_model

SPEC = """\
model: {model}
prompts:
  prose:
    bos: prepend
    texts: ["t5 t6 t7 t8 t9 t10 t11 t5 t6 t7 t8"]
expectations:
  - name: sink
    property: head_score
    head: L0H0
    role: first_token
    prompts: prose
    at_least: 0.0
  - name: fingerprint
    property: snapshot
    prompts: prose
"""


def write_spec(pytester: pytest.Pytester, model: Path | str, name: str = "spec.yaml", text: str = SPEC) -> Path:
    path = pytester.path / "model_specs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text.format(model=model))
    return path


def snapshot_path(pytester: pytest.Pytester, name: str = "spec") -> Path:
    return pytester.path / "model_specs" / "__snapshots__" / f"{name}.ambr"


def test_fingerprint_text_round_trip() -> None:
    original = fp.Fingerprint(
        {"role_scores.previous_token.L0": [0.5, float("nan"), 1e-7]},
        {"role_labels.L0": ["broad", "previous_token", "self"]},
        {"dtype": "float32"},
    )
    parsed = fp.parse(fp.render(original))
    assert parsed.labels == original.labels and parsed.environment == original.environment
    values = parsed.values["role_scores.previous_token.L0"]
    assert values[0] == 0.5 and math.isnan(values[1]) and values[2] == pytest.approx(1e-7)
    with pytest.raises(ValueError, match="not an interp_assert fingerprint"):
        fp.parse("something else")


def test_compare_uses_per_quantity_tolerance() -> None:
    before = fp.Fingerprint({"role_scores.self.L0": [0.5, 0.2], "hidden_norms.with_first": [10.0, 100.0]})
    after = fp.Fingerprint({"role_scores.self.L0": [0.51, 0.9], "hidden_norms.with_first": [10.1, 150.0]})
    drift = fp.compare(before, after, fp.DEFAULT_TOLERANCES)
    assert not drift.within
    by_name = {q.quantity: q for q in drift.quantities}
    assert by_name["role_scores"].beyond == 1 and by_name["hidden_norms"].beyond == 1
    assert drift.heads[0].head == "L0H1" and drift.heads[0].after == 0.9
    assert fp.compare(before, before, fp.DEFAULT_TOLERANCES).within


def test_lifecycle_create_pass_drift_update_pass(pytester: pytest.Pytester, random_llama: Path, tmp_path: Path) -> None:
    write_spec(pytester, random_llama)
    first = pytester.runpytest("model_specs")
    first.assert_outcomes(passed=1, failed=1)
    first.stdout.fnmatch_lines(["*no snapshot 'fingerprint' in *spec.ambr; run pytest --snapshot-update to record it"])
    assert not snapshot_path(pytester).exists()

    pytester.runpytest("model_specs", "--snapshot-update").assert_outcomes(passed=2)
    stored = snapshot_path(pytester).read_text()
    assert "# name: fingerprint" in stored and "role_scores.previous_token.L1 = " in stored
    assert "dtype = float32" in stored and "content_hash = " in stored

    pytester.runpytest("model_specs").assert_outcomes(passed=2)
    assert snapshot_path(pytester).read_text() == stored

    other = save_model(llama_config(), tmp_path / "other", seed=7)
    drifted = pytester.runpytest("model_specs", f"--interp-model={random_llama}={other}")
    drifted.assert_outcomes(passed=1, failed=1)
    drifted.stdout.fnmatch_lines(
        [
            "*snapshot 'fingerprint' drifted: * of * values moved beyond tolerance",
            "*role_scores: * beyond (atol 0.02, rtol 0); max |change| *",
            "*heads that moved most:",
            "*to accept the new numbers: pytest --snapshot-update",
        ]
    )
    assert snapshot_path(pytester).read_text() == stored, "a failing run must not rewrite the snapshot"

    pytester.runpytest("model_specs", f"--interp-model={random_llama}={other}", "--snapshot-update").assert_outcomes(
        passed=2
    )
    assert snapshot_path(pytester).read_text() != stored
    pytester.runpytest("model_specs", f"--interp-model={random_llama}={other}").assert_outcomes(passed=2)


def test_skipped_and_deselected_snapshots_are_kept(pytester: pytest.Pytester, random_llama: Path) -> None:
    write_spec(pytester, random_llama)
    pytester.runpytest("model_specs", "--snapshot-update").assert_outcomes(passed=2)
    stored = snapshot_path(pytester).read_text()

    deselected = pytester.runpytest("model_specs", "-k", "not fingerprint", "--snapshot-update")
    deselected.assert_outcomes(passed=1, deselected=1)
    assert deselected.ret == 0
    assert snapshot_path(pytester).read_text() == stored

    write_spec(pytester, "nobody/missing-model")
    skipped = pytester.runpytest("model_specs", "--interp-missing=skip", "--snapshot-update")
    skipped.assert_outcomes(skipped=2)
    assert skipped.ret == 0
    assert snapshot_path(pytester).read_text() == stored


def test_snapshot_deleted_only_when_expectation_gone_and_update(pytester: pytest.Pytester, random_llama: Path) -> None:
    write_spec(pytester, random_llama)
    pytester.runpytest("model_specs", "--snapshot-update").assert_outcomes(passed=2)
    without = SPEC.split("  - name: fingerprint")[0]
    write_spec(pytester, random_llama, text=without)

    kept = pytester.runpytest("model_specs")
    kept.assert_outcomes(passed=1)
    kept.stdout.fnmatch_lines(["*spec.ambr: snapshot(s) fingerprint match no expectation in *; kept*"])
    assert snapshot_path(pytester).exists()

    removed = pytester.runpytest("model_specs", "--snapshot-update")
    removed.stdout.fnmatch_lines(["*deleted 1 stale snapshot(s) from *spec.ambr: fingerprint"])
    assert not snapshot_path(pytester).exists()


def test_xdist_loadfile_same_results_each_snapshot_written_once(pytester: pytest.Pytester, random_llama: Path) -> None:
    write_spec(pytester, random_llama, "a.yaml")
    write_spec(pytester, random_llama, "b.yaml")
    result = pytester.runpytest_subprocess("model_specs", "-n", "2", "--dist", "loadfile", "--snapshot-update")
    result.assert_outcomes(passed=4)
    a = snapshot_path(pytester, "a").read_text()
    assert a.count("# name: fingerprint") == 1
    assert a.split("[values]")[1] == snapshot_path(pytester, "b").read_text().split("[values]")[1]
    serial = pytester.runpytest_subprocess("model_specs")
    serial.assert_outcomes(passed=4)
    parallel = pytester.runpytest_subprocess("model_specs", "-n", "2", "--dist", "loadfile")
    parallel.assert_outcomes(passed=4)
    assert snapshot_path(pytester, "a").read_text() == a


def test_other_dtype_loosens_default_tolerances_and_says_so(pytester: pytest.Pytester, random_llama: Path) -> None:
    write_spec(pytester, random_llama)
    pytester.runpytest("model_specs", "--snapshot-update").assert_outcomes(passed=2)
    result = pytester.runpytest("model_specs", "--interp-dtype=bfloat16")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*spec.yaml::fingerprint: environment differs from the snapshot (dtype float32 -> bfloat16): "
            "default tolerances loosened x10"
        ]
    )


def test_unreadable_snapshot_file_is_a_clear_error(pytester: pytest.Pytester, random_llama: Path) -> None:
    write_spec(pytester, random_llama)
    snapshot_path(pytester).parent.mkdir()
    snapshot_path(pytester).write_text("# name: fingerprint\n  not a fingerprint\n# ---\n")  # no version header
    result = pytester.runpytest("model_specs")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*spec.ambr: cannot read snapshot 'fingerprint': the file has no current syrupy*"])
    assert "Traceback" not in result.stdout.str()
