"""Fingerprint snapshots: lifecycle, tolerance, syrupy's unused-snapshot trap, xdist."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from interp_assert.drift import fingerprint as fp
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
            f"*model: '{other}' (--interp-model, in place of the spec's '{random_llama}')",
            "*the bound describes the spec's own model; a replacement missing it is no reason to edit it",
        ]
    )
    assert "edit the bound in the spec" not in drifted.stdout.str()
    assert snapshot_path(pytester).read_text() == stored, "a failing run must not rewrite the snapshot"

    refused = pytester.runpytest("model_specs", f"--interp-model={random_llama}={other}", "--snapshot-update")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*--snapshot-update with --interp-model would store the override's numbers*"])
    assert snapshot_path(pytester).read_text() == stored

    adopted = pytester.runpytest(
        "model_specs", f"--interp-model={random_llama}={other}", "--snapshot-update", "--interp-allow-override-update"
    )
    adopted.assert_outcomes(passed=2)
    adopted.stdout.fnmatch_lines(["*snapshots: 0 written / 1 updated / 0 deleted, in model_specs/__snapshots__/spec.*"])
    assert snapshot_path(pytester).read_text() != stored
    assert f"model = {other}" in snapshot_path(pytester).read_text()
    pytester.runpytest("model_specs", f"--interp-model={random_llama}={other}").assert_outcomes(passed=2)

    # Back on the spec's own model, the failure says the snapshot came from another model.
    back = pytester.runpytest("model_specs")
    back.assert_outcomes(passed=1, failed=1)
    back.stdout.fnmatch_lines(
        [
            f"*the snapshot was recorded on model '{other}' (weights *); "
            f"this run measures '{random_llama}' (weights *)",
        ]
    )


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


def test_mistyped_name_key_never_deletes_a_snapshot(pytester: pytest.Pytester, random_llama: Path) -> None:
    write_spec(pytester, random_llama)
    pytester.runpytest("model_specs", "--snapshot-update").assert_outcomes(passed=2)
    stored = snapshot_path(pytester).read_text()
    write_spec(pytester, random_llama, text=SPEC.replace("- name: fingerprint", "- nmae: fingerprint"))
    result = pytester.runpytest("model_specs", "--snapshot-update")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*snapshot(s) fingerprint match no expectation, but * has invalid expectations; kept*"]
    )
    assert "deleted" not in result.stdout.str()
    assert snapshot_path(pytester).read_text() == stored


def test_first_record_is_announced_with_its_file(pytester: pytest.Pytester, random_llama: Path) -> None:
    write_spec(pytester, random_llama)
    result = pytester.runpytest("model_specs", "--snapshot-update")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*snapshots: 1 written / 0 updated / 0 deleted, in model_specs/__snapshots__/spec.*"])


def test_rename_and_re_record_changes_only_the_name(pytester: pytest.Pytester, random_llama: Path) -> None:
    write_spec(pytester, random_llama)
    pytester.runpytest("model_specs", "--snapshot-update").assert_outcomes(passed=2)
    before = snapshot_path(pytester).read_text()
    write_spec(pytester, random_llama, text=SPEC.replace("- name: fingerprint", "- name: fingerprint_v2"))
    result = pytester.runpytest("model_specs", "--snapshot-update")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*snapshots: 1 written / 0 updated / 1 deleted, in *spec.ambr"])
    after = snapshot_path(pytester).read_text()
    assert after == before.replace("# name: fingerprint\n", "# name: fingerprint_v2\n")
    # values are stored at the precision the tolerances see (atol 0.02 -> 4 decimals)
    scores = next(line for line in after.splitlines() if "role_scores.previous_token.L0 = " in line)
    assert all(len(v.split(".")[-1]) <= 4 for v in scores.split("= ")[1].split())


def test_unwritable_snapshot_folder_is_a_clear_error(pytester: pytest.Pytester, random_llama: Path) -> None:
    write_spec(pytester, random_llama)
    blocker = snapshot_path(pytester).parent
    blocker.write_text("a file where the __snapshots__ folder should be")  # root ignores chmod; this cannot be bypassed
    result = pytester.runpytest("model_specs", "--snapshot-update")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*spec.ambr: cannot read snapshot 'fingerprint': Not a directory*"])
    assert "Traceback" not in result.stdout.str()
    assert blocker.read_text().startswith("a file where")


def test_disk_full_on_update_keeps_the_old_snapshot(
    pytester: pytest.Pytester, random_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    from interp_assert.drift import snapshot_store

    write_spec(pytester, random_llama)
    pytester.runpytest("model_specs", "--snapshot-update").assert_outcomes(passed=2)
    stored = snapshot_path(pytester).read_text()
    other = save_model(llama_config(), tmp_path / "other", seed=7)

    def disk_full(source: str, target: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), source)

    monkeypatch.setattr(snapshot_store.os, "replace", disk_full)
    result = pytester.runpytest(
        "model_specs", f"--interp-model={random_llama}={other}", "--snapshot-update", "--interp-allow-override-update"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*spec.ambr: cannot write snapshot file: No space left on device; free some disk*"])
    assert snapshot_path(pytester).read_text() == stored
    assert sorted(p.name for p in snapshot_path(pytester).parent.iterdir()) == ["spec.ambr"]


def test_interrupted_write_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from syrupy.extensions.amber.serializer import AmberDataSerializer

    from interp_assert.drift import snapshot_store

    spec = tmp_path / "model_specs" / "spec.yaml"
    spec.parent.mkdir()
    spec.write_text("model: x")
    snapshot_store.write(spec, "a", "interp_assert fingerprint v1\n[values]\nx = 1")
    before = snapshot_store.snapshot_file(spec).read_bytes()
    real_write = AmberDataSerializer.write_file

    def dies_midway(collection: object, **kwargs: object) -> None:
        real_write(collection, **kwargs)  # type: ignore[arg-type]
        Path(collection.location).write_text("# serializer version: 1\n# name: a\n  interp_ass")  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # the process is killed after half a file

    monkeypatch.setattr(AmberDataSerializer, "write_file", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        snapshot_store.write(spec, "b", "interp_assert fingerprint v1\n[values]\nx = 2")
    assert snapshot_store.snapshot_file(spec).read_bytes() == before
    assert sorted(p.name for p in snapshot_store.snapshot_file(spec).parent.iterdir()) == ["spec.ambr"]


def test_concurrent_updates_keep_every_entry(tmp_path: Path) -> None:
    """Two processes recording different expectations of one spec at once lose nothing."""
    import subprocess
    import sys

    spec = tmp_path / "model_specs" / "spec.yaml"
    spec.parent.mkdir()
    spec.write_text("model: x")
    script = (
        "import sys\nfrom interp_assert.drift import snapshot_store\n"
        "for i in range(40):\n"
        "    text = f'interp_assert fingerprint v1\\n[values]\\nx = {i}'\n"
        "    snapshot_store.write(sys.argv[1], f'{sys.argv[2]}{i}', text)\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", script, str(spec), tag]) for tag in ("a", "b")]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
    from interp_assert.drift import snapshot_store

    assert snapshot_store.stored_names(spec) == {f"{tag}{i}" for tag in "ab" for i in range(40)}
